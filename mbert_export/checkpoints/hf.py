"""Hugging Face folders: read their weights (safetensors, shards, `.bin` through the safe unpickler)
and write `model.safetensors` streaming, one tensor at a time, atomically."""

from __future__ import annotations

import json
import os
import struct
import sys
from pathlib import Path, PurePosixPath
from typing import Any, Callable, Mapping

import torch

from ..fileio import atomic_path
from .errors import CheckpointError, Progress, say, short
from .unpickle import safe_torch_load

SAFE_WEIGHTS_NAME = "model.safetensors"
SAFE_WEIGHTS_INDEX_NAME = "model.safetensors.index.json"
WEIGHTS_NAME = "pytorch_model.bin"
WEIGHTS_INDEX_NAME = "pytorch_model.bin.index.json"
MEGATRON_CHECKPOINT_NAME = "model_optim_rng.pt"
TRACKER_NAME = "latest_checkpointed_iteration.txt"


# ============================================================================ safetensors writing
_ST_DTYPES = {
    torch.float64: "F64", torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16",
    torch.int64: "I64", torch.int32: "I32", torch.int16: "I16", torch.int8: "I8", torch.uint8: "U8",
    torch.bool: "BOOL", torch.float8_e4m3fn: "F8_E4M3", torch.float8_e5m2: "F8_E5M2",
}

#: One tensor to write: (name, dtype, shape, producer). The producer is called only when the tensor's
#: bytes are written, so a converter never holds more than one output tensor.
Entry = tuple[str, torch.dtype, tuple[int, ...], Callable[[], torch.Tensor]]


