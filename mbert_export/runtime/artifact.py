"""What an exported artifact is: graph or engine, task, precision, labels, vocabulary, limits, tokenizer.

An artifact is either a `.onnx` file, a TensorRT engine file (`.plan` / `.engine`) with a `build.json`
beside it, or a build folder holding some of `model.onnx`, `engine.plan`, `build.json`, the tokenizer
files and `reference.npz`. The task and the rest come from the graph's `metadata_props`
(`mbert_export.*`, written by the exporter) and from the `build.json` sidecar of an engine build.

Torch-free and onnx-free: the ONNX metadata is read with a small protobuf reader that seeks past the
graph, so a multi-GB model costs a few reads.
"""

from __future__ import annotations

import contextlib
import json
import numbers
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from ..tasks import TASKS, Task

__all__ = ["Artifact", "ArtifactError", "open_artifact", "read_onnx_metadata", "read_sidecar", "sidecar_path",
           "ONNX_FILE", "ENGINE_FILE", "SIDECAR_FILE", "REFERENCE_FILE", "RUNTIME_BACKENDS", "built_backend"]

ONNX_FILE = "model.onnx"
ENGINE_FILE = "engine.plan"
SIDECAR_FILE = "build.json"
REFERENCE_FILE = "reference.npz"
ENGINE_SUFFIXES = (".plan", ".engine", ".trt")
#: Either file is enough for `Tokenizer.from_pretrained` (tokenizer.json is preferred).
TOKENIZER_MAIN_FILES = ("tokenizer.json", "vocab.txt")
#: The tokenizer files an artifact carries beside its graph (copied from the checkpoint at export).
TOKENIZER_FILES = (*TOKENIZER_MAIN_FILES, "tokenizer_config.json", "special_tokens_map.json")
PREFIX = "mbert_export."
#: The runtimes an artifact runs on: OrtMegatronBert, TRTMegatronBert, OvMegatronBert.
RUNTIME_BACKENDS = ("onnxruntime", "tensorrt", "openvino")


class ArtifactError(ValueError):
    """An artifact that cannot be served (missing files, no metadata, mismatched tokenizer)."""


class MissingFileError(ArtifactError):
    """A folder without the file a backend runs (model.onnx for ONNX Runtime, an engine for TensorRT)."""


# ---------------------------------------------------------------------------- ONNX metadata
def _varint(f) -> int:
    result, shift = 0, 0
    while True:
        byte = f.read(1)
        if not byte:
            raise EOFError
        result |= (byte[0] & 0x7F) << shift
        if not byte[0] & 0x80:
            return result
        shift += 7
        if shift > 63:
            raise ValueError("varint too long")


def _string_entry(data: bytes) -> tuple[str, str]:
    """An ONNX StringStringEntryProto: field 1 key, field 2 value."""
    import io

    f, values = io.BytesIO(data), {1: "", 2: ""}
    while f.tell() < len(data):
        tag = _varint(f)
        if tag & 7 != 2:
            raise ValueError("unexpected wire type in metadata entry")
        n = _varint(f)
        values[tag >> 3] = f.read(n).decode("utf-8")
    return values[1], values[2]


def _fields(f, end: int) -> Iterator[tuple[int, int]]:
    """(field number, length) of each field of the protobuf message from f's position to `end`; f is at
    a length-delimited field's bytes when it is yielded (length -1 for the others, already skipped) and
    is moved past them afterwards, whether the caller read them or not."""
    while f.tell() < end:
        tag = _varint(f)
        number, wire = tag >> 3, tag & 7
        if wire == 0:
            _varint(f)
        elif wire == 1:
            f.seek(8, 1)
        elif wire == 5:
            f.seek(4, 1)
        elif wire != 2:
            raise ValueError(f"wire type {wire}")
        if wire != 2:
            yield number, -1
        else:
            n = _varint(f)
            start = f.tell()
            yield number, n
            f.seek(start + n)
        if f.tell() > end:
            raise EOFError


