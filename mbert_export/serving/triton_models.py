"""Triton python-backend models: the runtime model (layout "python"), tokenize and postprocess (ensemble).

The repository writer puts a two-line `model.py` in each python model folder that imports one of
these classes as `TritonPythonModel`, plus a copy of this package's torch-free part beside it. All
three reuse the in-process pipeline (`MegatronBertPipeline`) for validation, tokenization and
post-processing; they differ only in what stands in for the graph:

- `RuntimeModel`: the real runtime (`OrtMegatronBert` / `OvMegatronBert` / `TRTMegatronBert`);
  `execute()` runs the requests of a dynamic batch that share a method and options as ONE pipeline call.
- `TokenizeModel`: the pipeline up to the graph call, whose inputs it returns (padded to a bucket).
- `PostprocessModel`: the pipeline with the graph outputs of the middle model replayed into it.

A request that fails gets its own error; the other requests of the batch are answered.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from ..runtime.artifact import Artifact
from ..runtime.backend import Backend
from ..runtime.pipeline import MegatronBertPipeline
from ..tasks import SEQUENCE, TASKS, Task
from .interface import (JSON_INPUTS, METHOD, METHOD_INPUTS, OPTIONAL_ARGUMENTS, RESULT, decode_option,
                        method_options)

#: Written by the repository writer beside tokenize/postprocess models (they carry no graph).
ARTIFACT_INFO = "artifact.json"
#: Folder of a python-layout model version that holds the artifact files.
ARTIFACT_DIR = "artifact"


def _json_default(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"cannot serialize {type(value).__name__}")


def encode_result(result: Any) -> bytes:
    return json.dumps(result, default=_json_default).encode("utf-8")


def artifact_info(artifact: Artifact) -> dict[str, Any]:
    """What `load_artifact_info` needs to rebuild an `Artifact` without its graph (tokenize/postprocess)."""
    return {"task": artifact.task.name, "precision": artifact.precision, "config": artifact.config,
            "metadata": artifact.metadata, "id2label": {str(k): v for k, v in artifact.id2label.items()},
            "vocab_size": artifact.vocab_size, "real_vocab_size": artifact.real_vocab_size,
            "max_position_embeddings": artifact.max_position_embeddings, "max_seq_len": artifact.max_seq_len,
            "max_batch": artifact.max_batch, "source": str(artifact.path),
            "tokenizer_files": [p.name for p in artifact.tokenizer_files]}


def load_artifact_info(folder: Path) -> Artifact:
    info = json.loads((folder / ARTIFACT_INFO).read_text(encoding="utf-8"))
    return Artifact(path=folder, folder=folder, onnx_path=None, engine_path=None, sidecar={},
                    metadata=info["metadata"], task=TASKS[info["task"]], precision=info["precision"],
                    config=info["config"], id2label={int(k): v for k, v in info["id2label"].items()},
                    vocab_size=info["vocab_size"], real_vocab_size=info["real_vocab_size"],
                    max_position_embeddings=info["max_position_embeddings"], max_seq_len=info["max_seq_len"],
                    max_batch=info["max_batch"], tokenizer_files=[folder / n for n in info["tokenizer_files"]])


class _GraphNames(Backend):
    """A backend that only names the task's graph inputs and outputs (the graph runs elsewhere)."""

    def __init__(self, task: Task):
        self.input_names, self.output_names = task.inputs, task.output_names

    def infer(self, feeds):
        raise RuntimeError("this pipeline has no graph")


class _Captured(Exception):
    def __init__(self, feeds: dict[str, np.ndarray]):
        super().__init__("graph inputs captured")
        self.feeds = feeds


class _CapturePipeline(MegatronBertPipeline):
    """Runs a task method up to the graph call and raises the graph inputs."""

    def _infer(self, feeds, trim):
        raise _Captured(feeds)


class _ReplayPipeline(MegatronBertPipeline):
    """Runs a task method with graph outputs computed elsewhere (`self.replay`: inputs + outputs)."""

    replay: dict[str, np.ndarray] = {}

    def _infer(self, feeds, trim):
        ids = self.replay["input_ids"]
        seq = feeds["input_ids"].shape[-1]
        if ids.shape[0] != feeds["input_ids"].shape[0] or ids.shape[-1] < seq or not np.array_equal(
                ids[..., :seq], feeds["input_ids"]):
            raise ValueError("the input_ids given to postprocess differ from its own tokenization of the text: "
                             "the tokenize and postprocess models of this ensemble do not match")
        out = {}
        for name in self.task.output_names:
            value = self.replay[name]
            axis = next((a for a, n in self.task.outputs[name].items() if n == SEQUENCE), None)
            out[name] = value[(slice(None),) * axis + (slice(0, seq),)] if axis is not None else value
        return out


