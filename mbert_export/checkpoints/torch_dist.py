"""Megatron-Core `torch_dist` checkpoints, read without Megatron or a process group.

An `iter_XXXXXXX/` folder holds `.metadata` (a pickled `torch.distributed.checkpoint` index),
`*.distcp` data files, `metadata.json` and, up to megatron-core 0.18, `common.pt`; from 0.19 the common
state (args, iteration, ...) is a byte item `common_state` inside the `.distcp` files. Tensors are
global (tensor/pipeline parallelism already merged on disk); per-layer ones are stacked on a leading
`num_layers` axis. Reading goes through `torch.distributed.checkpoint.load` (no process group) with the
index and the byte items unpickled by the safe unpickler, one stacked tensor at a time.
"""

from __future__ import annotations

import io
import warnings
from pathlib import Path
from typing import Any

import torch

from .errors import CheckpointError, Progress, say, short
from .layout import DIST_METADATA
from .mcore import LAYER_NAMES, MCORE_QKV_VERSION, TOP_NAMES, mcore_name, unknown_error
from .merge import LazyTensor, Shard
from .unpickle import load_dcp_metadata, safe_torch_load, safe_torch_load_bytes

COMMON_PT = "common.pt"
_IGNORED = ("optimizer.", "rng_state", "rerun_state_machine_state", "common_state", "opt_param_scheduler")


class DistReader:
    """Reads tensors and byte items of one torch_dist folder, checking the files against `.metadata`."""

    def __init__(self, folder: Path, allow_unsafe_pickle: bool, progress: Progress):
        self.folder, self.allow_unsafe_pickle, self.progress = folder, allow_unsafe_pickle, progress
        index = folder / DIST_METADATA
        if not index.is_file():
            raise CheckpointError(f"{folder}: {DIST_METADATA} is missing; a torch_dist checkpoint needs its index "
                                  "file next to the *.distcp files: copy the whole iter_XXXXXXX folder")
        self.metadata = load_dcp_metadata(index)
        self._check_files()

    def _check_files(self) -> None:
        """Every data file the index names exists and is long enough; no data file is left unnamed."""
        ends: dict[str, int] = {}
        for info in (self.metadata.storage_data or {}).values():
            path = getattr(info, "relative_path", None)
            if not isinstance(path, str) or "/" in path or "\\" in path or path.startswith("."):
                raise CheckpointError(f"{self.folder / DIST_METADATA}: names data file {path!r}, which is not a "
                                      "plain file name in the folder; the index is corrupt")
            ends[path] = max(ends.get(path, 0), int(info.offset) + int(info.length))
        if not ends:
            raise CheckpointError(f"{self.folder / DIST_METADATA}: the index names no data files; it is corrupt")
        missing = sorted(p for p in ends if not (self.folder / p).is_file())
        if missing:
            raise CheckpointError(
                f"{self.folder}: data file(s) {', '.join(missing[:4])} named in {DIST_METADATA} are missing (found "
                f"{len(ends) - len(missing)} of {len(ends)}); copy every *.distcp file of the checkpoint")
        extra = sorted(p.name for p in self.folder.glob("*.distcp") if p.name not in ends)
        if extra:
            raise CheckpointError(
                f"{self.folder}: {', '.join(extra[:4])} are not named in {DIST_METADATA}: the index does not match its "
                "*.distcp files (mixed saves?); copy the folder of one save")
        for name, end in sorted(ends.items()):
            size = (self.folder / name).stat().st_size
            if size < end:
                raise CheckpointError(
                    f"{self.folder / name}: the file is {size} bytes but {DIST_METADATA} places data up to byte {end}; "
                    "it is truncated (interrupted copy?) or the index belongs to another save: copy the folder again")

    def keys(self) -> dict[str, Any]:
        return dict(self.metadata.state_dict_metadata)

    def _load(self, state: dict[str, Any], what: str) -> dict[str, Any]:
        from torch.distributed.checkpoint import FileSystemReader, load
        from torch.distributed.checkpoint.api import CheckpointException
        from torch.distributed.checkpoint.default_planner import DefaultLoadPlanner

        metadata, owner = self.metadata, self

        class Reader(FileSystemReader):
            def read_metadata(self, *args: Any, **kwargs: Any) -> Any:
                return metadata

        class Planner(DefaultLoadPlanner):
            def load_bytes(self, read_item: Any, value: io.BytesIO) -> None:
                fqn = read_item.dest_index.fqn
                self.state_dict[fqn] = safe_torch_load_bytes(
                    value, f"{owner.folder} ({fqn})", owner.allow_unsafe_pickle, progress=owner.progress)

        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # "torch.distributed is ... uninitialized": as intended
                planner = Planner()
                load(state, storage_reader=Reader(str(self.folder)), planner=planner, no_dist=True)
        except CheckpointError:
            raise
        except (Exception, CheckpointException) as exc:
            cause: BaseException = exc
            for failure in getattr(exc, "failures", {}).values():  # dcp wraps per-rank errors
                cause = failure[0] if isinstance(failure, tuple) else failure
            if isinstance(cause, CheckpointError):
                raise cause from None
            raise CheckpointError(
                f"{self.folder}: cannot read {what} ({type(cause).__name__}: {short(cause)}); the *.distcp files are "
                f"corrupt or do not match {DIST_METADATA}: copy the checkpoint folder again") from None
        return planner.state_dict  # byte items land in the planner's (flattened) copy

    def tensor(self, key: str) -> torch.Tensor:
        md = self.metadata.state_dict_metadata[key]
        out = torch.empty(tuple(md.size), dtype=md.properties.dtype)
        return self._load({key: out}, key)[key]

    def common_state(self) -> dict[str, Any]:
        """Args & co: `common.pt` (megatron-core <= 0.18) or the `common_state` byte item (>= 0.19)."""
        if (self.folder / COMMON_PT).is_file():
            data = safe_torch_load(self.folder / COMMON_PT, self.allow_unsafe_pickle, progress=self.progress)
        else:
            keys = [k for k in self.metadata.state_dict_metadata if k.split("/")[0] == "common_state"]
            if not keys:
                raise CheckpointError(f"{self.folder}: no {COMMON_PT} and no common_state item in {DIST_METADATA}; "
                                      "the training args are missing: copy the whole iter_XXXXXXX folder")
            data = self._load({keys[0]: io.BytesIO()}, "the common state")[keys[0]]
            if isinstance(data, list) and len(data) == 1:  # a ShardedObject of global shape (1,)
                data = data[0]
        if not isinstance(data, dict):
            raise CheckpointError(f"{self.folder}: the common state is a {type(data).__name__}, not a dict")
        return data


