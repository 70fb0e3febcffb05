"""`MegatronBertConfig`: the Hugging Face `config.json` of a MegatronBERT model, plus shape presets.

Reads and writes the same JSON as `transformers.MegatronBertConfig` so folders move freely between
the two; keys this class does not know are kept and written back unchanged. Imports no torch.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .fileio import atomic_write_text

CONFIG_NAME = "config.json"

#: Activations the reference implements. Megatron-LM trained with the tanh approximation
#: (fused bias-gelu), which Hugging Face calls `gelu_new` / `gelu_pytorch_tanh` / `gelu_fast`.
SUPPORTED_ACTIVATIONS = ("gelu", "gelu_new", "gelu_pytorch_tanh", "gelu_fast", "relu", "silu", "swish")


class ConfigError(ValueError):
    """A config.json that cannot describe a MegatronBERT model; the message says what to fix."""


@dataclass
class MegatronBertConfig:
    """Every field of the Hugging Face MegatronBERT config, with the Hugging Face defaults."""

    vocab_size: int = 29056
    hidden_size: int = 1024
    num_hidden_layers: int = 24
    num_attention_heads: int = 16
    intermediate_size: int = 4096
    hidden_act: str = "gelu"
    #: Activation of the LM-head transform when it differs from `hidden_act` (None: the same). Megatron's
    #: BERT LM head uses exact erf GELU even when its MLP uses the tanh form (bias-gelu fusion); Hugging
    #: Face transformers ignores this key and applies `hidden_act` there too.
    lm_head_act: str | None = None
    hidden_dropout_prob: float = 0.1
    attention_probs_dropout_prob: float = 0.1
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    initializer_range: float = 0.02
    layer_norm_eps: float = 1e-12
    pad_token_id: int = 0
    position_embedding_type: str = "absolute"
    is_decoder: bool = False
    add_cross_attention: bool = False
    use_cache: bool = True
    tie_word_embeddings: bool = True
    id2label: dict[int, str] = field(default_factory=lambda: {0: "LABEL_0", 1: "LABEL_1"})
    label2id: dict[str, int] = field(default_factory=lambda: {"LABEL_0": 0, "LABEL_1": 1})
    problem_type: str | None = None
    architectures: list[str] | None = None
    #: Rows of the word embedding that are real tokens. Megatron-LM pads the vocabulary (29056 rows
    #: for a 28996-token tokenizer); logits beyond this index must never be predicted.
    tokenizer_vocab_size: int | None = None
    model_type: str = "megatron-bert"
    #: Unknown keys from a config.json, written back as they came.
    extra: dict[str, Any] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        self.id2label = {int(k): str(v) for k, v in self.id2label.items()}
        if not self.label2id or set(self.label2id.values()) != set(self.id2label):
            self.label2id = {v: k for k, v in self.id2label.items()}
        self.validate()

    # ------------------------------------------------------------------ derived values
    @property
    def num_labels(self) -> int:
        return len(self.id2label)

    @num_labels.setter
    def num_labels(self, n: int) -> None:
        self.id2label = {i: f"LABEL_{i}" for i in range(int(n))}
        self.label2id = {v: k for k, v in self.id2label.items()}

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @property
    def real_vocab_size(self) -> int:
        """Number of embedding rows that are tokens (the rest is Megatron-LM vocabulary padding)."""
        return self.tokenizer_vocab_size or self.vocab_size

    def num_parameters(self, with_heads: bool = True) -> int:
        """Parameter count of the encoder (+ MLM/NSP heads), used to size exports and memory."""
        h, f, v = self.hidden_size, self.intermediate_size, self.vocab_size
        embeddings = (v + self.max_position_embeddings + self.type_vocab_size) * h
        layer = 4 * (h * h + h) + 2 * h * f + f + h + 4 * h
        total = embeddings + self.num_hidden_layers * layer + 2 * h + (h * h + h)
        if with_heads:
            total += h * h + h + 2 * h + v + 2 * h + 2
        return total

    # ------------------------------------------------------------------ checks
    def validate(self) -> None:
        """Refuse configs the reference cannot run, with the field and the fix in the message."""
        for name in ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
                     "intermediate_size", "max_position_embeddings", "type_vocab_size"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ConfigError(f"config field {name!r} must be a positive integer, got {value!r}")
        if self.hidden_size % self.num_attention_heads:
            raise ConfigError(
                f"hidden_size ({self.hidden_size}) is not a multiple of num_attention_heads "
                f"({self.num_attention_heads}); fix one of them in config.json")
        if self.hidden_act not in SUPPORTED_ACTIVATIONS:
            raise ConfigError(
                f"hidden_act {self.hidden_act!r} is not supported; use one of {', '.join(SUPPORTED_ACTIVATIONS)}")
        if self.lm_head_act is not None and self.lm_head_act not in SUPPORTED_ACTIVATIONS:
            raise ConfigError(
                f"lm_head_act {self.lm_head_act!r} is not supported; use one of {', '.join(SUPPORTED_ACTIVATIONS)}")
        if self.position_embedding_type != "absolute":
            raise ConfigError(
                f"position_embedding_type {self.position_embedding_type!r} is not supported: MegatronBERT "
                "checkpoints use 'absolute' position embeddings")
        if self.add_cross_attention:
            raise ConfigError("add_cross_attention=True (encoder-decoder use) is not supported; "
                              "set it to false for encoder and causal-LM export")
        if self.tokenizer_vocab_size is not None and self.tokenizer_vocab_size > self.vocab_size:
            raise ConfigError(
                f"tokenizer_vocab_size ({self.tokenizer_vocab_size}) is larger than vocab_size "
                f"({self.vocab_size}): the tokenizer has ids the embedding has no rows for")
        if not 0 <= self.pad_token_id < self.vocab_size:
            raise ConfigError(f"pad_token_id {self.pad_token_id} is outside the vocabulary (0..{self.vocab_size - 1})")
        if not self.layer_norm_eps > 0:
            raise ConfigError(f"layer_norm_eps must be > 0, got {self.layer_norm_eps!r}")

    # ------------------------------------------------------------------ JSON
    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "MegatronBertConfig":
        """Build from a config.json mapping; `num_labels` without `id2label` gives LABEL_i names."""
        data = dict(data)
        known = {f.name for f in dataclasses.fields(cls)} - {"extra"}
        num_labels = data.pop("num_labels", None)
        if data.get("model_type", "megatron-bert") not in ("megatron-bert", "megatron_bert"):
            raise ConfigError(
                f"config.json says model_type={data['model_type']!r}, not 'megatron-bert': this tool "
                "converts MegatronBERT (pre-LayerNorm BERT) checkpoints only")
        if num_labels is not None and "id2label" not in data:
            data["id2label"] = {i: f"LABEL_{i}" for i in range(int(num_labels))}
            data.pop("label2id", None)
        extra = {k: data.pop(k) for k in list(data) if k not in known}
        if data.get("pad_token_id") is None:
            data.pop("pad_token_id", None)
        try:
            return cls(**data, extra=extra)
        except TypeError as exc:  # a value of the wrong type in the JSON
            raise ConfigError(f"config.json has an invalid value: {exc}") from None

    def to_dict(self) -> dict[str, Any]:
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "extra"}
        out["id2label"] = {str(k): v for k, v in self.id2label.items()}
        if out["tokenizer_vocab_size"] is None:
            del out["tokenizer_vocab_size"]
        if out["problem_type"] is None:
            del out["problem_type"]
        if out["lm_head_act"] is None:
            del out["lm_head_act"]
        out.update(self.extra)
        return out

    @classmethod
    def from_json_file(cls, path: str | Path) -> "MegatronBertConfig":
        path = Path(path)
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise ConfigError(f"{path} not found: a Hugging Face model folder needs a config.json") from None
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"{path} is not valid JSON ({exc}); is the file truncated?") from None
        if not isinstance(data, dict):
            raise ConfigError(f"{path} must hold a JSON object, got {type(data).__name__}")
        return cls.from_dict(data)

    @classmethod
    def from_pretrained(cls, folder: str | Path) -> "MegatronBertConfig":
        folder = Path(folder)
        return cls.from_json_file(folder / CONFIG_NAME if folder.is_dir() else folder)

    def to_json_string(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n"

    def save_pretrained(self, folder: str | Path) -> Path:
        """Write `folder/config.json` atomically."""
        path = Path(folder) / CONFIG_NAME
        atomic_write_text(path, self.to_json_string())
        return path


def _preset(**kwargs: Any) -> dict[str, Any]:
    return kwargs


#: Public MegatronBERT shapes. The NVIDIA checkpoints keep Megatron-LM's padded vocabulary and its
#: LayerNorm eps (1e-5) and tanh GELU; Erlangshen values come from the models' config.json files.
PRESETS: dict[str, dict[str, Any]] = {
    "tiny": _preset(vocab_size=128, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                    intermediate_size=64, max_position_embeddings=64, layer_norm_eps=1e-5),
    "megatron-bert-345m-cased": _preset(
        vocab_size=29056, tokenizer_vocab_size=28996, hidden_size=1024, num_hidden_layers=24,
        num_attention_heads=16, intermediate_size=4096, max_position_embeddings=512,
        layer_norm_eps=1e-5, hidden_act="gelu_new"),
    "megatron-bert-345m-uncased": _preset(
        vocab_size=30592, tokenizer_vocab_size=30522, hidden_size=1024, num_hidden_layers=24,
        num_attention_heads=16, intermediate_size=4096, max_position_embeddings=512,
        layer_norm_eps=1e-5, hidden_act="gelu_new"),
    "erlangshen-megatronbert-1.3b": _preset(
        vocab_size=21248, hidden_size=2048, num_hidden_layers=24, num_attention_heads=8,
        intermediate_size=8192, max_position_embeddings=512, layer_norm_eps=1e-12, hidden_act="gelu_new"),
    "erlangshen-megatronbert-3.9b": _preset(
        vocab_size=21248, hidden_size=2560, num_hidden_layers=48, num_attention_heads=40,
        intermediate_size=10240, max_position_embeddings=512, layer_norm_eps=1e-12, hidden_act="gelu"),
}


def preset_config(name: str, **overrides: Any) -> MegatronBertConfig:
    """A config for a named public shape (see `PRESETS`), with optional field overrides."""
    if name not in PRESETS:
        raise ConfigError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}")
    return MegatronBertConfig(**{**PRESETS[name], **overrides})