# ---------------------------------------------------------------------------- shared request handling
class _PythonModel:
    """Config parameters, request parsing and responses, shared by the three models."""

    pipeline: MegatronBertPipeline

    def initialize(self, args: dict[str, str]) -> None:
        import triton_python_backend_utils as pb_utils

        self.pb = pb_utils
        self.model_config = json.loads(args["model_config"])
        self.parameters = {k: v.get("string_value", "") for k, v in self.model_config.get("parameters", {}).items()}
        self.folder = Path(args["model_repository"]) / str(args["model_version"])
        self.task = TASKS[self.parameters["task"]]
        #: method -> its options' config defaults, decoded once (not per request).
        self.defaults = {m: {k: decode_option(self.parameters[k]) for k in method_options(m) if k in self.parameters}
                         for m in self.task.methods}
        self.load()

    def load(self) -> None:
        raise NotImplementedError

    def parse(self, request) -> tuple[str, dict[str, list], dict[str, Any], int]:
        """(method, input lists by argument name, options, rows) of one request; ValueError when bad."""
        raw = request.parameters()
        given = json.loads(raw) if raw else {}
        method = decode_option(given.pop(METHOD, self.parameters.get(METHOD, self.task.methods[0])))
        if method not in METHOD_INPUTS:
            raise ValueError(f"unknown method {method!r}; this model offers: "
                             f"{', '.join(m + '()' for m in self.task.methods)}")
        self.pipeline._require(method)
        options = dict(self.defaults[method])
        if given:
            allowed = method_options(method)
            unknown = sorted(set(given) - set(allowed))
            if unknown:
                raise ValueError(f"unknown option(s) {', '.join(unknown)} for {method}(); it takes: "
                                 f"{', '.join(allowed)}")
            options.update({k: decode_option(v) for k, v in given.items()})
        inputs, rows = {}, None
        for argument, name in METHOD_INPUTS[method].items():
            tensor = self.pb.get_input_tensor_by_name(request, name)
            if tensor is None:
                if (method, argument) in OPTIONAL_ARGUMENTS:
                    continue
                raise ValueError(f"{method}() needs the input {name}")
            values = [v.decode("utf-8") if isinstance(v, bytes) else str(v) for v in tensor.as_numpy().reshape(-1)]
            if name in JSON_INPUTS:
                try:
                    values = [json.loads(v) for v in values]
                except json.JSONDecodeError as exc:
                    raise ValueError(f"{name} must hold one JSON list per row ({exc})") from None
            if rows is not None and len(values) != rows:
                raise ValueError(f"{name} has {len(values)} rows, the first input {rows}")
            rows = len(values)
            inputs[argument] = values
        return method, inputs, options, rows or 0

    def respond(self, results: list[Any]):
        rows = np.array([[encode_result(r)] for r in results], dtype=np.object_)
        return self.pb.InferenceResponse(output_tensors=[self.pb.Tensor(RESULT, rows)])

    def fail(self, exc: BaseException):
        """The error response of one request: bad input (ValueError, TypeError) as INVALID_ARG, so that
        clients get HTTP 400 / gRPC INVALID_ARGUMENT; anything else as INTERNAL with its type."""
        bad_input = isinstance(exc, (ValueError, TypeError))
        message = str(exc) if bad_input else f"{type(exc).__name__}: {exc}"
        code = getattr(self.pb.TritonError, "INVALID_ARG" if bad_input else "INTERNAL", None)  # older stubs: none
        error = self.pb.TritonError(message) if code is None else self.pb.TritonError(message, code)
        return self.pb.InferenceResponse(output_tensors=[], error=error)

    def finalize(self) -> None:
        self.pipeline.close()


