"""Atomic file writes: every artifact is written to a temp file beside its target, then renamed.

A crash or a bad input therefore never leaves a half-written file where a user expects a good one.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import Callable, Iterable, Iterator

#: Above this many weight bytes the tensors go to ONE external-data file beside the .onnx. Protobufs
#: stop at 2 GiB, and well below that a single-file save costs two extra in-memory copies of the
#: weights (measured on 345M: 4.4x the weight bytes at peak, 1.35x with external data), so the
#: limit is set to keep export memory under 2x the weights.
EXTERNAL_DATA_THRESHOLD = 512 * 1024**2
#: Protobuf's hard limit: above it a graph can only exist with external data (and ONNX's
#: in-memory shape inference cannot run on it).
PROTOBUF_LIMIT = 2 * 1024**3 - 64 * 1024**2


def _umask() -> int:
    """The process's umask, read without changing it where Linux shows it (os.umask can only swap)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _as_created(path: Path, mode: int) -> None:
    """Give a mkstemp/mkdtemp path (0600/0700) the mode a plain open/mkdir would: the output is for
    other users too (a Triton container, a model-serving account), not only its writer. Best effort:
    some file systems (CIFS, vfat) take no modes."""
    try:
        os.chmod(path, mode & ~_umask())
    except OSError:
        pass


@contextlib.contextmanager
def atomic_path(target: str | Path) -> Iterator[Path]:
    """Yield a temp path in the target's folder; rename it onto `target` only if the block succeeds."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    _as_created(tmp_path, 0o666)
    try:
        yield tmp_path
        os.replace(tmp_path, target)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def atomic_write_text(target: str | Path, text: str) -> None:
    with atomic_path(target) as tmp:
        tmp.write_text(text, encoding="utf-8")


def atomic_write_bytes(target: str | Path, data: bytes) -> None:
    with atomic_path(target) as tmp:
        tmp.write_bytes(data)


def write_report(path: str | Path, data: dict, markdown: str) -> Path:
    """A report as `path` (JSON; numpy numbers as floats) and the same path with `.md` (its table), each atomic."""
    import json

    path = Path(path)
    atomic_write_text(path, json.dumps(data, indent=1, default=float) + "\n")
    atomic_write_text(path.with_suffix(".md"), markdown)
    return path


def make_writable_dir(folder: str | Path, option: str = "output folder") -> None:
    """Create `folder` (with its parents) and write a probe file in it: an unwritable place fails here,
    with its reason and what to do, not later as a bare errno on a temp name."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        handle, probe = tempfile.mkstemp(prefix=".write-test-", dir=folder)
        os.close(handle)
        os.unlink(probe)
    except OSError as exc:
        raise PermissionError(f"cannot write to {folder}: {exc.strerror or exc}; choose a writable {option}") from None


def check_output_dir(target: str | Path, overwrite: bool = False, inputs: Iterable[str | Path] = (),
                     ours: Callable[[Path], bool] | None = None,
                     flag: str = "overwrite=True (CLI: --overwrite)") -> None:
    """Refuse an output folder `atomic_dir` must not write; call it before long work to fail early.

    Refused: a file; a folder that is or holds one of `inputs` (even with `overwrite`); a non-empty
    folder without `overwrite` (`flag` names the option that allows it); and, when `ours` tells a
    folder this tool wrote, a non-empty folder it does not recognise, even with `overwrite` (it is
    someone else's folder, and replacing it would delete their files).
    """
    target = Path(target)
    for source in inputs:
        source = Path(source).resolve()
        if source == target.resolve() or target.resolve() in source.parents:
            relation = "is" if source == target.resolve() else "holds"
            raise ValueError(f"the output folder {target} {relation} {source}, which this reads from: writing "
                             "there would destroy it; choose another output folder")
    if target.exists() and not target.is_dir():
        raise FileExistsError(f"{target} is a file, not a folder; choose another output folder")
    blocked = next((p for p in target.parents if p.exists() and not p.is_dir()), None)
    if blocked is not None:
        raise FileExistsError(f"cannot create {target}: {blocked} is a file, not a folder")
    held = sorted(p.name for p in target.iterdir()) if target.is_dir() else []
    if not held:
        return
    if ours is not None and not ours(target):
        shown = ", ".join(held[:5]) + (", ..." if len(held) > 5 else "")
        raise FileExistsError(f"{target} holds files this did not write ({shown}); replacing it would delete them: "
                              "choose another output folder")
    if not overwrite:
        raise FileExistsError(f"{target} already exists and is not empty; choose another output folder or pass "
                              f"{flag}")


@contextlib.contextmanager
def atomic_dir(target: str | Path, overwrite: bool = False, inputs: Iterable[str | Path] = (),
               ours: Callable[[Path], bool] | None = None) -> Iterator[Path]:
    """Yield a temp folder beside `target`; it becomes `target` only if the block succeeds.

    An existing non-empty `target` is refused unless `overwrite` (then it is replaced as a whole); see
    `check_output_dir` for what is refused always.
    """
    target = Path(target)
    check_output_dir(target, overwrite, inputs, ours)
    make_writable_dir(target.parent)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
    _as_created(tmp, 0o777)
    try:
        yield tmp
        if target.exists():
            old = target.with_name(f".{target.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(target, old)
            os.replace(tmp, target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def staging_dir(parent: Path) -> Path:
    """A temp folder beside an output, so the final rename stays on one file system."""
    parent.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=".mbert-export-", dir=parent))


def publish_onnx(staged: Path, output: Path) -> Path | None:
    """Rename a checked graph (and its `<name>.data` file) from a staging folder into place, data first.

    Returns the external-data path when there is one.
    """
    staged_data = staged.with_name(staged.name + ".data")
    data = output.with_name(output.name + ".data")
    if staged_data.exists():
        os.replace(staged_data, data)
        os.replace(staged, output)
        return data
    os.replace(staged, output)
    if data.exists():  # left over from an earlier, bigger graph
        data.unlink()
    return None