@contextlib.contextmanager
def _model_file(path: Path) -> Iterator[tuple[Any, int]]:
    """An ONNX file opened for `_fields`, with its size; what goes wrong reading it is an ArtifactError."""
    try:
        with open(path, "rb") as f:
            yield f, os.fstat(f.fileno()).st_size
    except OSError as exc:
        raise ArtifactError(f"cannot read {path}: {exc.strerror or exc}") from None
    except (EOFError, ValueError, UnicodeDecodeError):
        raise ArtifactError(f"{path} is not a valid ONNX model file (truncated or another format)") from None


def read_onnx_metadata(path: str | os.PathLike) -> dict[str, str]:
    """The `metadata_props` of an ONNX model file, without loading the graph or the weights."""
    path = Path(path)
    props: dict[str, str] = {}
    seen: set[int] = set()
    with _model_file(path) as (f, size):
        for number, n in _fields(f, size):
            seen.add(number)
            if number == 14:  # ModelProto.metadata_props
                key, value = _string_entry(f.read(n))
                props[key] = value
    if 7 not in seen:  # ModelProto.graph
        raise ArtifactError(f"{path} is not an ONNX model (no graph in it)")
    return props


def external_data_locations(path: str | os.PathLike) -> list[str]:
    """The files (relative to the graph) its initializers keep their data in, from the graph file alone:
    ModelProto.graph (7) -> GraphProto.initializer (5) -> TensorProto.external_data (13) entries keyed
    "location". Read by hand, like the metadata, because the runtime does not need the onnx package;
    weights stored in the graph file are skipped over, not read."""
    locations: dict[str, None] = {}
    with _model_file(Path(path)) as (f, size):
        for number, n in _fields(f, size):
            if number != 7:
                continue
            for field, m in _fields(f, f.tell() + n):
                if field != 5:
                    continue
                for entry, k in _fields(f, f.tell() + m):
                    if entry == 13:
                        key, value = _string_entry(f.read(k))
                        if key == "location":
                            locations[value] = None
    return list(locations)


# ---------------------------------------------------------------------------- the artifact
@dataclass
class Artifact:
    """Everything a runtime needs to know about one exported model, read from its files."""

    path: Path
    folder: Path
    onnx_path: Path | None
    engine_path: Path | None
    sidecar: dict[str, Any]
    metadata: dict[str, str]
    task: Task
    precision: str
    config: dict[str, Any]
    id2label: dict[int, str]
    #: Embedding rows (the model's padded vocabulary).
    vocab_size: int
    #: Rows that are real tokens; logits beyond this are Megatron-LM padding, never predicted.
    real_vocab_size: int
    max_position_embeddings: int
    #: Longest sequence the artifact was exported / built for, when recorded (None: positions only).
    max_seq_len: int | None
    max_batch: int | None
    tokenizer_files: list[Path] = field(default_factory=list)

    @property
    def name(self) -> str:
        return str(self.path)

    @property
    def reference_path(self) -> Path:
        return self.folder / REFERENCE_FILE

    @property
    def problem_type(self) -> str | None:
        return self.config.get("problem_type")

    @property
    def type_vocab_size(self) -> int:
        """Segment types the model embeds (token_type_ids lie below it); BERT's default is 2."""
        return int(self.config.get("type_vocab_size") or 2)

    @property
    def pad_token_id(self) -> int:
        return int(self.config.get("pad_token_id") or 0)

    def has_tokenizer(self) -> bool:
        return any(p.name in TOKENIZER_MAIN_FILES for p in self.tokenizer_files)

    def load_tokenizer(self):
        """The `Tokenizer` shipped with the artifact, or None when there is none."""
        if not self.has_tokenizer():
            return None
        from ..tokenization import Tokenizer

        return Tokenizer.from_pretrained(self.folder)

    def check_tokenizer(self, tokenizer) -> None:
        """Refuse a tokenizer with ids the model has no (real) embedding rows for."""
        size = tokenizer.vocab_size
        if size > self.vocab_size:
            raise ArtifactError(
                f"the tokenizer has {size} tokens but the model in {self.name} has only {self.vocab_size} "
                "embedding rows: this tokenizer belongs to another model (ship the checkpoint's own "
                "tokenizer files next to the graph, or pass tokenizer=...)")
        if size > self.real_vocab_size:
            raise ArtifactError(
                f"the tokenizer has {size} tokens but the model in {self.name} has {self.real_vocab_size} "
                f"real tokens (the other {self.vocab_size - self.real_vocab_size} embedding rows are padding): "
                "the tokenizer does not match the model")

    def describe(self) -> str:
        parts = [f"task {self.task.name}", f"precision {self.precision}"]
        if self.real_vocab_size != self.vocab_size:
            parts.append(f"vocab {self.real_vocab_size} (+{self.vocab_size - self.real_vocab_size} padding rows)")
        if self.max_seq_len:
            parts.append(f"max sequence {self.max_seq_len}")
        return f"{self.name}: " + ", ".join(parts)


