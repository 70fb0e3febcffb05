"""Write a Triton model repository for one or more artifacts (layout "python" or "ensemble").

    write_repository(["engines/mlm-int8"], "repo", layout="python")

- python: one python-backend model NAME running this project's runtime on the artifact (ONNX
  Runtime or OpenVINO on CPU, TensorRT for an engine); runs on any tritonserver with the python backend.
- ensemble: NAME_tokenize (python) -> NAME_model (`onnxruntime_onnx` / `tensorrt_plan`) ->
  NAME_postprocess (python), tied by the ensemble NAME, for NVIDIA's tritonserver container.

Both take TEXT (...) and return RESULT (see `interface`). `max_batch_size`, dims and data types come
from the artifact (build.json, the graph's inputs and outputs). The repository holds everything its
python models import (a copy of this package's torch-free part, the tokenizer files, the task table
and label maps); it is written to a temp folder and renamed into place.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from ..fileio import atomic_dir
from ..runtime.artifact import (ENGINE_FILE, MAX_DIM, RUNTIME_BACKENDS, Artifact, ArtifactError, MissingFileError,
                                built_backend, external_data_locations, is_int_between, open_artifact)
from ..runtime.pipeline import DEFAULT_MAX_BATCH
from ..tasks import Task
from .interface import RESULT, task_defaults, task_inputs
from .triton_models import ARTIFACT_DIR, ARTIFACT_INFO, artifact_info

__all__ = ["write_repository", "read_repository", "client_models", "ModelEntry", "graph_io", "LAYOUTS",
           "ENSEMBLE_METHODS"]

LAYOUTS = ("python", "ensemble")
#: The ensemble tokenize step pads token ids to a multiple of this by default (see write_repository).
DEFAULT_SEQUENCE_BUCKET = 16
#: Methods whose rows map one text to one graph row (an ensemble step cannot change the row count;
#: question answering splits long contexts into several windows, multiple choice has a 3-D input).
ENSEMBLE_METHODS = ("fill_mask", "next_token", "classify", "classify_tokens", "next_sentence", "embed")
#: Model instances when not given: on CPU two instances that split the cores (each runs one batch while
#: the other waits on I/O; demo MLM, 2 cores, 8 clients: 729 requests/s against 476 for one instance
#: over both cores), one per GPU.
DEFAULT_INSTANCES = {"KIND_CPU": 2, "KIND_GPU": 1}
#: ONNX element types -> Triton data types.
TRITON_TYPES = {"tensor(int64)": "TYPE_INT64", "tensor(int32)": "TYPE_INT32", "tensor(float)": "TYPE_FP32",
                "tensor(float16)": "TYPE_FP16", "tensor(bfloat16)": "TYPE_BF16", "tensor(bool)": "TYPE_BOOL"}
_ONNX_ELEM = {7: "tensor(int64)", 6: "tensor(int32)", 1: "tensor(float)", 10: "tensor(float16)",
              16: "tensor(bfloat16)", 9: "tensor(bool)"}
#: Files of this package a python model imports (torch-free), copied into each python model.
PACKAGE_FILES = ("__init__.py", "tasks.py", "tokenization.py", "fileio.py", "runtime/**/*.py",
                 "serving/__init__.py", "serving/interface.py", "serving/triton_models.py")
SHIM = '''"""Triton python-backend entry point written by mbert-export ({layout} layout)."""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from mbert_export.serving.triton_models import {cls} as TritonPythonModel  # noqa: E402,F401
'''


@dataclass
class ModelEntry:
    """One model written to the repository: its name, Triton platform/backend and config text."""

    name: str
    kind: str
    config: str
    files: list[str] = field(default_factory=list)
    #: python layout: the runtime its model runs (onnxruntime, openvino or tensorrt).
    runtime: str = ""

    def describe(self) -> str:
        """e.g. "python running openvino" or "onnxruntime_onnx"."""
        return self.kind + (f" running {self.runtime}" if self.runtime else "")


def read_repository(folder: str | os.PathLike) -> list[ModelEntry]:
    """The models of a repository folder (one sub-folder with a config.pbtxt each), as write_repository
    describes them; [] when `folder` holds none. Read from the configs' text: `serve` only names them."""
    entries = []
    for config_path in sorted(Path(folder).glob("*/config.pbtxt")):
        text = config_path.read_text(errors="replace")
        kind = re.search(r'^\s*(?:backend|platform)\s*:\s*"([^"]+)"', text, re.MULTILINE)
        runtime = re.search(r'key\s*:\s*"backend"\s*value\s*\{\s*string_value\s*:\s*"([^"]+)"', text)
        entries.append(ModelEntry(config_path.parent.name, kind[1] if kind else "unknown", text,
                                  runtime=runtime[1] if runtime and kind and kind[1] == "python" else ""))
    return entries


