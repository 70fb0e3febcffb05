"""The safe unpickler: the one allow-list of what a checkpoint pickle may contain.

Megatron-LM / Megatron-Core pickle training `args` (`argparse.Namespace` holding enums of Megatron and
`signal.Signals`), numpy RNG state and tensors; torch_dist checkpoints add a pickled `.metadata`
index and pickled "byte items" (the common state). Everything goes through here:

- `safe_torch_load` / `safe_torch_load_bytes`: `torch.load(weights_only=True)` with the allow-list
  below; enums of Megatron / Transformer Engine and `signal.Signals` become inert `PickledStub`s.
- `load_dcp_metadata`: the `.metadata` of a torch_dist checkpoint, read with a restricted
  `pickle.Unpickler` that only builds the data classes of `torch.distributed.checkpoint` (PyTorch's own
  `FileSystemReader.read_metadata` uses plain `pickle.load`).

Anything else is refused with a `CheckpointError` naming the class, unless the caller opts in.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import pathlib
import pickle
import re
from pathlib import Path
from typing import Any, BinaryIO, Iterator

import torch

from .errors import CheckpointError, Progress, corrupt_message, say, short


class PickledStub:
    """Stand-in for an enum-like class of Megatron-LM / Transformer Engine that is not installed.

    Such values sit in the pickled training `args` (e.g. `megatron.model.enums.PositionEmbeddingType`,
    `signal.Signals` for `exit_signal`). The stub only records the name and the constructor arguments /
    state: no foreign code runs.
    """

    qualname = "?"

    def __init__(self, *args: Any) -> None:
        self.args = args
        self.state: Any = None

    def __setstate__(self, state: Any) -> None:
        self.state = state

    def __repr__(self) -> str:
        return f"<{self.qualname}{self.args!r}>"


#: Globals replaced by `PickledStub`: enum modules of Megatron-LM / Megatron-Core, the rerun-state-machine
#: enums of Megatron-Core's common state, dtype / format enums of Transformer Engine, and `signal.Signals`
#: (args.exit_signal of current Megatron-LM).
STUB_RE = re.compile(r"^(?:(megatron|transformer_engine|transformer_engine_torch)(\.\w+)*\.(enums\.\w+|DType|Format|"
                     r"rerun_state_machine\.Rerun(Mode|Diagnostic|State|ValidationStatus))|signal\.Signals)$")
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
    """Data-only classes Megatron checkpoints pickle besides tensors: the training `args`
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


#: Modules of `torch.distributed.checkpoint` whose classes a `.metadata` pickle may build.
_DCP_MODULES = ("torch.distributed.checkpoint.metadata", "torch.distributed.checkpoint.planner",
                "torch.distributed.checkpoint.filesystem", "torch.distributed.checkpoint._extension")
_DCP_OTHER = {("torch", "Size"), ("torch.serialization", "_get_layout"), ("collections", "OrderedDict"),
              ("builtins", "set"), ("builtins", "frozenset"), ("pathlib", "PosixPath"),
              ("pathlib", "PurePosixPath")}


def is_torch_zip(path: Path) -> bool:
    with open(path, "rb") as f:
        return f.read(4) == b"PK\x03\x04"


