"""Synthetic Megatron-LM BERT checkpoints, written FROM a reference model, for the converter tests.

`to_megatron` is the inverse of the conversion: it takes a Hugging Face-named state dict and lays it
out as Megatron-LM saves it (module names of each `checkpoint_version`, fused QKV in that version's
order, tensor-parallel shards), with the training `args` Namespace and the RNG / optimizer state
pickled in as Megatron-LM does. `write_checkpoint` puts the shards on disk in the NGC zip, release,
iteration or bare layouts. Converting the result must give back the reference model's outputs.
"""

from __future__ import annotations

import argparse
import contextlib
import enum
import os
import random
import sys
import types
import zipfile
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch

from mbert_export.config import MegatronBertConfig, preset_config
from mbert_export.modeling import MegatronBertForPreTraining

#: The tiny shape: hidden 32, 2 layers, 4 heads, ffn 64, 64 positions, 100 tokens padded to 128 rows.
TOKENIZER_VOCAB = 100


def reference_config(**overrides: Any) -> MegatronBertConfig:
    """Megatron-LM's BERT with args: tanh GELU in the MLP (bias-gelu fusion), exact erf GELU in the LM head
    (legacy `BertLMHead` applies torch.nn.functional.gelu). `lm_head_act=None`: tanh everywhere."""
    return preset_config("tiny", **{"hidden_act": "gelu_new", "lm_head_act": "gelu",
                                    "architectures": ["MegatronBertForPreTraining"],
                                    **overrides})


def reference_model(seed: int = 0, **overrides: Any) -> MegatronBertForPreTraining:
    """A MegatronBertForPreTraining with random weights large enough that any mix-up shows in the logits."""
    model = MegatronBertForPreTraining(reference_config(**overrides)).eval()
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            noise = torch.randn(param.shape, generator=gen)
            param.copy_(1 + 0.2 * noise if ("ln" in name or "LayerNorm" in name) and name.endswith("weight")
                        else 0.3 * noise)
    return model


def reference_state_dict(model: MegatronBertForPreTraining) -> dict[str, torch.Tensor]:
    tied = model.tied_keys()
    return {k: v.detach().clone() for k, v in model.state_dict().items() if k not in tied}


def make_args(config: MegatronBertConfig, version: float | None, tp: int, **overrides: Any) -> argparse.Namespace:
    """The fields of Megatron-LM's `args` that matter to the converter (plus a few that do not)."""
    tanh = config.hidden_act != "gelu"
    args = dict(num_layers=config.num_hidden_layers, hidden_size=config.hidden_size,
                ffn_hidden_size=config.intermediate_size, num_attention_heads=config.num_attention_heads,
                max_position_embeddings=config.max_position_embeddings, padded_vocab_size=config.vocab_size,
                make_vocab_size_divisible_by=128, layernorm_epsilon=config.layer_norm_eps,
                bias_gelu_fusion=tanh, openai_gelu=False, onnx_safe=None, tokenizer_type="BertWordPieceLowerCase",
                vocab_file="/data/bert-vocab.txt", params_dtype=torch.float16, fp16=True, bert_binary_head=True,
                pipeline_model_parallel_size=1, seed=1234, lr=1e-4)
    if version is not None and version >= 3.0:
        args["tensor_model_parallel_size"] = tp
    else:
        args["model_parallel_size"] = tp
    args.update(overrides)
    return argparse.Namespace(**args)