def client_models(entries: Sequence[ModelEntry]) -> list[ModelEntry]:
    """The models clients call: all but the steps of an ensemble (NAME_tokenize, NAME_model, ...)."""
    steps = {name for entry in entries if entry.kind == "ensemble"
             for name in re.findall(r'model_name\s*:\s*"([^"]+)"', entry.config)}
    return [e for e in entries if e.name not in steps]


# ---------------------------------------------------------------------------- graph inputs/outputs
def graph_io(onnx_path: Path) -> tuple[list[tuple[str, str, list]], list[tuple[str, str, list]]]:
    """(inputs, outputs) of an ONNX graph: (name, "tensor(float)"-style type, shape with names for
    dynamic axes). Reads with `onnx` (no weights) when installed, else with ONNX Runtime."""
    try:
        import onnx
    except ImportError:
        onnx = None
    if onnx is not None:
        from google.protobuf.message import DecodeError

        try:
            model = onnx.load(str(onnx_path), load_external_data=False)
        except (DecodeError, ValueError, OSError) as exc:
            raise ArtifactError(f"{onnx_path} cannot be read as an ONNX graph ({type(exc).__name__}: {exc}); "
                                "export the artifact again") from None

        def describe(values):
            return [(v.name, _ONNX_ELEM.get(v.type.tensor_type.elem_type, str(v.type.tensor_type.elem_type)),
                     [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim]) for v in values]

        initializers = {i.name for i in model.graph.initializer}
        return describe([i for i in model.graph.input if i.name not in initializers]), describe(model.graph.output)
    from ..runtime.onnxruntime import create_session

    session = create_session(onnx_path)
    return ([(i.name, i.type, list(i.shape)) for i in session.get_inputs()],
            [(o.name, o.type, list(o.shape)) for o in session.get_outputs()])


# ---------------------------------------------------------------------------- config text
def _q(text: str) -> str:
    return json.dumps(text)


def _tensor(name: str, dtype: str, dims: Sequence[int], optional: bool = False) -> str:
    extra = " optional: true" if optional else ""
    return f"  {{ name: {_q(name)} data_type: {dtype} dims: [ {', '.join(str(d) for d in dims)} ]{extra} }}"


def _tensors(kind: str, items: list[str]) -> str:
    return f"{kind} [\n" + ",\n".join(items) + "\n]\n"


def _parameters(params: dict[str, str]) -> str:
    return "".join(f"parameters {{ key: {_q(k)} value {{ string_value: {_q(v)} }} }}\n" for k, v in params.items())


def _scheduling(max_batch: int, instances: int | None, kind: str, dynamic: bool, delay_us: int,
                preferred: Sequence[int]) -> str:
    count = instances or DEFAULT_INSTANCES[kind]
    text = f"instance_group [ {{ count: {count} kind: {kind} }} ]\n"
    if dynamic:
        sizes = sorted(set(preferred))
        if sizes and sizes[-1] > max_batch:
            raise ValueError(f"preferred batch size {sizes[-1]} exceeds max_batch_size {max_batch} of this "
                             "artifact (build.json's max_batch or profiles, else the runtime's default); give "
                             "sizes up to it")
        listed = f" preferred_batch_size: [ {', '.join(map(str, sizes))} ]" if sizes else ""
        text += f"dynamic_batching {{{listed} max_queue_delay_microseconds: {delay_us} }}\n"
    return text


def _dims(shape: list, name: str) -> list[int]:
    """Config dims of a graph tensor: the batch axis dropped, named (dynamic) axes -1."""
    if not shape:
        raise ArtifactError(f"graph tensor {name} has no batch axis")
    return [d if isinstance(d, int) and d > 0 else -1 for d in shape[1:]]