def read_sidecar(path: Path) -> dict[str, Any]:
    """An artifact's build.json as a dict; ArtifactError (one line) when it is unreadable or not a JSON object."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ArtifactError(f"cannot read {path}: {exc.strerror or exc}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ArtifactError(f"{path} is not valid JSON ({exc}); is the build folder complete?") from None
    if not isinstance(data, dict):
        raise ArtifactError(f"{path} must hold a JSON object, got {type(data).__name__}")
    return data


def built_backend(sidecar: dict[str, Any], has_engine: bool | None = None) -> str:
    """The runtime an artifact was built and checked for: TensorRT for an engine, else build.json's
    "backend" (an OpenVINO build runs on OpenVINO), else ONNX Runtime.

    has_engine: whether the engine file is at hand (None: as build.json says). Without it a TensorRT
    build's graph runs on ONNX Runtime."""
    if has_engine is None:
        has_engine = bool(sidecar.get("engine"))
    if has_engine:
        return "tensorrt"
    backend = sidecar.get("backend")
    return backend if backend in RUNTIME_BACKENDS and backend != "tensorrt" else "onnxruntime"


#: Largest size a recorded limit may have (Triton's and TensorRT's dims are 32-bit).
MAX_DIM = 2**31 - 1


def is_int_between(value: Any, low: int, high: int) -> bool:
    """An int (not a bool, which Python counts as one) from `low` to `high`."""
    return isinstance(value, int) and not isinstance(value, bool) and low <= value <= high


