"""The PyTorch reference MegatronBERT: the pre-LayerNorm BERT of Megatron-LM, all nine HF classes.

Mirrors Hugging Face's `modeling_megatron_bert.py` block for block and key for key, so a Hugging Face
folder loads as it is, but keeps only inference-relevant code and stays exportable to ONNX:
- the attention mask is a bounded negative (`MASK_VALUE`), not `finfo.min`, so the very same graph
  survives FP16 (finfo.min turns into -inf in FP16 and softmax into NaN);
- `forward()` returns a dict keyed by the Hugging Face output names, which become the ONNX outputs.

This module does not import transformers.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .checkpoints import CheckpointError, load_hf_state_dict, save_hf_state_dict
from .config import MegatronBertConfig

#: Added to attention scores of masked keys. -1e4 sits well inside FP16's range (±65504) and still
#: drives exp() to exactly 0 next to unmasked scores, in FP32 and in FP16.
MASK_VALUE = -10000.0


def activation(name: str):
    """The activation named by `config.hidden_act` (exact erf GELU for "gelu", tanh form for the rest)."""
    if name == "gelu":
        return nn.GELU()
    if name in ("gelu_new", "gelu_pytorch_tanh", "gelu_fast"):
        return nn.GELU(approximate="tanh")
    if name == "relu":
        return nn.ReLU()
    if name in ("silu", "swish"):
        return nn.SiLU()
    raise ValueError(f"unsupported hidden_act {name!r}")


def extended_attention_mask(attention_mask: torch.Tensor, causal: bool, dtype: torch.dtype) -> torch.Tensor:
    """[batch, seq] 0/1 mask -> additive [batch, 1, 1|seq, seq] mask of 0 and MASK_VALUE."""
    mask = attention_mask[:, None, None, :].to(dtype)
    if causal:
        seq = attention_mask.shape[-1]
        positions = torch.arange(seq, device=attention_mask.device)
        lower = (positions[None, :] <= positions[:, None]).to(dtype)  # key <= query
        mask = mask * lower[None, None, :, :]
    return (1.0 - mask) * MASK_VALUE


# ---------------------------------------------------------------------------- blocks
class MegatronBertEmbeddings(nn.Module):
    """Word + position + token-type embeddings, then dropout. No LayerNorm (it sits in each layer)."""

    def __init__(self, config: MegatronBertConfig):
        super().__init__()
        self.word_embeddings = nn.Embedding(config.vocab_size, config.hidden_size, padding_idx=config.pad_token_id)
        self.position_embeddings = nn.Embedding(config.max_position_embeddings, config.hidden_size)
        self.token_type_embeddings = nn.Embedding(config.type_vocab_size, config.hidden_size)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(self, input_ids, token_type_ids, position_ids):
        embeddings = self.word_embeddings(input_ids) + self.token_type_embeddings(token_type_ids)
        embeddings = embeddings + self.position_embeddings(position_ids)
        return self.dropout(embeddings)


class MegatronBertSelfAttention(nn.Module):
    """Multi-head scaled dot-product attention: softmax(Q K^T / sqrt(d) + mask) V."""

    def __init__(self, config: MegatronBertConfig):
        super().__init__()
        self.num_attention_heads = config.num_attention_heads
        self.attention_head_size = config.head_dim
        self.query = nn.Linear(config.hidden_size, config.hidden_size)
        self.key = nn.Linear(config.hidden_size, config.hidden_size)
        self.value = nn.Linear(config.hidden_size, config.hidden_size)
        self.dropout = nn.Dropout(config.attention_probs_dropout_prob)

    def split_heads(self, x: torch.Tensor) -> torch.Tensor:
        return x.view(x.shape[0], x.shape[1], self.num_attention_heads, self.attention_head_size).transpose(1, 2)

    def forward(self, hidden_states, attention_mask):
        query = self.split_heads(self.query(hidden_states))
        key = self.split_heads(self.key(hidden_states))
        value = self.split_heads(self.value(hidden_states))
        scores = torch.matmul(query, key.transpose(-1, -2)) / math.sqrt(self.attention_head_size)
        probs = self.dropout(torch.softmax(scores + attention_mask, dim=-1))
        context = torch.matmul(probs, value).transpose(1, 2)
        return context.reshape(context.shape[0], context.shape[1], -1)


class MegatronBertSelfOutput(nn.Module):
    """Attention output projection, dropout and the residual add."""

    def __init__(self, config: MegatronBertConfig):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(self, hidden_states, residual):
        return residual + self.dropout(self.dense(hidden_states))


class MegatronBertAttention(nn.Module):
    """Pre-LN attention sub-layer: `x + Attn(LN1(x))`."""

    def __init__(self, config: MegatronBertConfig):
        super().__init__()
        self.ln = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.self = MegatronBertSelfAttention(config)
        self.output = MegatronBertSelfOutput(config)

    def forward(self, hidden_states, attention_mask):
        return self.output(self.self(self.ln(hidden_states), attention_mask), hidden_states)


class MegatronBertIntermediate(nn.Module):
    def __init__(self, config: MegatronBertConfig):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.intermediate_size)
        self.intermediate_act_fn = activation(config.hidden_act)

    def forward(self, hidden_states):
        return self.intermediate_act_fn(self.dense(hidden_states))


class MegatronBertOutput(nn.Module):
    def __init__(self, config: MegatronBertConfig):
        super().__init__()
        self.dense = nn.Linear(config.intermediate_size, config.hidden_size)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(self, hidden_states, residual):
        return residual + self.dropout(self.dense(hidden_states))


class MegatronBertLayer(nn.Module):
    """One transformer layer: `a = x + Attn(LN1(x))`, `y = a + MLP(LN2(a))`."""

    def __init__(self, config: MegatronBertConfig):
        super().__init__()
        self.attention = MegatronBertAttention(config)
        self.ln = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.intermediate = MegatronBertIntermediate(config)
        self.output = MegatronBertOutput(config)

    def forward(self, hidden_states, attention_mask):
        attention_output = self.attention(hidden_states, attention_mask)
        return self.output(self.intermediate(self.ln(attention_output)), attention_output)


class MegatronBertEncoder(nn.Module):
    """The layer stack and the one final LayerNorm."""

    def __init__(self, config: MegatronBertConfig):
        super().__init__()
        self.layer = nn.ModuleList(MegatronBertLayer(config) for _ in range(config.num_hidden_layers))
        self.ln = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)

    def forward(self, hidden_states, attention_mask):
        for layer in self.layer:
            hidden_states = layer(hidden_states, attention_mask)
        return self.ln(hidden_states)


class MegatronBertPooler(nn.Module):
    """tanh(W h_[CLS] + b): the sentence vector the NSP and classification heads read."""

    def __init__(self, config: MegatronBertConfig):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)
        self.activation = nn.Tanh()

    def forward(self, hidden_states):
        return self.activation(self.dense(hidden_states[:, 0]))


class MegatronBertPredictionHeadTransform(nn.Module):
    def __init__(self, config: MegatronBertConfig):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)
        self.transform_act_fn = activation(config.lm_head_act or config.hidden_act)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)

    def forward(self, hidden_states):
        return self.LayerNorm(self.transform_act_fn(self.dense(hidden_states)))


class MegatronBertLMPredictionHead(nn.Module):
    """Transform, then the vocabulary projection (weights tied to the word embeddings)."""

    def __init__(self, config: MegatronBertConfig):
        super().__init__()
        self.transform = MegatronBertPredictionHeadTransform(config)
        self.decoder = nn.Linear(config.hidden_size, config.vocab_size)
        self.bias = self.decoder.bias  # HF keeps the bias under both names; they are one tensor

    def forward(self, hidden_states):
        return self.decoder(self.transform(hidden_states))


class MegatronBertOnlyMLMHead(nn.Module):
    def __init__(self, config: MegatronBertConfig):
        super().__init__()
        self.predictions = MegatronBertLMPredictionHead(config)

    def forward(self, sequence_output):
        return self.predictions(sequence_output)


class MegatronBertOnlyNSPHead(nn.Module):
    def __init__(self, config: MegatronBertConfig):
        super().__init__()
        self.seq_relationship = nn.Linear(config.hidden_size, 2)

    def forward(self, pooled_output):
        return self.seq_relationship(pooled_output)


class MegatronBertPreTrainingHeads(nn.Module):
    def __init__(self, config: MegatronBertConfig):
        super().__init__()
        self.predictions = MegatronBertLMPredictionHead(config)
        self.seq_relationship = nn.Linear(config.hidden_size, 2)

    def forward(self, sequence_output, pooled_output):
        return self.predictions(sequence_output), self.seq_relationship(pooled_output)


# ---------------------------------------------------------------------------- loading and saving
class MegatronBertPreTrainedModel(nn.Module):
    """Weight init, `from_pretrained` / `save_pretrained` and the prefix rules shared by all classes."""

    #: State-dict key prefixes of weights that belong to this class's head, not to the encoder.
    #: (The pooler counts as head too: MLM checkpoints often have none.)
    head_prefixes: tuple[str, ...] = ("pooler.",)
    base_model_prefix = "bert"

    def __init__(self, config: MegatronBertConfig):
        super().__init__()
        self.config = config

    def init_weights(self) -> None:
        """Hugging Face's initialisation: N(0, initializer_range) weights, zero biases, unit LayerNorms."""
        std = self.config.initializer_range
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.normal_(module.weight, std=std)
                nn.init.zeros_(module.bias)
            elif isinstance(module, nn.Embedding):
                nn.init.normal_(module.weight, std=std)
                if module.padding_idx is not None:
                    module.weight.data[module.padding_idx].zero_()
            elif isinstance(module, nn.LayerNorm):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
        self.tie_weights()

    def tie_weights(self) -> None:
        """Share the MLM decoder weight with the word embeddings (`tie_word_embeddings`)."""
        predictions = getattr(getattr(self, "cls", None), "predictions", None)
        if predictions is not None and self.config.tie_word_embeddings:
            predictions.decoder.weight = self.bert.embeddings.word_embeddings.weight

    def tied_keys(self) -> set[str]:
        """Keys that alias another tensor and are left out of saved files (as Hugging Face does)."""
        if not hasattr(getattr(self, "cls", None), "predictions"):
            return set()
        keys = {"cls.predictions.decoder.bias"}
        if self.config.tie_word_embeddings:
            keys.add("cls.predictions.decoder.weight")
        return keys

    def _match_prefixes(self, state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Let a base-model checkpoint load into a head class and a head checkpoint into the base model."""
        own = self.state_dict().keys()
        prefix = self.base_model_prefix + "."
        has_prefix = any(k.startswith(prefix) for k in state_dict)
        wants_prefix = any(k.startswith(prefix) for k in own)
        if wants_prefix and not has_prefix:
            return {prefix + k: v for k, v in state_dict.items()}
        if has_prefix and not wants_prefix:
            return {k[len(prefix):]: v for k, v in state_dict.items() if k.startswith(prefix)}
        return state_dict

    def load_reference_state_dict(self, state_dict: dict[str, torch.Tensor], source: str = "checkpoint",
                                  allow_random_head: bool = False) -> list[str]:
        """Load HF-named weights strictly; returns the head keys left at their random init.

        Missing encoder weights or a shape mismatch are errors. A missing head (a classifier asked of a
        pretraining checkpoint) is an error unless `allow_random_head`, because a randomly initialised
        head is almost always a mistake.
        """
        state_dict = self._match_prefixes(dict(state_dict))
        if "cls.predictions.bias" in state_dict and "cls.predictions.decoder.bias" not in state_dict:
            state_dict["cls.predictions.decoder.bias"] = state_dict["cls.predictions.bias"]
        own = self.state_dict()
        tied = self.tied_keys()
        mismatched = [f"{k}: checkpoint {tuple(v.shape)} vs config {tuple(own[k].shape)}"
                      for k, v in state_dict.items() if k in own and v.shape != own[k].shape]
        if mismatched:
            raise CheckpointError(
                f"{source}: weight shapes do not match config.json ({len(mismatched)} tensors, e.g. "
                f"{'; '.join(mismatched[:3])}). Check that config.json belongs to these weights.")
        missing = [k for k in own if k not in state_dict and k not in tied and k != "cls.predictions.bias"]
        missing_head = [k for k in missing if k.startswith(self.head_prefixes) or "pooler." in k]
        missing_body = [k for k in missing if k not in missing_head]
        if missing_body:
            raise CheckpointError(
                f"{source}: {len(missing_body)} encoder weights are missing (e.g. {', '.join(missing_body[:4])}). "
                "The file is incomplete or is not a MegatronBERT checkpoint.")
        if missing_head and not allow_random_head:
            raise CheckpointError(
                f"{source} has no weights for the {type(self).__name__} head ({', '.join(missing_head)}). "
                "A randomly initialised head gives meaningless outputs: fine-tune the head first, or pass "
                "allow_random_head=True (CLI: --allow-random-head) if that is really what you want.")
        loadable = {k: v for k, v in state_dict.items() if k in own and k not in tied}
        self.load_state_dict(loadable, strict=False)
        self.tie_weights()
        return missing_head

    @classmethod
    def from_pretrained(cls, folder: str | Path, config: MegatronBertConfig | None = None,
                        allow_random_head: bool = False, **config_overrides: Any):
        """Load a Hugging Face folder (config.json + model.safetensors / shards / pytorch_model.bin)."""
        folder = Path(folder)
        if not folder.is_dir():
            raise CheckpointError(f"{folder} is not a folder; pass a Hugging Face model folder "
                                  "(or convert a Megatron-LM checkpoint first: mbert-export convert)")
        config = config or MegatronBertConfig.from_pretrained(folder)
        for key, value in config_overrides.items():
            setattr(config, key, value)
        model = cls(config)
        #: Head weights the folder lacks, left at their random init (only with allow_random_head).
        model.random_head = model.load_reference_state_dict(load_hf_state_dict(folder), source=str(folder),
                                                            allow_random_head=allow_random_head)
        return model.eval()

    def save_pretrained(self, folder: str | Path) -> Path:
        """Write config.json and model.safetensors (tied aliases left out, like Hugging Face)."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        config = self.config
        if not config.architectures:
            config.architectures = [type(self).__name__]
        tied = self.tied_keys()
        state = {k: v.detach() for k, v in self.state_dict().items() if k not in tied}
        save_hf_state_dict(state, folder)
        config.save_pretrained(folder)
        return folder


# ---------------------------------------------------------------------------- models
class MegatronBertModel(MegatronBertPreTrainedModel):
    """The bare encoder: `last_hidden_state` and (with the pooler) `pooler_output`."""

    def __init__(self, config: MegatronBertConfig, add_pooling_layer: bool = True):
        super().__init__(config)
        self.embeddings = MegatronBertEmbeddings(config)
        self.encoder = MegatronBertEncoder(config)
        self.pooler = MegatronBertPooler(config) if add_pooling_layer else None
        self.init_weights()

    def forward(self, input_ids, attention_mask=None, token_type_ids=None, position_ids=None):
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        if token_type_ids is None:
            token_type_ids = torch.zeros_like(input_ids)
        if position_ids is None:
            position_ids = torch.arange(input_ids.shape[1], device=input_ids.device)[None, :]
        dtype = self.embeddings.word_embeddings.weight.dtype
        mask = extended_attention_mask(attention_mask, causal=self.config.is_decoder, dtype=dtype)
        hidden = self.encoder(self.embeddings(input_ids, token_type_ids, position_ids), mask)
        outputs = {"last_hidden_state": hidden}
        if self.pooler is not None:
            outputs["pooler_output"] = self.pooler(hidden)
        return outputs


class MegatronBertForPreTraining(MegatronBertPreTrainedModel):
    """Masked-LM and next-sentence heads, as Megatron-LM pretrains them."""

    head_prefixes = ("cls.",)

    def __init__(self, config: MegatronBertConfig):
        super().__init__(config)
        self.bert = MegatronBertModel(config)
        self.cls = MegatronBertPreTrainingHeads(config)
        self.init_weights()

    def forward(self, input_ids, attention_mask=None, token_type_ids=None, position_ids=None):
        out = self.bert(input_ids, attention_mask, token_type_ids, position_ids)
        prediction_logits, seq_relationship_logits = self.cls(out["last_hidden_state"], out["pooler_output"])
        return {"prediction_logits": prediction_logits, "seq_relationship_logits": seq_relationship_logits}


class MegatronBertForMaskedLM(MegatronBertPreTrainedModel):
    head_prefixes = ("cls.predictions.",)

    def __init__(self, config: MegatronBertConfig):
        super().__init__(config)
        self.bert = MegatronBertModel(config, add_pooling_layer=False)
        self.cls = MegatronBertOnlyMLMHead(config)
        self.init_weights()

    def forward(self, input_ids, attention_mask=None, token_type_ids=None, position_ids=None):
        out = self.bert(input_ids, attention_mask, token_type_ids, position_ids)
        return {"logits": self.cls(out["last_hidden_state"])}


class MegatronBertForCausalLM(MegatronBertForMaskedLM):
    """The MLM head over a causally masked encoder (set `is_decoder=True` in the config)."""

    def __init__(self, config: MegatronBertConfig):
        super().__init__(config)


class MegatronBertForNextSentencePrediction(MegatronBertPreTrainedModel):
    head_prefixes = ("cls.seq_relationship.",)

    def __init__(self, config: MegatronBertConfig):
        super().__init__(config)
        self.bert = MegatronBertModel(config)
        self.cls = MegatronBertOnlyNSPHead(config)
        self.init_weights()

    def forward(self, input_ids, attention_mask=None, token_type_ids=None, position_ids=None):
        out = self.bert(input_ids, attention_mask, token_type_ids, position_ids)
        return {"logits": self.cls(out["pooler_output"])}


class MegatronBertForSequenceClassification(MegatronBertPreTrainedModel):
    head_prefixes = ("classifier.",)

    def __init__(self, config: MegatronBertConfig):
        super().__init__(config)
        self.bert = MegatronBertModel(config)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)
        self.classifier = nn.Linear(config.hidden_size, config.num_labels)
        self.init_weights()

    def forward(self, input_ids, attention_mask=None, token_type_ids=None, position_ids=None):
        out = self.bert(input_ids, attention_mask, token_type_ids, position_ids)
        return {"logits": self.classifier(self.dropout(out["pooler_output"]))}