# ---------------------------------------------------------------------------- layout "python"
class RuntimeModel(_PythonModel):
    """The whole task in one model: `OrtMegatronBert` or `OvMegatronBert` on CPU, `TRTMegatronBert` for
    an engine on a GPU."""

    def load(self) -> None:
        from ..runtime import OrtMegatronBert, OvMegatronBert, TRTMegatronBert

        folder = self.folder / ARTIFACT_DIR
        backend = self.parameters.get("backend", "onnxruntime")
        if backend == "tensorrt":
            self.pipeline = TRTMegatronBert(folder)
        elif backend == "openvino":  # the build's inference precision (build.json), compiled blob cached beside it
            self.pipeline = OvMegatronBert(folder, threads=self.intra_op_threads())
        else:
            import onnxruntime

            options = onnxruntime.SessionOptions()
            options.intra_op_num_threads = self.intra_op_threads()
            self.pipeline = OrtMegatronBert(folder, session_options=options)
        #: Largest number of rows one pipeline call got (the model's own record of batching).
        self.largest_call = 0

    def intra_op_threads(self) -> int:
        """ONNX Runtime / OpenVINO threads of this instance: the config's, else this machine's cores over the instances.

        Instances that split the cores beat one instance over all of them (demo MLM, 2 cores, 8 clients:
        2 x 1 thread 729 requests/s, 1 x 2 threads 476): a multi-threaded call in a server waits for
        its pool's threads to wake up between requests and for cores the HTTP threads hold.
        """
        threads = int(self.parameters.get("intra_op_threads", "0") or 0)
        if threads:
            return threads
        count = sum(int(group.get("count", 1)) for group in self.model_config.get("instance_group", [])) or 1
        return max(1, len(os.sched_getaffinity(0)) // count)

    def execute(self, requests):
        responses: list[Any] = [None] * len(requests)
        groups: dict[tuple, list[tuple[int, dict[str, list], int, dict]]] = {}
        for i, request in enumerate(requests):
            try:
                method, inputs, options, rows = self.parse(request)
            except Exception as exc:  # noqa: BLE001 - the error goes back to this request only
                responses[i] = self.fail(exc)
                continue
            key = (method, json.dumps(options, sort_keys=True, default=str), tuple(inputs))
            groups.setdefault(key, []).append((i, inputs, rows, options))
        for (method, _, names), members in groups.items():
            options = members[0][3]
            merged = {name: [v for _, inputs, _, _ in members for v in inputs[name]] for name in names}
            try:
                results = getattr(self.pipeline, method)(**merged, **options)
                self.largest_call = max(self.largest_call, len(results))
            except Exception as exc:  # noqa: BLE001
                if len(members) == 1:
                    responses[members[0][0]] = self.fail(exc)
                    continue
                for i, inputs, _, _ in members:  # find the failing request(s); the others are answered
                    try:
                        responses[i] = self.respond(getattr(self.pipeline, method)(**inputs, **options))
                    except Exception as single:  # noqa: BLE001
                        responses[i] = self.fail(single)
                continue
            start = 0
            for i, _, rows, _ in members:
                responses[i] = self.respond(results[start:start + rows])
                start += rows
        return responses


# ---------------------------------------------------------------------------- layout "ensemble"
class TokenizeModel(_PythonModel):
    """Text in, the graph's inputs out (int64 or int32, as its config says), padded to a multiple of
    `sequence_bucket` tokens.

    The bucket lets the middle model's dynamic batcher join requests of similar length (Triton
    batches only requests of equal shapes).
    """

    def load(self) -> None:
        artifact = load_artifact_info(self.folder)
        self.pipeline = _CapturePipeline(_GraphNames(self.task), artifact)
        self.bucket = max(1, int(self.parameters.get("sequence_bucket", "16") or 16))
        types = {o["name"]: o.get("data_type") for o in self.model_config.get("output", [])}
        self.dtypes = {n: np.int32 if types.get(n) == "TYPE_INT32" else np.int64 for n in self.task.inputs}

    def execute(self, requests):
        responses = []
        for request in requests:
            try:
                method, inputs, options, _ = self.parse(request)
                try:
                    getattr(self.pipeline, method)(**inputs, **options)
                    raise RuntimeError(f"{method}() never reached the graph")
                except _Captured as captured:
                    feeds = captured.feeds
                length = max(1, int(feeds["attention_mask"].sum(-1).max()))
                padded = min(self.pipeline.max_seq_len, -(-length // self.bucket) * self.bucket)
                tensors = []
                for name in self.task.inputs:
                    value = np.asarray(feeds[name][..., :length], dtype=self.dtypes[name])
                    fill = self.pipeline.tokenizer.pad_token_id if name == "input_ids" else 0
                    value = np.pad(value, [(0, 0)] * (value.ndim - 1) + [(0, padded - length)], constant_values=fill)
                    tensors.append(self.pb.Tensor(name, np.ascontiguousarray(value)))
                responses.append(self.pb.InferenceResponse(output_tensors=tensors))
            except Exception as exc:  # noqa: BLE001
                responses.append(self.fail(exc))
        return responses


class PostprocessModel(_PythonModel):
    """Text, input_ids and the graph outputs in, `RESULT` (the task method's JSON per row) out."""

    def load(self) -> None:
        self.pipeline = _ReplayPipeline(_GraphNames(self.task), load_artifact_info(self.folder))

    def execute(self, requests):
        responses = []
        for request in requests:
            try:
                method, inputs, options, _ = self.parse(request)
                replay = {"input_ids": self.pb.get_input_tensor_by_name(request, "input_ids").as_numpy()}
                for name in self.task.output_names:
                    replay[name] = self.pb.get_input_tensor_by_name(request, name).as_numpy()
                self.pipeline.replay = replay
                responses.append(self.respond(getattr(self.pipeline, method)(**inputs, **options)))
            except Exception as exc:  # noqa: BLE001
                responses.append(self.fail(exc))
        return responses