def _qkv_shards(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int, tp: int, version: float) -> list:
    """Fused QKV of each rank in the layout of `version` (each rank holds heads/tp heads)."""
    hidden = q.shape[0]
    rest = tuple(q.shape[1:])
    fused = torch.stack([q, k, v]).view(3, heads, hidden // heads, *rest)  # [3, np, hn, ...]
    out = []
    for part in fused.chunk(tp, dim=1):
        if version == 0:
            laid = part  # [3, np, hn]
        elif version == 1.0:
            laid = part.movedim(0, 2)  # [np, hn, 3]
        else:
            laid = part.transpose(0, 1)  # [np, 3, hn]
        out.append(laid.contiguous().reshape(-1, *rest))
    return out


def to_megatron(state: dict[str, torch.Tensor], config: MegatronBertConfig, *, version: float | None = 3.0,
                tp: int = 1, args: bool | argparse.Namespace = True, dtype: torch.dtype | None = None,
                heads: bool = True, extra: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """One Megatron-LM checkpoint dict per tensor-parallel rank, built from HF-named weights."""
    state = {k: (v.to(dtype) if dtype else v) for k, v in state.items()}
    n_layers, n_heads = config.num_hidden_layers, config.num_attention_heads
    enc = "encoder" if (version or 0) >= 3.0 else "transformer"
    attn = "self_attention" if (version or 0) >= 2.0 else "attention"

    def split(t: torch.Tensor, dim: int | None) -> list[torch.Tensor]:
        return [t.clone()] * tp if dim is None else [c.contiguous().clone() for c in t.chunk(tp, dim=dim)]

    ranks: list[dict[str, Any]] = [{} for _ in range(tp)]
    encoders: list[dict[str, torch.Tensor]] = [{} for _ in range(tp)]

    def put_layer(key: str, tensors: list[torch.Tensor]) -> None:
        for r in range(tp):
            encoders[r][key] = tensors[r]

    for i in range(n_layers):
        p = f"bert.encoder.layer.{i}."
        m = f"layers.{i}."
        for wb in ("weight", "bias"):
            put_layer(m + f"input_layernorm.{wb}", split(state[p + f"attention.ln.{wb}"], None))
            q, k, v = (state[p + f"attention.self.{x}.{wb}"] for x in ("query", "key", "value"))
            put_layer(m + f"{attn}.query_key_value.{wb}", _qkv_shards(q, k, v, n_heads, tp, version or 0))
            put_layer(m + f"{attn}.dense.{wb}", split(state[p + f"attention.output.dense.{wb}"],
                                                      1 if wb == "weight" else None))
            put_layer(m + f"post_attention_layernorm.{wb}", split(state[p + f"ln.{wb}"], None))
            put_layer(m + f"mlp.dense_h_to_4h.{wb}", split(state[p + f"intermediate.dense.{wb}"], 0))
            put_layer(m + f"mlp.dense_4h_to_h.{wb}", split(state[p + f"output.dense.{wb}"],
                                                           1 if wb == "weight" else None))
    for wb in ("weight", "bias"):
        put_layer(f"final_layernorm.{wb}", split(state[f"bert.encoder.ln.{wb}"], None))

    word = split(state["bert.embeddings.word_embeddings.weight"], 0)
    pos = split(state["bert.embeddings.position_embeddings.weight"], None)
    tt = split(state["bert.embeddings.token_type_embeddings.weight"], None)
    lm_bias = split(state["cls.predictions.bias"], 0)
    for r in range(tp):
        lm = {"embedding": {"word_embeddings": {"weight": word[r]}, "position_embeddings": {"weight": pos[r]},
                            "tokentype_embeddings": {"weight": tt[r]}},
              enc: encoders[r]}
        model: dict[str, Any] = {"language_model": lm}
        if heads:
            lm["pooler"] = {"dense.weight": state["bert.pooler.dense.weight"].clone(),
                            "dense.bias": state["bert.pooler.dense.bias"].clone()}
            model["lm_head"] = {"dense.weight": state["cls.predictions.transform.dense.weight"].clone(),
                                "dense.bias": state["cls.predictions.transform.dense.bias"].clone(),
                                "layernorm.weight": state["cls.predictions.transform.LayerNorm.weight"].clone(),
                                "layernorm.bias": state["cls.predictions.transform.LayerNorm.bias"].clone(),
                                "bias": lm_bias[r]}
            model["binary_head"] = {"weight": state["cls.seq_relationship.weight"].clone(),
                                    "bias": state["cls.seq_relationship.bias"].clone()}
        ckpt: dict[str, Any] = {"model": model, "iteration": 1000}
        if version is not None:
            ckpt["checkpoint_version"] = version
        if args is True:
            ckpt["args"] = make_args(config, version, tp)
        elif isinstance(args, argparse.Namespace):
            ckpt["args"] = args
        # What Megatron-LM pickles besides the model: RNG state (python tuple, numpy array) and optimizer.
        ckpt["rng_state"] = [{"random_rng_state": random.Random(r).getstate(),
                              "np_rng_state": np.random.RandomState(r).get_state(),
                              "torch_rng_state": torch.get_rng_state()}]
        ckpt["optimizer"] = {"optimizer": {"state": {}, "param_groups": [{"lr": 1e-4, "params": [0, 1]}]},
                             "grad_scaler": {"scale": torch.tensor(65536.0)}}
        ckpt.update(extra or {})
        ranks[r] = ckpt
    return ranks


LAYOUTS = ("zip", "zip_top", "zip_bare", "release", "iteration", "ranks", "file")


def write_checkpoint(shards: list[dict[str, Any]], root: Path, layout: str, *, legacy: bool = False,
                     name: str = "megatron_bert_345m_v0_1_uncased") -> Path:
    """Save rank dicts in a Megatron-LM on-disk layout under `root`; returns the path to convert."""
    root.mkdir(parents=True, exist_ok=True)
    save = dict(_use_new_zipfile_serialization=not legacy)
    if layout in ("file", "zip_bare"):
        assert len(shards) == 1, "a single .pt holds one rank"
    if layout == "file":
        path = root / "model_optim_rng.pt"
        torch.save(shards[0], path, **save)
        return path
    stage = root / (name + ".staging" if layout.startswith("zip") else name)
    if layout in ("release", "zip", "zip_top"):
        rank_root = stage / "release"
    elif layout == "iteration":
        rank_root = stage / "iter_0001000"
        stage.mkdir(parents=True, exist_ok=True)
        (stage / "latest_checkpointed_iteration.txt").write_text("1000\n")
    elif layout == "ranks":
        rank_root = stage
    elif layout == "zip_bare":
        rank_root = None
    else:
        raise ValueError(layout)
    if rank_root is None:
        stage.mkdir(parents=True, exist_ok=True)
        torch.save(shards[0], stage / "model_optim_rng.pt", **save)
    else:
        for r, shard in enumerate(shards):
            (rank_root / f"mp_rank_{r:02d}").mkdir(parents=True, exist_ok=True)
            torch.save(shard, rank_root / f"mp_rank_{r:02d}" / "model_optim_rng.pt", **save)
    if not layout.startswith("zip"):
        return stage
    zpath = root / f"{name}.zip"
    prefix = "megatron_bert/" if layout == "zip_top" else ""
    with zipfile.ZipFile(zpath, "w", compression=zipfile.ZIP_STORED) as zf:
        for file in sorted(stage.rglob("*")):
            if file.is_file():
                zf.write(file, prefix + file.relative_to(stage).as_posix())
    for file in sorted(stage.rglob("*"), reverse=True):
        file.unlink() if file.is_file() else file.rmdir()
    stage.rmdir()
    return zpath


@contextlib.contextmanager
def fake_megatron_enums() -> Iterator[type]:
    """Make `megatron.model.enums.PositionEmbeddingType` importable while pickling, as with Megatron-LM
    installed; it is removed again so that loading must work without Megatron-LM."""

    class PositionEmbeddingType(enum.Enum):
        rotary = 1
        absolute = 2

    names = ("megatron", "megatron.model", "megatron.model.enums")
    modules = {n: types.ModuleType(n) for n in names}
    PositionEmbeddingType.__module__ = "megatron.model.enums"
    PositionEmbeddingType.__qualname__ = "PositionEmbeddingType"
    modules["megatron.model.enums"].PositionEmbeddingType = PositionEmbeddingType
    saved = {n: sys.modules.get(n) for n in names}
    sys.modules.update(modules)
    try:
        yield PositionEmbeddingType
    finally:
        for n, m in saved.items():
            if m is None:
                sys.modules.pop(n, None)
            else:
                sys.modules[n] = m


class Evil:
    """An object whose unpickling creates a folder: stands for arbitrary code in a hostile pickle."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.makedirs, (self.marker,))


def to_pipeline(ranks: list[dict[str, Any]], pp: int) -> list[list[dict[str, Any]]]:
    """Split each rank's checkpoint into `pp` legacy Megatron-LM pipeline stages: layers renumbered from 0
    in every stage, embeddings on the first, final LayerNorm, pooler and heads on the last, which also
    holds its copy of the word embeddings (`word_embeddings_for_head`)."""
    grid = []
    for ckpt in ranks:
        lm = ckpt["model"]["language_model"]
        enc_name = "encoder" if "encoder" in lm else "transformer"
        layers = sorted({int(k.split(".")[1]) for k in lm[enc_name] if k.startswith("layers.")})
        per = len(layers) // pp
        stages = []
        for s in range(pp):
            local = {}
            for key, value in lm[enc_name].items():
                if key.startswith("layers."):
                    i = int(key.split(".")[1])
                    if s * per <= i < (s + 1) * per:
                        local[f"layers.{i - s * per}." + key.split(".", 2)[2]] = value
                elif s == pp - 1:
                    local[key] = value
            stage_lm: dict[str, Any] = {enc_name: local}
            model: dict[str, Any] = {"language_model": stage_lm}
            if s == 0:
                stage_lm["embedding"] = lm["embedding"]
            if s == pp - 1:
                for head in ("lm_head", "binary_head"):
                    if head in ckpt["model"]:
                        model[head] = ckpt["model"][head]
                if "pooler" in lm:
                    stage_lm["pooler"] = lm["pooler"]
                model["word_embeddings_for_head"] = {"weight": lm["embedding"]["word_embeddings"]["weight"].clone()}
            stage = {k: v for k, v in ckpt.items() if k != "model"}
            stage["model"] = model
            if "args" in stage:
                stage["args"] = argparse.Namespace(**{**vars(stage["args"]), "pipeline_model_parallel_size": pp})
            stages.append(stage)
        grid.append(stages)
    return grid


def write_pipeline(grid: list[list[dict[str, Any]]], root: Path) -> Path:
    """Save a [tp][pp] grid as Megatron-LM does: iter_XXXXXXX/mp_rank_XX_YYY/model_optim_rng.pt + tracker."""
    it = root / "iter_0000100"
    for t, stages in enumerate(grid):
        for p, stage in enumerate(stages):
            (it / f"mp_rank_{t:02d}_{p:03d}").mkdir(parents=True)
            torch.save(stage, it / f"mp_rank_{t:02d}_{p:03d}" / "model_optim_rng.pt")
    (root / "latest_checkpointed_iteration.txt").write_text("100\n")
    return root
