"""Load, convert and merge checkpoints: the first stage of the data flow.

- `load_hf_state_dict` / `save_hf_state_dict`: Hugging Face folders (safetensors, sharded safetensors,
  pytorch_model.bin and its shards).
- `safe_torch_load`: `torch.load(weights_only=True)` with an allow-list of the data-only classes that
  Megatron-LM checkpoints pickle; anything else is refused unless the caller opts in explicitly.
- `convert_megatron`: a Megatron-LM BERT checkpoint (NGC zip, release / iteration folder, a single
  `.pt`), tensor-parallel shards merged, written as a Hugging Face MegatronBERT folder.

Every bad input raises `CheckpointError` naming the file, the problem and the fix; conversion writes
its output folder atomically, so a failure leaves nothing behind.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import pickle
import re
import shutil
import struct
import sys
import tempfile
import zipfile
from pathlib import Path, PurePosixPath
from typing import Any, Callable, Iterator, Mapping

import torch

from .fileio import atomic_dir, atomic_path

SAFE_WEIGHTS_NAME = "model.safetensors"
SAFE_WEIGHTS_INDEX_NAME = "model.safetensors.index.json"
WEIGHTS_NAME = "pytorch_model.bin"
WEIGHTS_INDEX_NAME = "pytorch_model.bin.index.json"
MEGATRON_CHECKPOINT_NAME = "model_optim_rng.pt"
TRACKER_NAME = "latest_checkpointed_iteration.txt"

#: Megatron-LM `checkpoint_version` -> layout of the fused QKV rows of one tensor-parallel shard
#: (np heads of the shard, hn head size). 3.0 only renamed modules; its QKV layout is 2.0's.
QKV_LAYOUTS = {0.0: "[3, np, hn]", 1.0: "[np, hn, 3]", 2.0: "[np, 3, hn]", 3.0: "[np, 3, hn]"}

#: Padded embedding rows of the NVIDIA NGC BERT-345M checkpoints -> the size of their tokenizers.
NGC_VOCAB_SIZES = {29056: 28996, 30592: 30522}

Progress = Callable[[str], None] | None


class CheckpointError(ValueError):
    """A checkpoint that cannot be read or converted; the message names the file, the problem and the fix."""


def _say(progress: Progress, message: str) -> None:
    if progress is not None:
        progress(message)


# ============================================================================ safe torch.load
class PickledStub:
    """Stand-in for an enum-like class of Megatron-LM / Transformer Engine that is not installed.

    Such values sit in the pickled training `args` (e.g. `megatron.model.enums.PositionEmbeddingType`).
    The stub only records the name and the constructor arguments / state: no foreign code runs.
    """

    qualname = "?"

    def __init__(self, *args: Any) -> None:
        self.args = args
        self.state: Any = None

    def __setstate__(self, state: Any) -> None:
        self.state = state

    def __repr__(self) -> str:
        return f"<{self.qualname}{self.args!r}>"


#: Globals replaced by `PickledStub`: enum modules of Megatron-LM, dtype / format enums of TE.
_STUB_RE = re.compile(r"^(megatron|transformer_engine|transformer_engine_torch)(\.\w+)*\.(enums\.\w+|DType|Format)$")
_GLOBAL_RE = re.compile(r"GLOBAL ([\w.]+) (?:was not an allowed global|whose module)")
_stub_cache: dict[str, type] = {}


def _stub_for(name: str) -> type:
    """A `PickledStub` subclass whose module and name are `name`, so the allow-list matches it."""
    if name not in _stub_cache:
        module, cls_name = name.rsplit(".", 1)
        _stub_cache[name] = type(cls_name, (PickledStub,), {"qualname": name, "__module__": module,
                                                            "__qualname__": cls_name})
    return _stub_cache[name]


#: (object, "module.name") aliases in the allow-list need torch >= 2.6; older torch gets plain objects.
_ALIASES_OK = tuple(int(x) for x in re.findall(r"\d+", torch.__version__)[:2]) >= (2, 6)


@contextlib.contextmanager
def _allowing(allowed: list[Any]) -> Iterator[None]:
    """Allow-list `allowed` for weights-only loading, for the duration of the block where torch can."""
    if not _ALIASES_OK:
        allowed = [a for a in allowed if not isinstance(a, tuple)]
    if hasattr(torch.serialization, "safe_globals"):
        with torch.serialization.safe_globals(allowed):
            yield
    else:  # torch 2.4: process-wide (the list holds data-only classes and inert stubs only)
        torch.serialization.add_safe_globals(allowed)
        yield


def _allowed_globals() -> list[Any]:
    """Data-only classes Megatron-LM checkpoints pickle besides tensors: the training `args`
    (`argparse.Namespace`) and the numpy RNG state (arrays, dtypes, scalars; numpy 1.x and 2.x names)."""
    allowed: list[Any] = [argparse.Namespace]
    try:
        import numpy as np
    except ImportError:  # pragma: no cover - numpy ships with torch installs
        return allowed
    core = getattr(np, "_core", None) or np.core
    allowed += [np.ndarray, np.dtype]
    for fn in (core.multiarray._reconstruct, core.multiarray.scalar):
        allowed += [fn, (fn, f"numpy.core.multiarray.{fn.__name__}"), (fn, f"numpy._core.multiarray.{fn.__name__}")]
    dtypes = getattr(np, "dtypes", None)
    if dtypes is not None:  # BUILD of a dtype needs its concrete class (numpy >= 1.25)
        allowed += [getattr(dtypes, n) for n in dir(dtypes) if n.endswith("DType") and n != "ObjectDType"]
    return allowed


def _is_torch_zip(path: Path) -> bool:
    with open(path, "rb") as f:
        return f.read(4) == b"PK\x03\x04"


def safe_torch_load(path: str | Path, allow_unsafe_pickle: bool = False, *, progress: Progress = None) -> Any:
    """`torch.load` that never runs code from the file unless `allow_unsafe_pickle=True`.

    Uses `weights_only=True`, `map_location="cpu"` and `mmap=True` for zip-format files (the tensors stay
    on disk until touched). Allowed besides tensors: `argparse.Namespace`, numpy arrays/dtypes/scalars,
    and stubs (`PickledStub`) for Megatron-LM / Transformer Engine enums, so checkpoints load without
    Megatron-LM installed. Any other class raises `CheckpointError` naming it and the opt-in.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: file not found; check the path")
    if path.stat().st_size == 0:
        raise CheckpointError(f"{path}: the file is empty (interrupted download or copy?); fetch it again")
    mmap = _is_torch_zip(path)
    stubs: list[Any] = []
    while True:
        try:
            with _allowing(_allowed_globals() + stubs):
                return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
        except pickle.UnpicklingError as exc:
            text = str(exc)
            match = _GLOBAL_RE.search(text)
            if match and _STUB_RE.match(match.group(1)) and len(stubs) < 64:
                stubs.append(_stub_for(match.group(1)))
                continue
            untrusted = match is not None or "reduce for unrecognized function" in text or "Can only build" in text \
                or "Can only create new object" in text
            if not untrusted:
                raise CheckpointError(_corrupt_message(path, exc)) from None
            culprit = match.group(1) if match else _short(text.split("WeightsUnpickler error:")[-1])
            if not allow_unsafe_pickle:
                raise CheckpointError(
                    f"{path}: the pickle needs {culprit}, which is not on the allow-list of data-only classes "
                    "(tensors, argparse.Namespace, numpy arrays, Megatron-LM enums). Unpickling it could run "
                    "arbitrary code. Only if you trust the file, opt in with allow_unsafe_pickle=True "
                    "(CLI: --trust-remote-pickle).") from None
            _say(progress, f"warning: {path.name} needs {culprit}; unpickling with arbitrary code execution "
                           "because allow_unsafe_pickle=True")
            return _unsafe_load(path, mmap)
        except CheckpointError:
            raise
        except Exception as exc:  # truncated zip, bad magic number, EOF, ...
            raise CheckpointError(_corrupt_message(path, exc)) from None