# ---------------------------------------------------------------------------- files
def _link_or_copy(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def _bundle_package(version_dir: Path) -> None:
    root = Path(__file__).resolve().parent.parent
    for pattern in PACKAGE_FILES:
        for src in sorted(root.glob(pattern)):
            if "__pycache__" not in src.parts:
                target = version_dir / "mbert_export" / src.relative_to(root)
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(src, target)


def _python_model(folder: Path, cls: str, layout: str, config: str) -> None:
    version = folder / "1"
    version.mkdir(parents=True)
    (folder / "config.pbtxt").write_text(config, encoding="utf-8")
    (version / "model.py").write_text(SHIM.format(layout=layout, cls=cls), encoding="utf-8")
    _bundle_package(version)


def _graph_data(artifact: Artifact) -> dict[Path, str]:
    """The files the graph keeps weights in (whatever their names) -> their path as the graph names them."""
    if artifact.onnx_path is None:
        return {}
    folder, data = artifact.onnx_path.parent, {}
    for location in external_data_locations(artifact.onnx_path):
        if not (folder / location).is_file():
            raise MissingFileError(f"{artifact.onnx_path} keeps weights in {location}, which is not in {folder}; "
                                   "copy the whole artifact folder, or re-export it")
        data[folder / location] = location
    return data


def _artifact_files(artifact: Artifact) -> dict[Path, str]:
    """Every file a runtime needs -> its path inside the artifact copy (external data keeps the place the
    graph names)."""
    files = {p: p.name for p in (artifact.onnx_path, artifact.engine_path) if p is not None}
    files.update(_graph_data(artifact))
    sidecar = artifact.folder / "build.json"
    files.update({sidecar: sidecar.name} if sidecar.is_file() else {})
    return files | {p: p.name for p in artifact.tokenizer_files}


# ---------------------------------------------------------------------------- the models
def _open(path: str | os.PathLike) -> Artifact:
    """The artifact at `path`: its graph, else (an engine-only folder) its engine."""
    path = Path(path)
    try:
        return open_artifact(path, "onnx")
    except ArtifactError as graph_error:
        folder = path if path.is_dir() else path.parent
        if path.suffix == ".onnx" or (folder / "model.onnx").exists():
            raise  # what is wrong with the graph or build.json, not "no engine"
        try:
            return open_artifact(path, "engine")
        except MissingFileError:  # neither a graph nor an engine
            raise MissingFileError(f"{folder} has neither model.onnx nor engine.plan; pass an artifact folder that "
                                   "`mbert-export build` or `export` wrote") from None


def _default_name(artifact: Artifact) -> str:
    base = artifact.path.name if artifact.path.is_dir() else artifact.folder.name
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", base).strip("._-") or "model"


#: Longest model name: a folder name (255 bytes on common file systems) with room for "_postprocess".
MAX_NAME_LENGTH = 200


def _check_name(name: str) -> str:
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", name or ""):
        raise ValueError(f"model name {name!r} must start with a letter or digit and hold only letters, digits, "
                         "'_', '-' and '.'")
    if len(name) > MAX_NAME_LENGTH:
        raise ValueError(f"model name {name[:20]}... is {len(name)} characters long; use at most {MAX_NAME_LENGTH}")
    return name


def is_repository(folder: Path) -> bool:
    """Whether `folder` looks like a model repository (every entry a model folder with a config.pbtxt),
    i.e. one `--overwrite` may replace."""
    entries = [e for e in folder.iterdir() if not e.name.startswith(".")]
    return bool(entries) and all((e / "config.pbtxt").is_file() for e in entries)


def _max_batch(artifact: Artifact) -> int:
    profiles = artifact.sidecar.get("profiles") or []
    batches = [int(p["batch"][2]) for p in profiles if isinstance(p, dict) and p.get("batch")]
    return artifact.max_batch or (max(batches) if batches else DEFAULT_MAX_BATCH)


def _text_inputs(task: Task, ensemble: bool) -> list[str]:
    inputs = task_inputs(task)
    if ensemble:
        methods = [m for m in task.methods if m in ENSEMBLE_METHODS]
        if not methods:
            raise ValueError(f"task {task.name!r} cannot be served as an ensemble: "
                             + ("question answering splits long contexts into a varying number of windows per "
                                "question" if task.name == "question-answering" else
                                "its graph input has a choices axis") + "; use --layout python")
    # Optional inputs (TEXT_PAIR of classify) stay optional through an ensemble too: Triton passes an
    # ensemble input a request left out on as missing to the steps, whose inputs are optional as well.
    return [_tensor(n, "TYPE_STRING", [1], optional=not required) for n, required in inputs.items()]


def _model_backend(artifact: Artifact, backend: str, ensemble: bool) -> str:
    """The runtime of the model that runs the graph: "auto" resolved (the python layout follows the
    build; the ensemble's middle model is tensorrt_plan or onnxruntime_onnx), and checked."""
    if backend == "auto":
        backend = built_backend(artifact.sidecar, has_engine=artifact.engine_path is not None)
        if ensemble and backend == "openvino":
            backend = "onnxruntime"
    elif ensemble and backend == "openvino":
        raise ValueError("the ensemble's middle model runs the graph on Triton's onnxruntime_onnx or tensorrt_plan; "
                         "for OpenVINO use --layout python")
    if backend == "tensorrt" and artifact.engine_path is None:
        raise ArtifactError(f"{artifact.name} has no TensorRT engine ({ENGINE_FILE}); use --backend onnxruntime")
    return backend


def _write_python_layout(root: Path, name: str, artifact: Artifact, options: dict[str, Any]) -> list[ModelEntry]:
    backend = _model_backend(artifact, options["backend"], ensemble=False)
    use_trt = backend == "tensorrt"
    if not use_trt and artifact.onnx_path is None:
        raise ArtifactError(f"{artifact.name} has no model.onnx for {backend}; use --backend tensorrt")
    max_batch = _max_batch(artifact)
    params = task_defaults(artifact.task)
    params.update(backend=backend, intra_op_threads=str(options["threads"]))
    config = (f"name: {_q(name)}\nbackend: \"python\"\nmax_batch_size: {max_batch}\n"
              + _tensors("input", _text_inputs(artifact.task, ensemble=False))
              + _tensors("output", [_tensor(RESULT, "TYPE_STRING", [1])])
              + _scheduling(max_batch, options["instances"], "KIND_GPU" if use_trt else "KIND_CPU",
                            options["dynamic_batching"], options["max_queue_delay_us"], options["preferred_batch"])
              + _parameters(params))
    folder = root / name
    _python_model(folder, "RuntimeModel", "python", config)
    files = _artifact_files(artifact)
    if not use_trt and artifact.engine_path is not None:
        del files[artifact.engine_path]
    for src, place in files.items():
        _link_or_copy(src, folder / "1" / ARTIFACT_DIR / place)
    return [ModelEntry(name, "python", config, list(files.values()), runtime=backend)]


def _write_ensemble_layout(root: Path, name: str, artifact: Artifact, options: dict[str, Any]) -> list[ModelEntry]:
    task = artifact.task
    text_inputs = _text_inputs(task, ensemble=True)
    text_names = list(task_inputs(task))
    use_trt = _model_backend(artifact, options["backend"], ensemble=True) == "tensorrt"
    if artifact.onnx_path is None:
        raise ArtifactError(f"{artifact.name} has no model.onnx: the repository takes the graph's inputs and "
                            "outputs from it")
    graph_in, graph_out = graph_io(artifact.onnx_path)
    missing = [n for n in task.inputs if n not in {g[0] for g in graph_in}] + \
              [n for n in task.output_names if n not in {g[0] for g in graph_out}]
    if missing:
        raise ArtifactError(f"{artifact.name}: the graph lacks {', '.join(missing)} of task {task.name!r}")
    max_batch = _max_batch(artifact)
    sched = (options["instances"], options["dynamic_batching"], options["max_queue_delay_us"], options["preferred_batch"])
    params = task_defaults(task)
    params["method"] = next(m for m in task.methods if m in ENSEMBLE_METHODS)
    names = {"tokenize": f"{name}_tokenize", "model": f"{name}_model", "postprocess": f"{name}_postprocess"}

    def typed(items, wanted):
        out = []
        for n, dtype, shape in items:
            if n in wanted:
                if dtype not in TRITON_TYPES:
                    raise ArtifactError(f"{artifact.name}: graph tensor {n} has type {dtype}, unknown to Triton")
                out.append((n, TRITON_TYPES[dtype], _dims(shape, n)))
        return out

    ins, outs = typed(graph_in, task.inputs), typed(graph_out, task.output_names)
    entries = []
    # tokenize
    config = (f"name: {_q(names['tokenize'])}\nbackend: \"python\"\nmax_batch_size: {max_batch}\n"
              + _tensors("input", text_inputs)
              + _tensors("output", [_tensor(n, t, d) for n, t, d in ins])  # the graph's own types
              + _scheduling(max_batch, sched[0], "KIND_CPU", *sched[1:])
              + _parameters({**params, "sequence_bucket": str(options["sequence_bucket"])}))
    entries.append((names["tokenize"], "python", config, "TokenizeModel"))
    # model
    platform = "tensorrt_plan" if use_trt else "onnxruntime_onnx"
    config = (f"name: {_q(names['model'])}\nplatform: {_q(platform)}\nmax_batch_size: {max_batch}\n"
              + _tensors("input", [_tensor(n, t, d) for n, t, d in ins])
              + _tensors("output", [_tensor(n, t, d) for n, t, d in outs])
              + _scheduling(max_batch, sched[0], "KIND_GPU" if use_trt else "KIND_CPU", *sched[1:]))
    entries.append((names["model"], platform, config, None))
    # postprocess
    ids_type, ids_dims = next((t, d) for n, t, d in ins if n == "input_ids")
    config = (f"name: {_q(names['postprocess'])}\nbackend: \"python\"\nmax_batch_size: {max_batch}\n"
              + _tensors("input", text_inputs + [_tensor("input_ids", ids_type, ids_dims)]
                         + [_tensor(n, t, d) for n, t, d in outs])
              + _tensors("output", [_tensor(RESULT, "TYPE_STRING", [1])])
              + _scheduling(max_batch, sched[0], "KIND_CPU", *sched[1:])
              + _parameters(params))
    entries.append((names["postprocess"], "python", config, "PostprocessModel"))
    # the ensemble clients call

    def step(model: str, inputs: dict[str, str], outputs: dict[str, str]) -> str:
        maps = "".join(f" input_map {{ key: {_q(k)} value: {_q(v)} }}" for k, v in inputs.items())
        maps += "".join(f" output_map {{ key: {_q(k)} value: {_q(v)} }}" for k, v in outputs.items())
        return f"    {{ model_name: {_q(model)} model_version: -1{maps} }}"

    same = lambda items: {n: n for n in items}  # noqa: E731
    steps = [step(names["tokenize"], same(text_names), same(task.inputs)),
             step(names["model"], same(task.inputs), same(task.output_names)),
             step(names["postprocess"], same(text_names + ["input_ids"] + list(task.output_names)), same([RESULT]))]
    config = (f"name: {_q(name)}\nplatform: \"ensemble\"\nmax_batch_size: {max_batch}\n"
              + _tensors("input", text_inputs) + _tensors("output", [_tensor(RESULT, "TYPE_STRING", [1])])
              + "ensemble_scheduling {\n  step [\n" + ",\n".join(steps) + "\n  ]\n}\n"
              + _parameters(params))
    entries.append((name, "ensemble", config, None))

    written = []
    for model_name, kind, text, cls in entries:
        folder = root / model_name
        files: dict[Path, str] = {}  # source -> its place in the model's version folder
        if cls:
            _python_model(folder, cls, "ensemble", text)
            (folder / "1" / ARTIFACT_INFO).write_text(json.dumps(artifact_info(artifact), indent=1), encoding="utf-8")
            files = {p: p.name for p in artifact.tokenizer_files}
        else:
            (folder / "1").mkdir(parents=True)
            (folder / "config.pbtxt").write_text(text, encoding="utf-8")
            if kind == "tensorrt_plan":
                files = {artifact.engine_path: "model.plan"}
            elif kind == "onnxruntime_onnx":  # Triton's name for the graph; its weights where it names them
                files = {artifact.onnx_path: "model.onnx", **_graph_data(artifact)}
        for src, place in files.items():
            _link_or_copy(src, folder / "1" / place)
        written.append(ModelEntry(model_name, kind, text, list(files.values())))
    return written


def write_repository(artifacts: Sequence[str | os.PathLike], repository: str | os.PathLike, *,
                     names: Sequence[str] | None = None, layout: str = "python", backend: str = "auto",
                     dynamic_batching: bool = True, max_queue_delay_us: int = 0, instances: int | None = None,
                     preferred_batch: Sequence[int] = (), sequence_bucket: int | None = None, threads: int = 0,
                     overwrite: bool = False) -> list[ModelEntry]:
    """Write a Triton model repository serving `artifacts` to `repository` (atomically).

    names: one model name per artifact (default: the artifact folder's name). backend of the python
    layout's model: "auto" (TensorRT for an engine folder, else the backend of the artifact's
    build.json, else ONNX Runtime), "onnxruntime", "tensorrt" or "openvino". The ensemble's middle
    model is tensorrt_plan ("auto" with an engine, or "tensorrt") or onnxruntime_onnx (anything else
    but "openvino", which it refuses). instances: instance_group count (default: 2 on CPU, 1 per GPU).
    threads: ONNX Runtime / OpenVINO threads per instance in the python layout (0: the serving
    machine's cores divided by the instances). sequence_bucket (ensemble only, default 16): the
    tokenize step pads token ids to a multiple of it, so requests of similar length batch.
    max_queue_delay_us: how long the dynamic batcher waits for more requests; 0 (default) batches what
    is queued when an instance is free and adds no wait to a lone request.
    """
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {', '.join(LAYOUTS)}, got {layout!r}")
    if backend not in ("auto",) + RUNTIME_BACKENDS:
        raise ValueError(f"backend must be auto, {', '.join(RUNTIME_BACKENDS)}, got {backend!r}")
    if not artifacts:
        raise ValueError("give at least one artifact")
    if not str(repository).strip():
        raise ValueError("the repository path is empty; name the folder to write")
    if not dynamic_batching and (preferred_batch or max_queue_delay_us):
        raise ValueError("preferred batch sizes and the queue delay shape dynamic batching, which is off; drop them "
                         "or turn dynamic batching on")
    if layout == "ensemble" and threads:
        raise ValueError("threads set the python layout's runtime; the ensemble's middle model runs on Triton's "
                         "own onnxruntime/tensorrt backend (set its threads in its config.pbtxt)")
    if layout == "python" and sequence_bucket is not None:
        raise ValueError("sequence_bucket pads the ensemble's token ids; the python layout runs each dynamic batch "
                         "in-process as one call (drop it, or use the ensemble layout)")
    sequence_bucket = DEFAULT_SEQUENCE_BUCKET if sequence_bucket is None else sequence_bucket
    # Triton's schema holds these in 32-bit fields (the queue delay in 64 bits).
    for what, value, low, high in (("instances", 1 if instances is None else instances, 1, MAX_DIM),
                                   ("max_queue_delay_us", max_queue_delay_us, 0, 2**63 - 1),
                                   ("sequence_bucket", sequence_bucket, 1, MAX_DIM), ("threads", threads, 0, MAX_DIM)):
        if not is_int_between(value, low, high):
            raise ValueError(f"{what} must be an integer from {low} to {high}, got {value!r}")
    if not all(is_int_between(b, 1, MAX_DIM) for b in preferred_batch):
        raise ValueError(f"preferred batch sizes must be integers from 1 to {MAX_DIM}, got {list(preferred_batch)}")
    opened = [_open(a) for a in artifacts]
    for artifact in opened:
        if not artifact.has_tokenizer():
            raise ArtifactError(f"{artifact.folder} has no tokenizer files (vocab.txt or tokenizer.json), and the "
                                "served models take text: copy the checkpoint's tokenizer files into it, or export "
                                "it again from a checkpoint folder that has them")
    if names and len(names) != len(opened):
        raise ValueError(f"got {len(names)} name(s) for {len(opened)} artifact(s); give one --name per artifact")
    model_names = [_check_name(n) for n in (names or [_default_name(a) for a in opened])]
    suffixes = ("", "_tokenize", "_model", "_postprocess") if layout == "ensemble" else ("",)
    every = [n + s for n in model_names for s in suffixes]
    clash = sorted({n for n in every if every.count(n) > 1})
    if clash:
        raise ValueError(f"two models would be called {', '.join(clash)}; give each artifact its own --name")
    options = dict(backend=backend, dynamic_batching=dynamic_batching, max_queue_delay_us=max_queue_delay_us,
                   instances=instances, preferred_batch=list(preferred_batch), sequence_bucket=sequence_bucket,
                   threads=threads)
    entries: list[ModelEntry] = []
    with atomic_dir(repository, overwrite=overwrite, inputs=[a.folder for a in opened], ours=is_repository) as root:
        for artifact, name in zip(opened, model_names):
            write = _write_ensemble_layout if layout == "ensemble" else _write_python_layout
            entries += write(root, name, artifact, options)
    return entries


def parse_config(text: str):
    """`text` parsed against Triton's own schema (tritonclient's model_config_pb2); raises on errors."""
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    return text_format.Parse(text, model_config_pb2.ModelConfig())
