"""Tensor- and pipeline-parallel merging, shared by every Megatron layout.

Each layout reader (legacy Megatron-LM, Megatron-Core torch, Megatron-Core torch_dist) turns what it
reads into `Shard`s: the model tensors of one tensor-parallel rank keyed by Hugging Face name (the fused
QKV kept as `...attention.self.qkv.*`). `join_stages` renumbers the layers of pipeline stages into one
`Shard`; `merge_plan` lays out the tensor-parallel merge as lazy entries for the streaming writer.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Callable

import torch

from .errors import CheckpointError
from .hf import Entry

#: Megatron-LM `checkpoint_version` -> layout of the fused QKV rows of one tensor-parallel shard
#: (np heads of the shard, hn head size). 3.0 only renamed modules; its QKV layout is 2.0's, and
#: Megatron-Core's `linear_qkv` (without grouped-query attention) is the same `[np, 3, hn]`.
QKV_LAYOUTS = {0.0: "[3, np, hn]", 1.0: "[np, hn, 3]", 2.0: "[np, 3, hn]", 3.0: "[np, 3, hn]"}

POOLER = ["bert.pooler.dense.weight", "bert.pooler.dense.bias"]
LM_HEAD = ["cls.predictions.transform.dense.weight", "cls.predictions.transform.dense.bias",
           "cls.predictions.transform.LayerNorm.weight", "cls.predictions.transform.LayerNorm.bias",
           "cls.predictions.bias"]
BINARY = ["cls.seq_relationship.weight", "cls.seq_relationship.bias"]
UNTIED_DECODER = "cls.predictions.decoder.weight"
_LAYER_KEY_RE = re.compile(r"^bert\.encoder\.layer\.(\d+)\.(.+)$")


def layer_keys(i: int) -> list[str]:
    p = f"bert.encoder.layer.{i}."
    return [p + s for s in ("attention.ln.weight", "attention.ln.bias", "attention.self.qkv.weight",
                            "attention.self.qkv.bias", "attention.output.dense.weight", "attention.output.dense.bias",
                            "ln.weight", "ln.bias", "intermediate.dense.weight", "intermediate.dense.bias",
                            "output.dense.weight", "output.dense.bias")]


class LazyTensor:
    """A tensor known by dtype and shape, read from disk only when `load()` is called."""

    def __init__(self, dtype: torch.dtype, shape: tuple[int, ...], load: Callable[[], torch.Tensor]):
        self.dtype, self.shape, self._load = dtype, torch.Size(shape), load

    def load(self) -> torch.Tensor:
        return self._load()


def materialise(value: Any) -> torch.Tensor:
    return value.load() if isinstance(value, LazyTensor) else value


class Shard:
    """The model tensors of one tensor-parallel rank (all pipeline stages), keyed by Hugging Face name,
    plus the training `args`, the QKV layout version and the checkpoint path of each tensor."""

    def __init__(self, label: str, args: Any, version: float, has_version: bool = True, kind: str = "legacy"):
        self.label, self.args, self.version, self.has_version = label, args, version, has_version
        self.kind = kind  # "legacy" (Megatron-LM model code) or "mcore" (Megatron-Core BertModel)
        self.tensors: dict[str, torch.Tensor | LazyTensor] = {}
        self.origin: dict[str, str] = {}
        self.describe: Callable[[str], str] = lambda hf: hf  # checkpoint name of a missing HF tensor

    def put(self, name: str, value: Any, where: str) -> None:
        self.origin[name] = where
        if isinstance(value, (torch.Tensor, LazyTensor)):
            self.tensors[name] = value

    def name(self, hf: str) -> str:
        """Checkpoint path of an expected tensor, for messages."""
        return self.origin.get(hf) or self.describe(hf)

    def layer_indices(self) -> set[int]:
        return {int(m.group(1)) for k in self.tensors if (m := _LAYER_KEY_RE.match(k))}


def join_stages(stages: list[Shard]) -> Shard:
    """One `Shard` from the pipeline stages of one tensor-parallel rank: stage k's layers (numbered from 0
    again in each stage) follow those of stages 0..k-1; other tensors come from the stage that holds them."""
    if len(stages) == 1:
        return stages[0]
    joined = Shard(stages[0].label, stages[0].args, stages[0].version, stages[0].has_version, stages[0].kind)
    joined.describe = stages[0].describe
    offset = 0
    for stage in stages:
        indices = stage.layer_indices()
        if indices and indices != set(range(max(indices) + 1)):
            raise CheckpointError(f"{stage.label}: layers {sorted(indices)} are not numbered 0..N-1; the "
                                  "pipeline stage is incomplete")
        for name in stage.origin:
            m = _LAYER_KEY_RE.match(name)
            new = f"bert.encoder.layer.{int(m.group(1)) + offset}.{m.group(2)}" if m else name
            if new in joined.tensors or (not m and new in joined.origin and name not in stage.tensors):
                continue  # e.g. the last stage's copy of the tied word embeddings
            joined.put(new, stage.tensors.get(name), f"{stage.origin[name]} (in {stage.label})")
        offset += len(indices)
    return joined


def _order(entry: Entry) -> tuple:
    """Write order: tensor by tensor of the checkpoint (all layers of one stacked torch_dist tensor in a
    row, Q, K and V of one fused tensor together), so a reader holds one source tensor at a time."""
    m = _LAYER_KEY_RE.match(entry[0])
    if not m:
        return (0, entry[0])
    rest = re.sub(r"attention\.self\.(query|key|value)\.", "attention.self.qkv.", m.group(2))
    return (1, rest, int(m.group(1)), entry[0])


def merge_plan(shards: list[Shard], config: dict[str, Any], layers: int, optional: list[str]) -> list[Entry]:
    """Entries (HF name, dtype, shape, producer) that merge the tensor-parallel shards lazily.

    Column-parallel tensors (QKV per head group, dense_h_to_4h / linear_fc1, word embeddings, the LM
    bias and an untied output layer by vocab rows) concatenate on dim 0, row-parallel weights (attention
    dense / linear_proj, dense_4h_to_h / linear_fc2) on dim 1, the rest is replicated (taken from rank
    0). Each shard's QKV is un-permuted with its own heads (np/N) first.
    """
    n = len(shards)
    heads, hidden, version = config["num_attention_heads"], config["hidden_size"], shards[0].version
    head_dim = hidden // heads
    cache: dict[str, torch.Tensor] = {}

    def take(name: str) -> list[torch.Tensor]:
        return [materialise(s.tensors.pop(name)) for s in shards]  # drop references as we go

    def cat(name: str, dim: int) -> Callable[[], torch.Tensor]:
        return lambda: torch.cat(take(name), dim=dim) if n > 1 else take(name)[0]

    def replicated(name: str) -> Callable[[], torch.Tensor]:
        return lambda: take(name)[0]

    def qkv(fused: str, part: int) -> Callable[[], torch.Tensor]:
        def produce() -> torch.Tensor:
            if fused not in cache:
                per_shard = []
                for t in take(fused):
                    rest = tuple(t.shape[1:])
                    if version == 0:
                        t = t.reshape(3, heads // n, head_dim, *rest)
                    elif version == 1.0:
                        t = t.reshape(heads // n, head_dim, 3, *rest).movedim(2, 0)
                    else:
                        t = t.reshape(heads // n, 3, head_dim, *rest).transpose(0, 1)
                    per_shard.append(t)
                cache[fused] = torch.cat(per_shard, dim=1) if n > 1 else per_shard[0]
            merged = cache[fused][part].reshape(hidden, *cache[fused].shape[3:])
            if part == 2:
                del cache[fused]
            return merged
        return produce

    def shape_of(name: str, dim: int | None) -> tuple[int, ...]:
        shapes = [tuple(s.tensors[name].shape) for s in shards]
        if dim is None:
            if len(set(shapes)) > 1:
                raise CheckpointError(f"{shards[0].name(name)} should be replicated but differs between "
                                      f"shards ({shapes[0]} vs {shapes[1:]}); the shards come from different models")
            return shapes[0]
        total = list(shapes[0])
        total[dim] = sum(s[dim] for s in shapes)
        return tuple(total)

    entries: list[Entry] = []

    def add(name: str, dim: int | None, produce: Callable[[], torch.Tensor] | None = None) -> None:
        shape = shape_of(name, dim)
        produce = produce or (replicated(name) if dim is None else cat(name, dim))
        entries.append((name, shards[0].tensors[name].dtype, shape, produce))

    add("bert.embeddings.word_embeddings.weight", 0)
    add("bert.embeddings.position_embeddings.weight", None)
    if "bert.embeddings.token_type_embeddings.weight" in shards[0].tensors:
        add("bert.embeddings.token_type_embeddings.weight", None)
    else:  # Megatron BERT without binary head has no token types: zeros keep HF's forward identical
        dtype = shards[0].tensors["bert.embeddings.word_embeddings.weight"].dtype
        entries.append(("bert.embeddings.token_type_embeddings.weight", dtype, (2, hidden),
                        lambda: torch.zeros(2, hidden, dtype=dtype)))
    for i in range(layers):
        p = f"bert.encoder.layer.{i}."
        add(p + "attention.ln.weight", None)
        add(p + "attention.ln.bias", None)
        for wb in ("weight", "bias"):
            fused = p + f"attention.self.qkv.{wb}"
            rows = shape_of(fused, 0)
            if any(s.tensors[fused].shape[0] != 3 * hidden // n for s in shards) or rows[0] != 3 * hidden:
                raise CheckpointError(
                    f"{shards[0].name(fused)}: {rows[0]} rows over {n} shards, expected 3 x hidden_size "
                    f"= {3 * hidden} split evenly; the shards do not match the config (hidden_size, "
                    "tensor-parallel size, grouped-query attention?)")
            dtype = shards[0].tensors[fused].dtype
            for part, qkv_name in enumerate(("query", "key", "value")):
                entries.append((p + f"attention.self.{qkv_name}.{wb}", dtype, (hidden, *rows[1:]), qkv(fused, part)))
        add(p + "attention.output.dense.weight", 1)
        add(p + "attention.output.dense.bias", None)
        add(p + "ln.weight", None)
        add(p + "ln.bias", None)
        add(p + "intermediate.dense.weight", 0)
        add(p + "intermediate.dense.bias", 0)
        add(p + "output.dense.weight", 1)
        add(p + "output.dense.bias", None)
    add("bert.encoder.ln.weight", None)
    add("bert.encoder.ln.bias", None)
    for name in optional:
        if name in ("cls.predictions.bias", UNTIED_DECODER):
            vocab_parallel = shards[0].tensors[name].shape[0] * n == config["vocab_size"]
            add(name, 0 if vocab_parallel and n > 1 else None)
        else:
            add(name, None)
    return sorted(entries, key=_order)


def check_shapes(entries: list[Entry], config: dict[str, Any], label: str) -> None:
    """Every merged tensor must have the shape the Hugging Face model built from `config` expects."""
    h, f, v = config["hidden_size"], config["intermediate_size"], config["vocab_size"]
    expected = {"bert.embeddings.word_embeddings.weight": (v, h),
                "bert.embeddings.position_embeddings.weight": (config["max_position_embeddings"], h),
                "bert.embeddings.token_type_embeddings.weight": (config["type_vocab_size"], h),
                "cls.predictions.bias": (v,), UNTIED_DECODER: (v, h),
                "cls.seq_relationship.weight": (2, h), "cls.seq_relationship.bias": (2,)}
    by_suffix = {"intermediate.dense.weight": (f, h), "intermediate.dense.bias": (f,), "output.dense.weight": (h, f)}
    for name, _, shape, _ in entries:
        want = expected.get(name)
        if want is None:
            suffix = next((k for k in by_suffix if name.endswith(k) and "attention" not in name), None)
            want = by_suffix[suffix] if suffix else (h, h) if name.endswith("weight") and "ln." not in name \
                and "LayerNorm" not in name else (h,)
        if tuple(shape) != want:
            raise CheckpointError(f"{label}: config/weight shape mismatch: {name} has shape {tuple(shape)} but the "
                                  f"config implies {want}; the checkpoint's tensors are inconsistent with its args")


def label_of(path: Path, src: Path) -> str:
    return str(path) if path == src else "/".join(path.parts[-3:])