def safe_torch_load(path: str | Path, allow_unsafe_pickle: bool = False, *, progress: Progress = None) -> Any:
    """`torch.load` that never runs code from the file unless `allow_unsafe_pickle=True`.

    Uses `weights_only=True`, `map_location="cpu"` and `mmap=True` for zip-format files (the tensors stay
    on disk until touched). Allowed besides tensors: `argparse.Namespace`, numpy arrays/dtypes/scalars,
    and stubs (`PickledStub`) for Megatron / Transformer Engine enums and `signal.Signals`, so
    checkpoints load without Megatron installed. Any other class raises `CheckpointError` naming it and
    the opt-in.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: file not found; check the path")
    if path.stat().st_size == 0:
        raise CheckpointError(f"{path}: the file is empty (interrupted download or copy?); fetch it again")
    return _load(path, str(path), is_torch_zip(path), allow_unsafe_pickle, progress)


def safe_torch_load_bytes(data: BinaryIO, label: str, allow_unsafe_pickle: bool = False, *,
                          progress: Progress = None) -> Any:
    """`safe_torch_load` for an in-memory `torch.save` payload (a byte item of a torch_dist checkpoint)."""
    return _load(data, label, False, allow_unsafe_pickle, progress)


def _load(source: Path | BinaryIO, label: str, mmap: bool, allow_unsafe_pickle: bool, progress: Progress) -> Any:
    stubs: list[Any] = []
    while True:
        if not isinstance(source, Path):
            source.seek(0)
        try:
            with _allowing(_allowed_globals() + stubs):
                return torch.load(source, map_location="cpu", weights_only=True, mmap=mmap)
        except pickle.UnpicklingError as exc:
            text = str(exc)
            match = _GLOBAL_RE.search(text)
            if match and STUB_RE.match(match.group(1)) and len(stubs) < 64:
                stubs.append(_stub_for(match.group(1)))
                continue
            untrusted = match is not None or "reduce for unrecognized function" in text or "Can only build" in text \
                or "Can only create new object" in text
            if not untrusted:
                raise CheckpointError(corrupt_message(label, exc)) from None
            culprit = match.group(1) if match else short(text.split("WeightsUnpickler error:")[-1])
            if not allow_unsafe_pickle:
                raise CheckpointError(
                    f"{label}: the pickle needs {culprit}, which is not on the allow-list of data-only classes "
                    "(tensors, argparse.Namespace, numpy arrays, Megatron enums). Unpickling it could run "
                    "arbitrary code. Only if you trust the file, opt in with allow_unsafe_pickle=True "
                    "(CLI: --trust-remote-pickle).") from None
            say(progress, f"warning: {label} needs {culprit}; unpickling with arbitrary code execution "
                          "because allow_unsafe_pickle=True")
            return _unsafe_load(source, label, mmap)
        except CheckpointError:
            raise
        except Exception as exc:  # truncated zip, bad magic number, EOF, ...
            raise CheckpointError(corrupt_message(label, exc)) from None


def _unsafe_load(source: Path | BinaryIO, label: str, mmap: bool) -> Any:
    if not isinstance(source, Path):
        source.seek(0)
    try:
        return torch.load(source, map_location="cpu", weights_only=False, mmap=mmap)  # noqa: unsafe-load
    except ModuleNotFoundError as exc:
        raise CheckpointError(f"{label}: the pickle imports module {exc.name!r}, which is not installed; install "
                              "it (e.g. put Megatron-LM on PYTHONPATH) to load this file") from None
    except Exception as exc:
        raise CheckpointError(corrupt_message(label, exc)) from None


class _RefusedGlobal(pickle.UnpicklingError):
    """The pickle names a global outside the allow-list (as opposed to being corrupt)."""


class _MetadataUnpickler(pickle.Unpickler):
    """Builds only the data classes of `torch.distributed.checkpoint` (and torch sizes / dtypes)."""

    def find_class(self, module: str, name: str) -> Any:
        if module in _DCP_MODULES and "." not in name:
            import importlib

            obj = getattr(importlib.import_module(module), name, None)
            if isinstance(obj, type):
                return obj
        if module == "torch" and isinstance(getattr(torch, name, None), (torch.dtype, torch.layout,
                                                                          torch.memory_format)):
            return getattr(torch, name)
        if (module, name) in _DCP_OTHER:
            return {"Size": torch.Size, "_get_layout": torch.serialization._get_layout,
                    "OrderedDict": collections.OrderedDict, "set": set, "frozenset": frozenset,
                    "PosixPath": pathlib.PosixPath, "PurePosixPath": pathlib.PurePosixPath}[name]
        raise _RefusedGlobal(f"{module}.{name}")


def load_dcp_metadata(path: Path) -> Any:
    """The `torch.distributed.checkpoint.metadata.Metadata` in a torch_dist `.metadata` file, safely."""
    import torch.distributed.checkpoint  # noqa: F401  (registers the classes the pickle names)

    try:
        with open(path, "rb") as f:
            metadata = _MetadataUnpickler(f).load()
    except _RefusedGlobal as exc:
        raise CheckpointError(
            f"{path}: the torch_dist index pickle needs {short(exc)}, which is not a data class of "
            "torch.distributed.checkpoint; refusing to unpickle it (it could run arbitrary code)") from None
    except Exception as exc:
        raise CheckpointError(f"{path}: cannot read the torch_dist index ({type(exc).__name__}: {short(exc)}); "
                              "the file is truncated or corrupt: copy the checkpoint folder again") from None
    from torch.distributed.checkpoint.metadata import Metadata

    if not isinstance(metadata, Metadata):
        raise CheckpointError(f"{path}: holds a {type(metadata).__name__}, not torch.distributed.checkpoint "
                              "Metadata; this is not a torch_dist checkpoint index")
    return metadata

