"""Where a Megatron checkpoint's files are: NGC zips, tracker files, iteration / release folders, the
`mp_rank_XX[_YYY]` grid of tensor x pipeline-parallel shards, or a torch_dist folder.

Megatron-LM and Megatron-Core write the same folder structure for the `torch` format; `find_checkpoint`
returns either the shard grid (`Grid`) or the torch_dist folder (`DistFolder`).
"""

from __future__ import annotations

import re
import shutil
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from .errors import CheckpointError, Progress, say, short
from .hf import MEGATRON_CHECKPOINT_NAME, SAFE_WEIGHTS_NAME, TRACKER_NAME, WEIGHTS_NAME

DIST_METADATA = ".metadata"


@dataclass
class Grid:
    """`files[tp][pp]`: the `model_optim_rng.pt` of each tensor-parallel rank and pipeline stage."""

    files: list[list[Path]]


@dataclass
class DistFolder:
    """An `iter_XXXXXXX` folder of a torch_dist checkpoint (`.metadata` + `*.distcp`)."""

    folder: Path


_RANK_RE = re.compile(r"^mp_rank_(\d{2})$")
_PIPELINE_RANK_RE = re.compile(r"^mp_rank_(\d{2})_(\d{3})$")


def _safe_member(name: str) -> bool:
    posix = name.replace("\\", "/")
    return not (posix.startswith("/") or re.match(r"^[A-Za-z]:", posix) or ".." in PurePosixPath(posix).parts)


def extract_zip(zip_path: Path, dest: Path, progress: Progress) -> Path:
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
                say(progress, f"extracting {info.filename} ({info.file_size / 2**20:.0f} MiB)")
                target.parent.mkdir(parents=True, exist_ok=True)
                with zf.open(info) as src, open(target, "wb") as out:
                    shutil.copyfileobj(src, out, 16 * 2**20)
    except CheckpointError:
        raise
    except (zipfile.BadZipFile, EOFError, OSError, ValueError, RuntimeError) as exc:
        raise CheckpointError(f"{zip_path}: cannot read the zip ({short(exc)}); it is truncated or corrupt: "
                              "download it again") from None
    return dest


def _is_dist(folder: Path) -> bool:
    return (folder / DIST_METADATA).is_file() or any(folder.glob("*.distcp"))


def _rank_grid(folder: Path) -> Grid | DistFolder:
    """The shard grid under `folder` (mp_rank_00.. or mp_rank_00_000..), or `folder` if it is torch_dist."""
    if _is_dist(folder):
        return DistFolder(folder)
    children = [p for p in folder.iterdir() if p.is_dir()]
    ranks = {(int(m.group(1)), 0): p for p in children if (m := _RANK_RE.match(p.name))}
    staged = {(int(m.group(1)), int(m.group(2))): p for p in children if (m := _PIPELINE_RANK_RE.match(p.name))}
    if ranks and staged:
        raise CheckpointError(f"{folder} mixes mp_rank_XX and mp_rank_XX_YYY folders; they come from different "
                              "checkpoints: keep one of them")
    ranks = ranks or staged
    if not ranks:
        if (folder / MEGATRON_CHECKPOINT_NAME).is_file():
            return Grid([[folder / MEGATRON_CHECKPOINT_NAME]])
        raise CheckpointError(f"{folder}: no mp_rank_XX folders, no {MEGATRON_CHECKPOINT_NAME} and no torch_dist "
                              f"files ({DIST_METADATA}, *.distcp); this is not a Megatron checkpoint folder")
    tp, pp = max(t for t, _ in ranks) + 1, max(p for _, p in ranks) + 1
    name = (lambda t, p: f"mp_rank_{t:02d}_{p:03d}") if staged else (lambda t, p: f"mp_rank_{t:02d}")
    missing = [name(t, p) for t in range(tp) for p in range(pp) if (t, p) not in ranks]
    if missing:
        raise CheckpointError(f"{folder}: shards {', '.join(missing)} are missing (found {len(ranks)} of {tp * pp}: "
                              f"{tp} tensor-parallel x {pp} pipeline-parallel); copy every mp_rank folder")
    files: list[list[Path]] = []
    for t in range(tp):
        files.append([])
        for p in range(pp):
            path = ranks[(t, p)] / MEGATRON_CHECKPOINT_NAME
            if not path.is_file():
                pts = sorted(ranks[(t, p)].glob("*.pt"))
                if len(pts) != 1:
                    raise CheckpointError(f"{path}: missing; every mp_rank folder needs its {MEGATRON_CHECKPOINT_NAME}")
                path = pts[0]
            files[t].append(path)
    return Grid(files)


def find_checkpoint(folder: Path, progress: Progress, depth: int = 0) -> Grid | DistFolder:
    """Locate the shard files (or torch_dist folder) of a Megatron checkpoint folder."""
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
        say(progress, f"{TRACKER_NAME} -> {sub.name}")
        return _rank_grid(sub)
    if _is_dist(folder):
        return DistFolder(folder)
    if (folder / "release").is_dir():
        return _rank_grid(folder / "release")
    iters = sorted((p for p in folder.glob("iter_*") if p.is_dir() and p.name[5:].isdigit()),
                   key=lambda p: int(p.name[5:]))
    if iters:
        say(progress, f"no {TRACKER_NAME}: using the latest iteration folder {iters[-1].name}")
        return _rank_grid(iters[-1])
    if any(_RANK_RE.match(p.name) or _PIPELINE_RANK_RE.match(p.name) for p in folder.iterdir() if p.is_dir()):
        return _rank_grid(folder)
    pts = sorted(p for p in folder.glob("*.pt") if p.is_file())
    if len(pts) == 1:
        return Grid([pts])
    if len(pts) > 1:
        raise CheckpointError(f"{folder} holds several .pt files ({', '.join(p.name for p in pts[:4])}); pass the "
                              "one to convert")
    if (folder / SAFE_WEIGHTS_NAME).exists() or (folder / WEIGHTS_NAME).exists():
        raise CheckpointError(f"{folder} is already a Hugging Face folder; load it with from_pretrained, no "
                              "conversion needed")
    subdirs = [p for p in folder.iterdir() if p.is_dir() and not p.name.startswith((".", "__"))]
    if len(subdirs) == 1 and depth < 3:  # a zip's top folder, e.g. megatron_bert_345m_v0_1_cased/
        return find_checkpoint(subdirs[0], progress, depth + 1)
    if len(subdirs) > 1:
        names = ", ".join(sorted(p.name + "/" for p in subdirs)[:6])
        raise CheckpointError(f"{folder} holds several folders ({names}) and no checkpoint of its own: pass the one "
                              "checkpoint folder to convert (for a zip: extract it first)")
    raise CheckpointError(
        f"{folder}: no Megatron checkpoint found. Expected release/mp_rank_XX/{MEGATRON_CHECKPOINT_NAME}, "
        f"{TRACKER_NAME} + iter_XXXXXXX/ (mp_rank_XX[_YYY]/ folders or torch_dist files), mp_rank_XX/ folders, "
        "or a single .pt file")


def is_torch_archive(path: Path) -> bool:
    """A zip-format torch.save file (has `*/data.pkl`), as opposed to an archive holding checkpoints."""
    try:
        with zipfile.ZipFile(path) as zf:
            names = zf.namelist()
    except (zipfile.BadZipFile, OSError):
        return False
    return any(n.endswith("/data.pkl") for n in names) and not any(n.endswith(".pt") for n in names)