def _unsafe_load(path: Path, mmap: bool) -> Any:
    try:
        return torch.load(path, map_location="cpu", weights_only=False, mmap=mmap)
    except ModuleNotFoundError as exc:
        raise CheckpointError(f"{path}: the pickle imports module {exc.name!r}, which is not installed; install "
                              "it (e.g. put Megatron-LM on PYTHONPATH) to load this file") from None
    except Exception as exc:
        raise CheckpointError(_corrupt_message(path, exc)) from None


def _short(text: str, limit: int = 200) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _corrupt_message(path: Path, exc: BaseException) -> str:
    return (f"{path}: cannot read it as a PyTorch checkpoint ({type(exc).__name__}: {_short(exc)}); the file is "
            "truncated or corrupt: download or copy it again")


# ============================================================================ safetensors writing
_ST_DTYPES = {
    torch.float64: "F64", torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16",
    torch.int64: "I64", torch.int32: "I32", torch.int16: "I16", torch.int8: "I8", torch.uint8: "U8",
    torch.bool: "BOOL", torch.float8_e4m3fn: "F8_E4M3", torch.float8_e5m2: "F8_E5M2",
}

#: One tensor to write: (name, dtype, shape, producer). The producer is called only when the tensor's
#: bytes are written, so a converter never holds more than one output tensor.
Entry = tuple[str, torch.dtype, tuple[int, ...], Callable[[], torch.Tensor]]


def _write_safetensors(path: Path, entries: list[Entry], metadata: Mapping[str, str] | None = None) -> None:
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
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        f.write(struct.pack("<Q", len(raw)))
        f.write(raw)
        for name, dtype, shape, produce in entries:
            tensor = produce().detach().to("cpu")
            if tensor.dtype != dtype or tuple(tensor.shape) != tuple(shape):
                raise CheckpointError(f"internal error: {name} is {tensor.dtype}{tuple(tensor.shape)}, "
                                      f"expected {dtype}{tuple(shape)}")
            if tensor.numel():
                f.write(memoryview(tensor.contiguous().reshape(-1).view(torch.uint8).numpy()))
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
    _write_safetensors(path, entries)
    return path