def dist_shard(folder: Path, label: str, allow_unsafe_pickle: bool, progress: Progress) -> tuple[Shard, dict]:
    """The whole model of a torch_dist folder as one `Shard` of lazy tensors (plus the common state)."""
    reader = DistReader(folder, allow_unsafe_pickle, progress)
    common = reader.common_state()
    say(progress, f"torch_dist: {len(list(folder.glob('*.distcp')))} data file(s), common state "
                  f"{'common.pt' if (folder / COMMON_PT).is_file() else 'in .distcp'}")
    shard = Shard(label, common.get("args"), MCORE_QKV_VERSION, kind="mcore")
    shard.describe = lambda hf: mcore_name(hf, stacked=True)
    from torch.distributed.checkpoint.metadata import TensorStorageMetadata

    unknown = []
    for key, md in reader.keys().items():
        if not isinstance(md, TensorStorageMetadata):
            continue  # byte items: _extra_state, rng / rerun state, common state
        if key.startswith(_IGNORED) or key.endswith("_extra_state"):
            continue
        if key.startswith("encoder.layers.") and key[len("encoder.layers."):] in LAYER_NAMES:
            hf = LAYER_NAMES[key[len("encoder.layers."):]]
            stack = _Stack(reader, key, tuple(md.size), md.properties.dtype)
            for i in range(stack.layers):
                shard.put(f"bert.encoder.layer.{i}.{hf}", stack.layer(i), f"{key}[{i}]")
        elif key in TOP_NAMES:
            shard.put(TOP_NAMES[key], LazyTensor(md.properties.dtype, tuple(md.size),
                                                 lambda key=key: reader.tensor(key)), key)
        else:
            unknown.append(key)
    if unknown:
        raise unknown_error(label, unknown)
    return shard, common


class _Stack:
    """A stacked `[num_layers, ...]` tensor handed out layer by layer; read once, freed after the last."""

    def __init__(self, reader: DistReader, key: str, shape: tuple[int, ...], dtype: torch.dtype):
        self.reader, self.key, self.shape, self.dtype = reader, key, shape, dtype
        self.layers = shape[0] if shape else 0
        self.pending: set[int] = set(range(self.layers))
        self.value: torch.Tensor | None = None

    def layer(self, i: int) -> LazyTensor:
        return LazyTensor(self.dtype, self.shape[1:], lambda: self._take(i))

    def _take(self, i: int) -> torch.Tensor:
        if self.value is None:
            self.value = self.reader.tensor(self.key)
        out = self.value[i].clone()
        self.pending.discard(i)
        if not self.pending:
            self.value = None
        return out