class MegatronBertForMultipleChoice(MegatronBertPreTrainedModel):
    """Scores [batch, num_choices] from inputs shaped [batch, num_choices, sequence]."""

    head_prefixes = ("classifier.",)

    def __init__(self, config: MegatronBertConfig):
        super().__init__(config)
        self.bert = MegatronBertModel(config)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)
        self.classifier = nn.Linear(config.hidden_size, 1)
        self.init_weights()

    def forward(self, input_ids, attention_mask=None, token_type_ids=None, position_ids=None):
        num_choices = input_ids.shape[1]

        def flat(x):
            return None if x is None else x.reshape(-1, x.shape[-1])

        out = self.bert(flat(input_ids), flat(attention_mask), flat(token_type_ids), flat(position_ids))
        logits = self.classifier(self.dropout(out["pooler_output"]))
        return {"logits": logits.reshape(-1, num_choices)}


class MegatronBertForTokenClassification(MegatronBertPreTrainedModel):
    head_prefixes = ("classifier.",)

    def __init__(self, config: MegatronBertConfig):
        super().__init__(config)
        self.bert = MegatronBertModel(config, add_pooling_layer=False)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)
        self.classifier = nn.Linear(config.hidden_size, config.num_labels)
        self.init_weights()

    def forward(self, input_ids, attention_mask=None, token_type_ids=None, position_ids=None):
        out = self.bert(input_ids, attention_mask, token_type_ids, position_ids)
        return {"logits": self.classifier(self.dropout(out["last_hidden_state"]))}


class MegatronBertForQuestionAnswering(MegatronBertPreTrainedModel):
    head_prefixes = ("qa_outputs.",)

    def __init__(self, config: MegatronBertConfig):
        super().__init__(config)
        self.bert = MegatronBertModel(config, add_pooling_layer=False)
        self.qa_outputs = nn.Linear(config.hidden_size, 2)
        self.init_weights()

    def forward(self, input_ids, attention_mask=None, token_type_ids=None, position_ids=None):
        out = self.bert(input_ids, attention_mask, token_type_ids, position_ids)
        start_logits, end_logits = self.qa_outputs(out["last_hidden_state"]).unbind(dim=-1)
        return {"start_logits": start_logits, "end_logits": end_logits}


MODEL_CLASSES = {cls.__name__: cls for cls in (
    MegatronBertModel, MegatronBertForPreTraining, MegatronBertForMaskedLM, MegatronBertForCausalLM,
    MegatronBertForNextSentencePrediction, MegatronBertForSequenceClassification,
    MegatronBertForMultipleChoice, MegatronBertForTokenClassification, MegatronBertForQuestionAnswering,
)}