def positive_int(value: Any, name: str) -> int:
    """`value` as an int >= 1 (numpy integers too); bools, floats and strings are a ValueError naming `name`."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def _int_or_none(value: Any, what: str, where: Path) -> int | None:
    if value is None or value == "":
        return None
    try:
        if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
            raise ValueError
        number = int(value)
    except (TypeError, ValueError):
        raise ArtifactError(f"{where}: {what} must be an integer, got {value!r}") from None
    if not 0 < number <= MAX_DIM:
        raise ArtifactError(f"{where}: {what} must be between 1 and {MAX_DIM}, got {number}")
    return number


def sidecar_path(path: str | os.PathLike) -> Path:
    """Where the build.json of the artifact at `path` (a build folder, or a graph or engine in one) is."""
    path = Path(path)
    return (path if path.is_dir() else path.parent) / SIDECAR_FILE


def _locate(path: Path, want: str) -> tuple[Path, Path | None, Path | None, Path | None]:
    """(folder, onnx, engine, sidecar) for a user-given path; `want` is "onnx" or "engine"."""
    if not path.exists():
        raise ArtifactError(f"{path} does not exist; pass a .onnx file, an engine file or a build folder")
    sidecar = sidecar_path(path)
    folder = sidecar.parent
    if path.is_dir():
        onnx_path = folder / ONNX_FILE if (folder / ONNX_FILE).is_file() else None
        engine_path = folder / ENGINE_FILE if (folder / ENGINE_FILE).is_file() else None
        if engine_path is None:
            engines = sorted(p for p in folder.iterdir() if p.suffix in ENGINE_SUFFIXES and p.is_file())
            engine_path = engines[0] if len(engines) == 1 else None
    elif path.suffix == ".onnx":
        onnx_path, engine_path = path, None
    elif path.suffix in ENGINE_SUFFIXES:
        onnx_path, engine_path = None, path
        if (folder / ONNX_FILE).is_file():
            onnx_path = folder / ONNX_FILE
    else:
        raise ArtifactError(f"{path} is neither a .onnx graph, an engine ({', '.join(ENGINE_SUFFIXES)}) "
                            "nor a build folder")
    sidecar = sidecar if sidecar.is_file() else None
    if want == "onnx" and onnx_path is None:
        present = ", ".join(sorted(p.name for p in folder.iterdir())) or "nothing"
        raise MissingFileError(f"{path} has no {ONNX_FILE} (found: {present}); ONNX Runtime needs the exported "
                            "graph (mbert-export export --output FOLDER/model.onnx)")
    if want == "engine":
        if engine_path is None:
            present = ", ".join(sorted(p.name for p in folder.iterdir())) or "nothing"
            raise MissingFileError(f"{path} has no TensorRT engine ({ENGINE_FILE}; found: {present}); build one "
                                "with the engine builder, or run the graph with OrtMegatronBert")
        if sidecar is None:
            raise ArtifactError(f"{folder} has no {SIDECAR_FILE} beside {engine_path.name}: without it the "
                                "TensorRT version, GPU and task of the engine are unknown; rebuild the engine "
                                "with the engine builder (it writes build.json)")
    return folder, onnx_path, engine_path, sidecar


def _check_sidecar_types(sidecar: dict[str, Any], where: Path | None) -> None:
    """Refuse a build.json whose structured entries have the wrong shape (say which and what it holds)."""
    for key in ("openvino", "metadata"):
        if key in sidecar and not isinstance(sidecar[key], dict):
            raise ArtifactError(f"{where}: {key!r} must be a JSON object, got {sidecar[key]!r}; rebuild the artifact")
    profiles = sidecar.get("profiles")
    if profiles is None:
        return
    for profile in profiles if isinstance(profiles, list) else [profiles]:
        axes = [profile.get(axis) for axis in ("batch", "sequence", "num_choices")
                if axis in profile] if isinstance(profile, dict) else [None]
        if not all(isinstance(v, list) and len(v) == 3 and all(is_int_between(n, 1, MAX_DIM) for n in v)
                   for v in axes):
            raise ArtifactError(f"{where}: 'profiles' must be a list of objects mapping each axis (batch, sequence, "
                                f"num_choices) to [min, opt, max] positive integers, got {profiles!r}; rebuild the "
                                "artifact")


def open_artifact(path: str | os.PathLike, want: str = "onnx") -> Artifact:
    """Read the artifact at `path` for a backend that wants an "onnx" graph or an "engine"."""
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"the artifact is a folder (or model.onnx / engine.plan) path, got {type(path).__name__}")
    path = Path(path)
    folder, onnx_path, engine_path, sidecar_path = _locate(path, want)
    sidecar = read_sidecar(sidecar_path) if sidecar_path else {}

    metadata: dict[str, str] = {}
    if onnx_path is not None:
        metadata.update(read_onnx_metadata(onnx_path))
    graph_task, graph_precision = metadata.get(PREFIX + "task"), metadata.get(PREFIX + "precision")
    if isinstance(sidecar.get("metadata"), dict):
        metadata.update({str(k): str(v) for k, v in sidecar["metadata"].items()})
    where = onnx_path or sidecar_path or path

    _check_sidecar_types(sidecar, sidecar_path)
    task_name = sidecar.get("task") or metadata.get(PREFIX + "task")
    if not isinstance(task_name, (str, type(None))):
        raise ArtifactError(f"{sidecar_path if sidecar.get('task') else where}: task must be a task name, "
                            f"got {task_name!r}")
    if not task_name:
        raise ArtifactError(f"{where} does not say which task it was exported for (no {PREFIX}task metadata): "
                            "export it with mbert-export export, which records the task")
    if task_name not in TASKS:
        raise ArtifactError(f"{where} was exported for an unknown task {task_name!r}; "
                            f"this runtime knows: {', '.join(TASKS)}")
    if graph_task and sidecar.get("task") and graph_task != sidecar["task"]:
        raise ArtifactError(f"{sidecar_path} says task {sidecar['task']!r} but the graph {onnx_path} was exported for "
                            f"{graph_task!r}; rebuild the artifact (or restore its build.json)")
    if graph_precision and sidecar.get("precision") and graph_precision != sidecar["precision"]:
        raise ArtifactError(f"{sidecar_path} says precision {sidecar['precision']!r} but the graph {onnx_path} is "
                            f"{graph_precision!r} (was another build's model.onnx copied in?); rebuild the artifact")
    task = TASKS[task_name]
    precision = str(sidecar.get("precision") or metadata.get(PREFIX + "precision") or "fp32")

    config: dict[str, Any] = {}
    if metadata.get(PREFIX + "config"):
        try:
            config = json.loads(metadata[PREFIX + "config"])
        except json.JSONDecodeError:
            raise ArtifactError(f"{where}: the {PREFIX}config metadata is not valid JSON") from None
        if not isinstance(config, dict):
            raise ArtifactError(f"{where}: the {PREFIX}config metadata must be a JSON object, got "
                                f"{type(config).__name__}")
    id2label_raw = config.get("id2label") or {}
    if metadata.get(PREFIX + "id2label"):
        try:
            id2label_raw = json.loads(metadata[PREFIX + "id2label"])
        except json.JSONDecodeError:
            raise ArtifactError(f"{where}: the {PREFIX}id2label metadata is not valid JSON") from None
    try:
        id2label = {int(k): str(v) for k, v in id2label_raw.items()}
    except (AttributeError, ValueError):
        raise ArtifactError(f"{where}: id2label must map integer ids to names, got {id2label_raw!r}") from None

    vocab_size = _int_or_none(config.get("vocab_size"), "vocab_size", where)
    real = _int_or_none(metadata.get(PREFIX + "real_vocab_size") or config.get("tokenizer_vocab_size"),
                        "real_vocab_size", where)
    if vocab_size is None and real is None:
        raise ArtifactError(f"{where} has no model config ({PREFIX}config / {PREFIX}real_vocab_size metadata); "
                            "export it with mbert-export export")
    vocab_size = vocab_size or real
    real = real or vocab_size
    if real > vocab_size:
        raise ArtifactError(f"{where}: real_vocab_size {real} is larger than vocab_size {vocab_size}")
    positions = _int_or_none(config.get("max_position_embeddings"), "max_position_embeddings", where) or 512
    limits = {}
    for key in ("max_seq_len", "max_batch"):  # build.json's, else the graph's metadata
        source = sidecar_path if sidecar.get(key) else where
        limits[key] = _int_or_none(sidecar.get(key) or metadata.get(PREFIX + key), key, source)
    max_seq, max_batch = limits["max_seq_len"], limits["max_batch"]

    tokenizer_files = [folder / name for name in TOKENIZER_FILES if (folder / name).is_file()]
    return Artifact(path=path, folder=folder, onnx_path=onnx_path, engine_path=engine_path, sidecar=sidecar,
                    metadata=metadata, task=task, precision=precision, config=config, id2label=id2label,
                    vocab_size=vocab_size, real_vocab_size=real, max_position_embeddings=positions,
                    max_seq_len=max_seq, max_batch=max_batch, tokenizer_files=tokenizer_files)