# ============================================================================ Hugging Face loading
def _load_safetensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    if not path.is_file():
        raise CheckpointError(f"{path}: file not found")
    try:
        return load_file(str(path), device="cpu")
    except Exception as exc:
        raise CheckpointError(f"{path}: cannot read safetensors file ({_short(exc)}); it is truncated or corrupt: "
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
        raise CheckpointError(f"{index_path}: not a valid shard index ({_short(exc)}); it needs a "
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


# ============================================================================ Megatron-LM: finding shards
_RANK_RE = re.compile(r"^mp_rank_(\d{2})$")
_PIPELINE_RANK_RE = re.compile(r"^mp_rank_\d{2}_\d{3}$")


def _safe_member(name: str) -> bool:
    posix = name.replace("\\", "/")
    return not (posix.startswith("/") or re.match(r"^[A-Za-z]:", posix) or ".." in PurePosixPath(posix).parts)


def _extract_zip(zip_path: Path, dest: Path, progress: Progress) -> Path:
    """Extract the checkpoint members (`*.pt`, the tracker file) of an NGC-style zip into `dest`.

    Every member name is checked first: an absolute path or a `..` component rejects the whole archive,
    and each target is verified to resolve inside `dest`, so nothing can be written outside it.
    """
    try:
        with zipfile.ZipFile(zip_path) as zf:
            infos = zf.infolist()
            unsafe = [i.filename for i in infos if not _safe_member(i.filename)]
            if unsafe:
                raise CheckpointError(
                    f"{zip_path}: refusing an archive with unsafe member paths ({', '.join(unsafe[:3])}): absolute "
                    "paths or '..' could write outside the extraction folder. Re-create the zip with relative "
                    "paths, or extract it yourself and pass the folder")
            wanted = [i for i in infos if not i.is_dir()
                      and (i.filename.endswith(".pt") or PurePosixPath(i.filename).name == TRACKER_NAME)]
            if not [i for i in wanted if i.filename.endswith(".pt")]:
                names = ", ".join(i.filename for i in infos[:5]) or "nothing"
                raise CheckpointError(
                    f"{zip_path}: no Megatron-LM checkpoint inside (no *.pt member; it holds {names}). Expected "
                    f"release/mp_rank_00/{MEGATRON_CHECKPOINT_NAME} as in the NGC megatron_bert_345m zips")
            root = dest.resolve()
            for info in wanted:
                target = (root / info.filename.replace("\\", "/")).resolve()
                if not target.is_relative_to(root):
                    raise CheckpointError(f"{zip_path}: member {info.filename!r} resolves outside the extraction "
                                          "folder; refusing the archive")
                _say(progress, f"extracting {info.filename} ({info.file_size / 2**20:.0f} MiB)")
                target.parent.mkdir(parents=True, exist_ok=True)
                with zf.open(info) as src, open(target, "wb") as out:
                    shutil.copyfileobj(src, out, 16 * 2**20)
    except CheckpointError:
        raise
    except (zipfile.BadZipFile, EOFError, OSError, ValueError, RuntimeError) as exc:
        raise CheckpointError(f"{zip_path}: cannot read the zip ({_short(exc)}); it is truncated or corrupt: "
                              "download it again") from None
    return dest


def _rank_files(folder: Path) -> list[Path]:
    """The `model_optim_rng.pt` of each tensor-parallel rank under `folder` (mp_rank_00 .. mp_rank_N-1)."""
    children = [p for p in folder.iterdir() if p.is_dir()]
    pipeline = sorted(p.name for p in children if _PIPELINE_RANK_RE.match(p.name))
    if pipeline:
        raise CheckpointError(
            f"{folder}: pipeline-parallel checkpoints ({pipeline[0]}, ...) are not supported; merge the pipeline "
            "stages first (Megatron-LM tools/checkpoint with --target-pipeline-parallel-size 1)")
    ranks = {int(m.group(1)): p for p in children if (m := _RANK_RE.match(p.name))}
    if not ranks:
        if (folder / MEGATRON_CHECKPOINT_NAME).is_file():
            return [folder / MEGATRON_CHECKPOINT_NAME]
        raise CheckpointError(f"{folder}: no mp_rank_XX folders and no {MEGATRON_CHECKPOINT_NAME}; this is not a "
                              "Megatron-LM checkpoint folder")
    missing = [f"mp_rank_{r:02d}" for r in range(max(ranks) + 1) if r not in ranks]
    if missing:
        raise CheckpointError(f"{folder}: tensor-parallel shards {', '.join(missing)} are missing (found "
                              f"{len(ranks)} of {max(ranks) + 1}); copy every mp_rank_XX folder")
    files = []
    for rank in range(len(ranks)):
        path = ranks[rank] / MEGATRON_CHECKPOINT_NAME
        if not path.is_file():
            pts = sorted(ranks[rank].glob("*.pt"))
            if len(pts) != 1:
                raise CheckpointError(f"{path}: missing; every mp_rank_XX folder needs its {MEGATRON_CHECKPOINT_NAME}")
            path = pts[0]
        files.append(path)
    return files


def _find_shards(folder: Path, progress: Progress, depth: int = 0) -> list[Path]:
    """Locate the shard files of a Megatron-LM checkpoint folder (see `convert_megatron` for layouts)."""
    tracker = folder / TRACKER_NAME
    if tracker.is_file():
        text = tracker.read_text(encoding="utf-8", errors="replace").strip()
        if text == "release":
            sub = folder / "release"
        elif text.isdigit():
            sub = folder / f"iter_{int(text):07d}"
        else:
            raise CheckpointError(f"{tracker}: expected an iteration number or 'release', got {text[:40]!r}; fix "
                                  "the file or pass the iter_XXXXXXX folder itself")
        if not sub.is_dir():
            raise CheckpointError(f"{tracker} points to {sub.name}, which is missing from {folder}; copy that "
                                  "folder or fix the tracker file")
        _say(progress, f"{TRACKER_NAME} -> {sub.name}")
        return _rank_files(sub)
    if (folder / "release").is_dir():
        return _rank_files(folder / "release")
    iters = sorted((p for p in folder.glob("iter_*") if p.is_dir() and p.name[5:].isdigit()),
                   key=lambda p: int(p.name[5:]))
    if iters:
        _say(progress, f"no {TRACKER_NAME}: using the latest iteration folder {iters[-1].name}")
        return _rank_files(iters[-1])
    if any(_RANK_RE.match(p.name) or _PIPELINE_RANK_RE.match(p.name) for p in folder.iterdir() if p.is_dir()):
        return _rank_files(folder)
    pts = sorted(p for p in folder.glob("*.pt") if p.is_file())
    if len(pts) == 1:
        return pts
    if len(pts) > 1:
        raise CheckpointError(f"{folder} holds several .pt files ({', '.join(p.name for p in pts[:4])}); pass the "
                              "one to convert")
    if (folder / SAFE_WEIGHTS_NAME).exists() or (folder / WEIGHTS_NAME).exists():
        raise CheckpointError(f"{folder} is already a Hugging Face folder; load it with from_pretrained, no "
                              "conversion needed")
    if any(folder.glob("*.distcp")) or (folder / ".metadata").exists():
        raise CheckpointError(f"{folder} is a torch_dist (distributed) checkpoint, which is not supported; save it "
                              "in the legacy 'torch' format with Megatron-LM first (--ckpt-format torch)")
    subdirs = [p for p in folder.iterdir() if p.is_dir() and not p.name.startswith((".", "__"))]
    if len(subdirs) == 1 and depth < 3:  # a zip's top folder, e.g. megatron_bert_345m_v0_1_cased/
        return _find_shards(subdirs[0], progress, depth + 1)
    raise CheckpointError(
        f"{folder}: no Megatron-LM checkpoint found. Expected release/mp_rank_XX/{MEGATRON_CHECKPOINT_NAME}, "
        f"{TRACKER_NAME} + iter_XXXXXXX/mp_rank_XX/, mp_rank_XX/ folders, or a single .pt file")


# ============================================================================ Megatron-LM: reading a shard
_LAYER_RE = re.compile(
    r"^layers\.(\d+)\.(input_layernorm|post_attention_layernorm|(?:self_)?attention\.query_key_value|"
    r"(?:self_)?attention\.dense|mlp\.dense_h_to_4h|mlp\.dense_4h_to_h)\.(weight|bias)$")
_LAYER_OPS = {
    "input_layernorm": "attention.ln", "post_attention_layernorm": "ln",
    "attention.query_key_value": "attention.self.qkv", "self_attention.query_key_value": "attention.self.qkv",
    "attention.dense": "attention.output.dense", "self_attention.dense": "attention.output.dense",
    "mlp.dense_h_to_4h": "intermediate.dense", "mlp.dense_4h_to_h": "output.dense",
}


class _Shard:
    """The model tensors of one tensor-parallel rank, keyed by Hugging Face name (fused QKV kept as
    `...attention.self.qkv.*`), plus `checkpoint_version`, `args` and the Megatron path of each tensor."""

    def __init__(self, path: Path, label: str, data: Any):
        self.path, self.label = path, label
        if not isinstance(data, Mapping):
            raise CheckpointError(f"{label}: holds a {type(data).__name__}, not a Megatron-LM checkpoint dict")
        self.has_version = "checkpoint_version" in data
        self.version = data.get("checkpoint_version", 0)
        self.args = data.get("args")
        self.tensors: dict[str, torch.Tensor] = {}
        self.origin: dict[str, str] = {}
        model = data.get("model")
        if model is None and "model0" in data:
            raise CheckpointError(f"{label}: virtual-pipeline checkpoints (model0, model1, ...) are not supported")
        if model is None and "module" in data:  # DeepSpeed-style wrapper of the same structure
            model = data["module"]
        if not isinstance(model, Mapping) or "language_model" not in model:
            keys = ", ".join(list(model)[:4]) if isinstance(model, Mapping) else type(model).__name__
            raise CheckpointError(
                f"{label}: no model.language_model in the checkpoint (found {keys}). This converter reads "
                "Megatron-LM's legacy BERT layout (model.language_model.embedding / encoder / pooler, lm_head, "
                "binary_head); Megatron-Core (decoder.layers...) checkpoints are not supported")
        lm = model["language_model"]
        emb = lm.get("embedding", {})
        for sub, hf in (("word_embeddings", "bert.embeddings.word_embeddings.weight"),
                        ("position_embeddings", "bert.embeddings.position_embeddings.weight"),
                        ("tokentype_embeddings", "bert.embeddings.token_type_embeddings.weight")):
            value = emb.get(sub, {}).get("weight") if isinstance(emb.get(sub), Mapping) else emb.get(f"{sub}.weight")
            self._put(hf, value, f"language_model.embedding.{sub}.weight")
        enc_name = "encoder" if "encoder" in lm else "transformer"
        self.encoder_name = enc_name
        self.attention_name = "attention"
        unknown = []
        for key, value in lm.get(enc_name, {}).items():
            if key.endswith("_extra_state"):
                continue
            where = f"language_model.{enc_name}.{key}"
            m = _LAYER_RE.match(key)
            if m:
                if m.group(2).startswith("self_attention"):
                    self.attention_name = "self_attention"
                self._put(f"bert.encoder.layer.{m.group(1)}.{_LAYER_OPS[m.group(2)]}.{m.group(3)}", value, where)
            elif key in ("final_layernorm.weight", "final_layernorm.bias"):
                self._put(f"bert.encoder.ln.{key.rsplit('.', 1)[1]}", value, where)
            else:
                unknown.append(where)
        if unknown:
            raise CheckpointError(
                f"{label}: unrecognised tensors {', '.join(unknown[:4])}{' ...' if len(unknown) > 4 else ''}. The "
                "model is not the standard Megatron-LM BERT (pre-LayerNorm, biased linears, learned positions); "
                "converting it would drop weights")
        groups = [(lm.get("pooler"), "language_model.pooler", {"dense.weight": "bert.pooler.dense.weight",
                                                                "dense.bias": "bert.pooler.dense.bias"}),
                  (model.get("lm_head"), "lm_head", {
                      "dense.weight": "cls.predictions.transform.dense.weight",
                      "dense.bias": "cls.predictions.transform.dense.bias",
                      "layernorm.weight": "cls.predictions.transform.LayerNorm.weight",
                      "layernorm.bias": "cls.predictions.transform.LayerNorm.bias",
                      "bias": "cls.predictions.bias"}),
                  (model.get("binary_head"), "binary_head", {"weight": "cls.seq_relationship.weight",
                                                             "bias": "cls.seq_relationship.bias"})]
        for group, prefix, names in groups:
            if isinstance(group, Mapping):
                for key, hf in names.items():
                    self._put(hf, group.get(key), f"{prefix}.{key}")

    def _put(self, name: str, value: Any, where: str) -> None:
        self.origin[name] = where
        if isinstance(value, torch.Tensor):
            self.tensors[name] = value


def _layer_keys(i: int) -> list[str]:
    p = f"bert.encoder.layer.{i}."
    return [p + s for s in ("attention.ln.weight", "attention.ln.bias", "attention.self.qkv.weight",
                            "attention.self.qkv.bias", "attention.output.dense.weight", "attention.output.dense.bias",
                            "ln.weight", "ln.bias", "intermediate.dense.weight", "intermediate.dense.bias",
                            "output.dense.weight", "output.dense.bias")]


_POOLER = ["bert.pooler.dense.weight", "bert.pooler.dense.bias"]
_LM_HEAD = ["cls.predictions.transform.dense.weight", "cls.predictions.transform.dense.bias",
            "cls.predictions.transform.LayerNorm.weight", "cls.predictions.transform.LayerNorm.bias",
            "cls.predictions.bias"]
_BINARY = ["cls.seq_relationship.weight", "cls.seq_relationship.bias"]


def _megatron_name(shard: _Shard, hf: str) -> str:
    """Megatron-LM path of an expected tensor, for messages about missing ones."""
    if hf in shard.origin:
        return shard.origin[hf]
    m = re.match(r"bert\.encoder\.layer\.(\d+)\.(.+)\.(weight|bias)$", hf)
    if m:
        op = {v: k for k, v in _LAYER_OPS.items() if not k.startswith(("self_attention", "attention"))}
        op.update({"attention.self.qkv": f"{shard.attention_name}.query_key_value",
                   "attention.output.dense": f"{shard.attention_name}.dense"})
        return f"language_model.{shard.encoder_name}.layers.{m.group(1)}.{op[m.group(2)]}.{m.group(3)}"
    return hf


# ============================================================================ Megatron-LM: config
def _arg(args: Any, *names: str, default: Any = None) -> Any:
    for name in names:
        value = getattr(args, name, None) if args is not None else None
        if value is not None:
            return value
    return default


def _activation(args: Any) -> tuple[str, str]:
    """Hugging Face `hidden_act` of the encoder MLP and the reason.

    Megatron-LM's fused bias-GELU kernel (`bias_gelu_fusion`, on by default) and `--openai-gelu` use the
    tanh approximation (`gelu_new`); the unfused default is exact erf GELU (`gelu`). Checkpoints without
    args predate both flags and trained with the tanh form.
    """
    if args is None:
        return "gelu_new", "no args in the checkpoint: assuming Megatron-LM's tanh GELU (gelu_new)"
    if _arg(args, "bias_gelu_fusion", "bias_activation_fusion"):
        return "gelu_new", "args.bias_gelu_fusion: tanh GELU (gelu_new)"
    if _arg(args, "openai_gelu"):
        return "gelu_new", "args.openai_gelu: tanh GELU (gelu_new)"
    if not hasattr(args, "openai_gelu") and not hasattr(args, "bias_gelu_fusion"):
        return "gelu_new", "args predate --openai-gelu: assuming tanh GELU (gelu_new)"
    return "gelu", "unfused GELU in args: exact erf GELU (gelu)"


def _check_supported(args: Any, label: str) -> None:
    """Refuse architectures that HF MegatronBERT cannot represent, instead of converting them wrongly."""
    if args is None:
        return
    problems = []
    for flag in ("swiglu", "squared_relu", "apply_residual_connection_post_layernorm", "group_query_attention",
                 "untie_embeddings_and_output_weights"):
        if _arg(args, flag):
            problems.append(f"{flag}=True")
    if _arg(args, "glu_activation"):
        problems.append(f"glu_activation={args.glu_activation!r}")
    if _arg(args, "normalization", default="LayerNorm") != "LayerNorm":
        problems.append(f"normalization={args.normalization!r}")
    pe = _arg(args, "position_embedding_type")
    if isinstance(pe, str) and pe != "learned_absolute" or isinstance(pe, PickledStub) and not (
            set(pe.args) <= {2, "learned_absolute", "absolute"}):  # Megatron-DeepSpeed: absolute = 2
        problems.append(f"position_embedding_type={pe!r}")
    if _arg(args, "add_bias_linear") is False:
        problems.append("add_bias_linear=False")
    if int(_arg(args, "pipeline_model_parallel_size", default=1)) > 1:
        problems.append(f"pipeline_model_parallel_size={args.pipeline_model_parallel_size} (merge the stages first)")
    if problems:
        raise CheckpointError(f"{label}: the checkpoint was trained with {', '.join(problems)}, which Hugging Face "
                              "MegatronBERT (pre-LN BERT, GELU, learned positions) cannot represent")


# ============================================================================ Megatron-LM: merging
def _merge_plan(shards: list[_Shard], config: dict[str, Any], layers: int, optional: list[str]) -> list[Entry]:
    """Entries (HF name, dtype, shape, producer) that merge the tensor-parallel shards lazily.

    Column-parallel tensors (QKV per head group, dense_h_to_4h, word embeddings and the LM bias by vocab
    rows) concatenate on dim 0, row-parallel weights (attention dense, dense_4h_to_h) on dim 1, the rest
    is replicated (taken from rank 0). Each shard's QKV is un-permuted with its own heads (np/N) first.
    """
    n = len(shards)
    heads, hidden, version = config["num_attention_heads"], config["hidden_size"], shards[0].version
    head_dim = hidden // heads
    cache: dict[str, torch.Tensor] = {}

    def take(name: str) -> list[torch.Tensor]:
        return [s.tensors.pop(name) for s in shards]  # drop references as we go

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
                raise CheckpointError(f"{_megatron_name(shards[0], name)} should be replicated but differs between "
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
    else:  # Megatron-LM BERT without binary head has no token types: zeros keep HF's forward identical
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
                    f"{_megatron_name(shards[0], fused)}: {rows[0]} rows over {n} shards, expected 3 x hidden_size "
                    f"= {3 * hidden} split evenly; the shards do not match the config (hidden_size, "
                    "tensor-parallel size)")
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
        if name == "cls.predictions.bias":
            vocab_parallel = shards[0].tensors[name].shape[0] * n == config["vocab_size"]
            add(name, 0 if vocab_parallel and n > 1 else None)
        else:
            add(name, None)
    return entries


def _check_shapes(entries: list[Entry], config: dict[str, Any], label: str) -> None:
    """Every merged tensor must have the shape the Hugging Face model built from `config` expects."""
    h, f, v = config["hidden_size"], config["intermediate_size"], config["vocab_size"]
    expected = {"bert.embeddings.word_embeddings.weight": (v, h),
                "bert.embeddings.position_embeddings.weight": (config["max_position_embeddings"], h),
                "bert.embeddings.token_type_embeddings.weight": (config["type_vocab_size"], h),
                "cls.predictions.bias": (v,), "cls.seq_relationship.weight": (2, h), "cls.seq_relationship.bias": (2,)}
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


def _build_config(shards: list[_Shard], layers: int, tp: int, heads: int | None,
                  progress: Progress) -> dict[str, Any]:
    """Model sizes from the pickled args when present, checked against (or inferred from) tensor shapes."""
    s0, args = shards[0], shards[0].args
    t = s0.tensors
    rows = sum(s.tensors["bert.embeddings.word_embeddings.weight"].shape[0] for s in shards)
    hidden = t["bert.embeddings.word_embeddings.weight"].shape[1]
    ffn_key = "bert.encoder.layer.0.intermediate.dense.weight"
    ffn = sum(s.tensors[ffn_key].shape[0] for s in shards) if layers else 4 * hidden
    positions = t["bert.embeddings.position_embeddings.weight"].shape[0]
    tt = t.get("bert.embeddings.token_type_embeddings.weight")
    checks = [("hidden_size", ("hidden_size",), hidden, "columns of the word embeddings"),
              ("num_hidden_layers", ("num_layers",), layers, "layers found"),
              ("intermediate_size", ("ffn_hidden_size",), ffn, "rows of mlp.dense_h_to_4h over all shards"),
              ("max_position_embeddings", ("max_position_embeddings",), positions, "rows of the position embeddings"),
              ("vocab_size", ("padded_vocab_size",), rows, "rows of the word embeddings over all shards")]
    for _, names, actual, what in checks:
        declared = _arg(args, *names)
        if declared is not None and int(declared) != int(actual):
            raise CheckpointError(
                f"{s0.label}: config/weight shape mismatch: args.{names[0]}={declared} but the checkpoint has "
                f"{actual} {what}. The args do not belong to these weights (or shards of different runs were mixed)")
    declared_heads = _arg(args, "num_attention_heads")
    if heads is not None and declared_heads is not None and int(heads) != int(declared_heads):
        raise CheckpointError(f"{s0.label}: num_attention_heads={heads} was given but args.num_attention_heads is "
                              f"{declared_heads}; drop the override")
    heads = heads or declared_heads
    if heads is None:
        heads = max(1, hidden // 64)
        _say(progress, f"no num_attention_heads in args: assuming head size 64 ({heads} heads); pass "
                       "num_attention_heads if that is wrong")
    heads = int(heads)
    if hidden % heads or heads % tp:
        raise CheckpointError(f"{s0.label}: num_attention_heads={heads} must divide hidden_size={hidden} and be a "
                              f"multiple of the tensor-parallel size {tp}; pass the right num_attention_heads")
    act, why = _activation(args)
    _say(progress, f"activation: {why}")
    eps = _arg(args, "layernorm_epsilon", "norm_epsilon", default=1e-5)
    return dict(vocab_size=int(rows), hidden_size=int(hidden), num_hidden_layers=int(layers),
                num_attention_heads=heads, intermediate_size=int(ffn), hidden_act=act,
                max_position_embeddings=int(positions), type_vocab_size=int(tt.shape[0]) if tt is not None else 2,
                layer_norm_eps=float(eps))


def _read_shards(files: list[Path], src: Path, allow_unsafe_pickle: bool, progress: Progress) -> list[_Shard]:
    shards = []
    for rank, path in enumerate(files):
        label = str(path) if path == src else "/".join(path.parts[-3:])
        _say(progress, f"reading {label} ({rank + 1}/{len(files)})")
        data = safe_torch_load(path, allow_unsafe_pickle=allow_unsafe_pickle, progress=progress)
        shard = _Shard(path, label, data)
        del data  # optimizer / RNG state are not needed: let them go now
        shards.append(shard)
    return shards


def _validate(shards: list[_Shard], progress: Progress) -> tuple[float, int, list[str]]:
    """Check version, shard count and completeness; returns (checkpoint_version, layers, optional keys)."""
    s0, n = shards[0], len(shards)
    versions = {float(s.version) for s in shards}
    if len(versions) > 1:
        raise CheckpointError(f"shards disagree on checkpoint_version ({sorted(versions)}); they come from "
                              "different checkpoints")
    version = float(s0.version)
    if version not in QKV_LAYOUTS:
        raise CheckpointError(
            f"{s0.label}: unknown checkpoint_version {s0.version!r}; supported: 0, 1.0, 2.0, 3.0 (QKV layouts "
            f"{', '.join(f'{k:g}: {v}' for k, v in QKV_LAYOUTS.items())}). Save the checkpoint with a Megatron-LM "
            "release that writes one of these")
    if not s0.has_version:
        _say(progress, "no checkpoint_version in the checkpoint: treating it as 0 (QKV layout [3, np, hn])")
    for s in shards:
        s.version = version
    declared = _arg(s0.args, "tensor_model_parallel_size", "model_parallel_size")
    if declared is not None and int(declared) != n:
        fix = (f"pass the folder holding all of mp_rank_00..mp_rank_{int(declared) - 1:02d} (not a single shard)"
               if n < int(declared) else "the folder mixes shards of different checkpoints")
        raise CheckpointError(
            f"{s0.label}: found {n} tensor-parallel shard(s) but args.tensor_model_parallel_size is {declared}; {fix}")
    _check_supported(s0.args, s0.label)
    indices = {int(m.group(1)) for k in s0.tensors if (m := re.match(r"bert\.encoder\.layer\.(\d+)\.", k))}
    layers = int(_arg(s0.args, "num_layers", default=max(indices, default=-1) + 1))
    if indices and max(indices) + 1 != layers:
        raise CheckpointError(f"{s0.label}: config/weight shape mismatch: args.num_layers={layers} but the checkpoint "
                              f"has layers 0..{max(indices)}; the args do not belong to these weights")
    required = ["bert.embeddings.word_embeddings.weight", "bert.embeddings.position_embeddings.weight",
                "bert.encoder.ln.weight", "bert.encoder.ln.bias"]
    for i in range(layers):
        required += _layer_keys(i)
    optional: list[str] = []
    for group in (_POOLER, _LM_HEAD, _BINARY):
        if any(k in s0.tensors or k in s0.origin for k in group):
            required += group
            optional += group
    missing = [_megatron_name(s, k) + (f" (in {s.label})" if n > 1 else "")
               for s in shards for k in required if k not in s.tensors]
    if missing:
        raise CheckpointError(
            f"{s0.label}: {len(missing)} tensors are missing: {', '.join(missing[:6])}"
            f"{' ...' if len(missing) > 6 else ''}. The checkpoint is incomplete or not a Megatron-LM BERT")
    return version, layers, optional


def _tokenizer(vocab: str | Path, lowercase: bool | None, args: Any, src: Path, progress: Progress) -> Any:
    from .tokenization import Tokenizer

    vocab = Path(vocab)
    if not vocab.is_file():
        raise CheckpointError(f"{vocab}: vocab file not found; pass the WordPiece vocab.txt of the model")
    kind = str(_arg(args, "tokenizer_type", default=""))
    inferred = True if "LowerCase" in kind else False if "Case" in kind else \
        True if "uncased" in src.name.lower() else False if "cased" in src.name.lower() else None
    if lowercase is None:
        if inferred is None:
            raise CheckpointError("cannot tell whether the vocab is cased: pass lowercase=True or False "
                                  "(CLI: --lowercase / --cased)")
        lowercase = inferred
        _say(progress, f"tokenizer: {'lower-casing' if lowercase else 'cased'} (from {kind or src.name})")
    elif inferred is not None and inferred != lowercase:
        _say(progress, f"warning: lowercase={lowercase} but the checkpoint says {kind or src.name}")
    return Tokenizer.from_vocab(vocab, lowercase=lowercase)


def convert_megatron(src: str | Path, dst: str | Path, *, vocab: str | Path | None = None,
                     lowercase: bool | None = None, allow_unsafe_pickle: bool = False, overwrite: bool = False,
                     num_attention_heads: int | None = None, progress: Progress = None) -> Path:
    """Convert a Megatron-LM BERT checkpoint into a Hugging Face MegatronBERT folder; returns `dst`.

    `src` may be an NGC zip (`release/mp_rank_00/model_optim_rng.pt` inside, possibly under a top
    folder, or a bare .pt), a release folder, a folder with `latest_checkpointed_iteration.txt` +
    `iter_XXXXXXX/`, a folder of `mp_rank_XX/` shards, or a single `.pt`. Tensor-parallel shards are
    merged; QKV is re-ordered by `checkpoint_version`; sizes, LayerNorm eps and GELU flavour come from
    the pickled args (shapes otherwise). Padded vocab rows are kept and the tokenizer's real size is
    recorded as `tokenizer_vocab_size`. The folder (config.json, model.safetensors, tokenizer files when
    `vocab` is given) is built beside `dst` and renamed into place only when complete. Weights keep the
    checkpoint's dtype (fp16 for NGC). `num_attention_heads` is needed only for checkpoints without
    args whose head size is not 64 (the head count cannot be read from tensor shapes).
    """
    src, dst = Path(src), Path(dst)
    if not src.exists():
        raise CheckpointError(f"{src}: not found; pass a Megatron-LM checkpoint (.zip, folder or .pt)")
    if dst.exists() and (not dst.is_dir() or any(dst.iterdir())) and not overwrite:
        raise FileExistsError(f"{dst} already exists and is not empty; choose another output folder or pass "
                              "overwrite=True (CLI: --overwrite)")
    src_abs, dst_abs = src.resolve(), dst.resolve()
    if src_abs == dst_abs or src_abs.is_relative_to(dst_abs):
        raise CheckpointError(f"{dst} contains the source checkpoint; choose an output folder outside {src}")
    new_parents = [p for p in (dst.parent, *dst.parent.parents) if not p.exists()]
    dst.parent.mkdir(parents=True, exist_ok=True)
    try:
        with tempfile.TemporaryDirectory(prefix=f".{dst.name}.extract-", dir=dst.parent) as work:
            _convert(src, dst, Path(work), vocab=vocab, lowercase=lowercase, allow_unsafe_pickle=allow_unsafe_pickle,
                     overwrite=overwrite, num_attention_heads=num_attention_heads, progress=progress)
    except BaseException:
        for parent in new_parents:  # leave no trace: remove the folders this call created
            try:
                parent.rmdir()
            except OSError:
                break
        raise
    _say(progress, f"wrote {dst}")
    return dst


def _convert(src: Path, dst: Path, work: Path, *, vocab: str | Path | None, lowercase: bool | None,
             allow_unsafe_pickle: bool, overwrite: bool, num_attention_heads: int | None, progress: Progress) -> None:
    """The body of `convert_megatron`; `work` is a scratch folder (zip extraction) beside `dst`."""
    if src.is_dir():
        files = _find_shards(src, progress)
    elif src.suffix.lower() == ".zip" or (src.suffix.lower() not in (".pt", ".pth", ".bin", ".ckpt")
                                           and zipfile.is_zipfile(src) and not _is_torch_archive(src)):
        files = _find_shards(_extract_zip(src, work, progress), progress)
    else:
        files = [src]
    shards = _read_shards(files, src, allow_unsafe_pickle, progress)
    version, layers, optional = _validate(shards, progress)
    config = _build_config(shards, layers, len(shards), num_attention_heads, progress)
    _say(progress, f"checkpoint_version {version}, {len(shards)} tensor-parallel shard(s), {layers} layers, "
                   f"hidden {config['hidden_size']}, {config['num_attention_heads']} heads, ffn "
                   f"{config['intermediate_size']}, {config['vocab_size']} vocab rows, "
                   f"eps {config['layer_norm_eps']:g}")
    tokenizer = None
    if vocab is not None:
        tokenizer = _tokenizer(vocab, lowercase, shards[0].args, src, progress)
        if tokenizer.vocab_size > config["vocab_size"]:
            raise CheckpointError(
                f"{vocab}: the vocab has {tokenizer.vocab_size} tokens but the checkpoint's embedding has only "
                f"{config['vocab_size']} rows; this vocab belongs to another model: pass the model's own vocab")
        config["tokenizer_vocab_size"] = tokenizer.vocab_size
    elif config["vocab_size"] in NGC_VOCAB_SIZES and config["hidden_size"] == 1024:
        config["tokenizer_vocab_size"] = NGC_VOCAB_SIZES[config["vocab_size"]]
        _say(progress, f"assuming the NGC BERT vocab ({config['tokenizer_vocab_size']} tokens); pass the vocab "
                       "file to record its exact size")
    has = set(optional)
    config["architectures"] = ["MegatronBertForPreTraining" if set(_LM_HEAD + _BINARY) <= has else
                               "MegatronBertForMaskedLM" if set(_LM_HEAD) <= has else "MegatronBertModel"]
    from .config import MegatronBertConfig

    hf_config = MegatronBertConfig(**config)
    entries = _merge_plan(shards, config, layers, optional)
    _check_shapes(entries, config, shards[0].label)
    with atomic_dir(dst, overwrite=overwrite) as tmp:
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        _say(progress, f"writing {SAFE_WEIGHTS_NAME} ({len(entries)} tensors)")
        _write_safetensors(tmp / SAFE_WEIGHTS_NAME, entries,
                           {"source": "megatron-lm", "checkpoint_version": f"{version:g}"})
        del shards, entries
        hf_config.save_pretrained(tmp)


def _is_torch_archive(path: Path) -> bool:
    """A zip-format torch.save file (has `*/data.pkl`), as opposed to an archive holding checkpoints."""
    try:
        with zipfile.ZipFile(path) as zf:
            names = zf.namelist()
    except (zipfile.BadZipFile, OSError):
        return False
    return any(n.endswith("/data.pkl") for n in names) and not any(n.endswith(".pt") for n in names)