def write_safetensors(path: Path, entries: list[Entry], metadata: Mapping[str, str] | None = None,
                      progress: Progress = None) -> None:
    """Stream tensors into a safetensors file, atomically (temp file beside it + os.replace).

    Same format as `safetensors.torch.save_file` (8-byte header length, JSON header padded to 8 bytes,
    raw little-endian data in header order) but one tensor is materialised at a time, which keeps a
    345M conversion at ~1x the checkpoint size instead of holding every merged tensor at once. Tensors
    sharing storage are simply written twice, so tied weights need no special care.
    """
    if sys.byteorder != "little":  # pragma: no cover
        raise CheckpointError("safetensors writing needs a little-endian machine")
    header: dict[str, Any] = {}
    offset = 0
    for name, dtype, shape, _ in entries:
        if dtype not in _ST_DTYPES:
            raise CheckpointError(f"tensor {name!r} has dtype {dtype}, which safetensors cannot store; cast it first")
        numel = 1
        for dim in shape:
            numel *= int(dim)
        nbytes = numel * torch.empty((), dtype=dtype).element_size()
        header[name] = {"dtype": _ST_DTYPES[dtype], "shape": [int(d) for d in shape],
                        "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    header["__metadata__"] = {"format": "pt", **(metadata or {})}
    raw = json.dumps(header, separators=(",", ":")).encode("utf-8")
    raw += b" " * (-len(raw) % 8)
    written, step = 0, 10
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        f.write(struct.pack("<Q", len(raw)))
        f.write(raw)
        for name, dtype, shape, produce in entries:
            done = 100 * written // max(offset, 1)
            if progress is not None and done >= step:
                say(progress, f"  {done}% ({written / 2**30:.2f} of {offset / 2**30:.2f} GiB)")
                step = done // 10 * 10 + 10
            tensor = produce().detach().to("cpu")
            if tensor.dtype != dtype or tuple(tensor.shape) != tuple(shape):
                raise CheckpointError(f"internal error: {name} is {tensor.dtype}{tuple(tensor.shape)}, "
                                      f"expected {dtype}{tuple(shape)}")
            if tensor.numel():
                f.write(memoryview(tensor.contiguous().reshape(-1).view(torch.uint8).numpy()))
            written += tensor.numel() * tensor.element_size()
            del tensor
        f.flush()
        os.fsync(f.fileno())


def save_hf_state_dict(state_dict: Mapping[str, torch.Tensor], folder: str | Path) -> Path:
    """Write `folder/model.safetensors` atomically. Tensors are made contiguous; tied/shared tensors
    are written as independent copies (safetensors cannot express aliasing; loaders re-tie them)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    entries: list[Entry] = []
    for name, value in state_dict.items():
        if not isinstance(value, torch.Tensor):
            raise CheckpointError(f"state dict entry {name!r} is a {type(value).__name__}, not a tensor; "
                                  "only tensors can be saved to safetensors")
        if value.layout != torch.strided:
            raise CheckpointError(f"tensor {name!r} is {value.layout}; convert it to a dense tensor first")
        entries.append((name, value.dtype, tuple(value.shape), lambda v=value: v))
    path = folder / SAFE_WEIGHTS_NAME
    write_safetensors(path, entries)
    return path


# ============================================================================ Hugging Face loading
def _load_safetensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    if not path.is_file():
        raise CheckpointError(f"{path}: file not found")
    try:
        return load_file(str(path), device="cpu")
    except Exception as exc:
        raise CheckpointError(f"{path}: cannot read safetensors file ({short(exc)}); it is truncated or corrupt: "
                              "download or convert it again") from None


def _load_bin(path: Path) -> dict[str, torch.Tensor]:
    data = safe_torch_load(path)
    if isinstance(data, Mapping) and isinstance(data.get("model"), Mapping) and "language_model" in data["model"]:
        raise CheckpointError(f"{path} is a Megatron-LM checkpoint, not a Hugging Face state dict; convert it "
                              "first (mbert-export convert SRC DST)")
    if not isinstance(data, Mapping):
        raise CheckpointError(f"{path} holds a {type(data).__name__}, not a state dict of tensors")
    return {k: v for k, v in data.items() if isinstance(v, torch.Tensor)}


def _load_index(index_path: Path, load: Callable[[Path], dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    try:
        index = json.loads(index_path.read_text(encoding="utf-8"))
        weight_map = index["weight_map"]
        if not isinstance(weight_map, dict):
            raise TypeError("weight_map is not an object")
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise CheckpointError(f"{index_path}: not a valid shard index ({short(exc)}); it needs a "
                              "\"weight_map\" of tensor name -> shard file. Re-save the model") from None
    folder = index_path.parent
    shards = sorted(set(weight_map.values()))
    for shard in shards:
        rel = PurePosixPath(str(shard))
        if rel.is_absolute() or ".." in rel.parts or "\\" in str(shard):
            raise CheckpointError(f"{index_path} names shard {shard!r} outside its folder; refusing to read it")
        if not (folder / shard).is_file():
            raise CheckpointError(f"{index_path} names shard {shard!r}, which is missing from {folder}; "
                                  "download the missing shard (or all files of the model) again")
    state: dict[str, torch.Tensor] = {}
    for shard in shards:
        state.update(load(folder / shard))
    missing = [k for k in weight_map if k not in state]
    if missing:
        raise CheckpointError(f"{index_path}: {len(missing)} tensors listed in the index are not in their shards "
                              f"(e.g. {', '.join(missing[:3])}); the shards do not belong to this index")
    return state


def load_hf_state_dict(folder: str | Path) -> dict[str, torch.Tensor]:
    """Read the weights of a Hugging Face folder: model.safetensors, sharded safetensors (index json),
    pytorch_model.bin or its shards, in that order of preference. `.bin` files go through
    `safe_torch_load`, so they cannot run code."""
    folder = Path(folder)
    if folder.is_file() and folder.suffix in (".safetensors", ".bin"):
        return _load_safetensors(folder) if folder.suffix == ".safetensors" else _load_bin(folder)
    if not folder.exists():
        raise CheckpointError(f"{folder}: folder not found; pass a Hugging Face model folder")
    if not folder.is_dir():
        raise CheckpointError(f"{folder} is not a folder; pass a Hugging Face model folder "
                              "(or convert a Megatron-LM checkpoint first: mbert-export convert)")
    if (folder / SAFE_WEIGHTS_NAME).exists():
        return _load_safetensors(folder / SAFE_WEIGHTS_NAME)
    if (folder / SAFE_WEIGHTS_INDEX_NAME).exists():
        return _load_index(folder / SAFE_WEIGHTS_INDEX_NAME, _load_safetensors)
    if (folder / WEIGHTS_NAME).exists():
        return _load_bin(folder / WEIGHTS_NAME)
    if (folder / WEIGHTS_INDEX_NAME).exists():
        return _load_index(folder / WEIGHTS_INDEX_NAME, _load_bin)
    hint = ""
    if any(folder.glob("**/mp_rank_*")) or any(folder.glob("*.pt")) or (folder / TRACKER_NAME).exists():
        hint = " It looks like a Megatron-LM checkpoint: convert it first (mbert-export convert SRC DST)."
    raise CheckpointError(f"{folder} has no weights: expected {SAFE_WEIGHTS_NAME}, {SAFE_WEIGHTS_INDEX_NAME}, "
                          f"{WEIGHTS_NAME} or {WEIGHTS_INDEX_NAME}.{hint}")
