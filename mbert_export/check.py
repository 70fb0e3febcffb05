"""TensorRT readiness of an ONNX graph, checked without TensorRT (`mbert-export check FILE.onnx`).

A graph is ready when every op is in the ONNX-TensorRT parser's support matrix of both TensorRT
10.x and 11.x, no tensor is float64, no constant holds -inf/NaN or a value FP16 cannot hold (the
`finfo(float32).min` attention-mask pitfall), and the inputs carry the dynamic axes the task table
names. Problems are returned as lines naming the offending node or tensor.
"""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

from .tasks import TASKS

FP16_MAX = 65504.0
#: Constants are scanned for -inf / finfo.min only up to this many elements (weights are not masks).
MAX_SCANNED_CONSTANT = 4096
MIN_OPSET = 13  # explicit quantization (Q/DQ) needs 13; FP32/FP16 exports use 17+
STANDARD_DOMAINS = ("", "ai.onnx")
#: Ops of ONNX Runtime's dynamic INT8 (the CPU recipe): their presence means the graph is not the Q/DQ one.
DYNAMIC_INT8_OPS = frozenset({"DynamicQuantizeLinear", "MatMulInteger", "DynamicQuantizeMatMul"})


@lru_cache(maxsize=1)
def supported_ops() -> dict[str, frozenset[str]]:
    """TensorRT major version -> ONNX ops its parser supports (onnx-tensorrt docs/operators.md)."""
    data = json.loads((Path(__file__).with_name("trt_onnx_ops.json")).read_text(encoding="utf-8"))
    return {version: frozenset(ops) for version, ops in data["supported"].items()}


def _float_constants(graph: onnx.GraphProto):
    """(name, array) of small float initializers and Constant node values."""
    for init in graph.initializer:
        if init.data_location != onnx.TensorProto.EXTERNAL and np.prod(init.dims) <= MAX_SCANNED_CONSTANT:
            yield f"initializer {init.name}", init
    for node in graph.node:
        if node.op_type == "Constant":
            for attr in node.attribute:
                if attr.name == "value" and np.prod(attr.t.dims) <= MAX_SCANNED_CONSTANT:
                    yield f"node {node.name or node.output[0]} (Constant)", attr.t


def check_model(model: onnx.ModelProto, task_name: str | None = None) -> list[str]:
    """Every reason `model` would not build as a TensorRT 10/11 engine (empty list: ready)."""
    problems: list[str] = []
    graph = model.graph
    opset = next((o.version for o in model.opset_import if o.domain in STANDARD_DOMAINS), 0)
    dynamic_int8 = sorted({n.op_type for n in graph.node} & DYNAMIC_INT8_OPS)
    if dynamic_int8:
        problems.append(f"this is ONNX Runtime's CPU INT8 graph (dynamic quantization: {', '.join(dynamic_int8)}), "
                        "which TensorRT cannot build; for TensorRT build the Q/DQ graph: mbert-export build "
                        "--int8 --int8-recipe qdq")
    if opset < MIN_OPSET:
        problems.append(f"opset {opset} < {MIN_OPSET}: re-export with --opset 18")
    for version, ops in supported_ops().items():
        for node in graph.node:
            if node.domain not in STANDARD_DOMAINS:
                problems.append(f"node {node.name!r}: op {node.domain}.{node.op_type} is not a standard ONNX op "
                                f"(TensorRT {version} needs a plugin for it)")
            elif node.op_type not in ops:
                problems.append(f"node {node.name!r}: op {node.op_type} is not supported by the TensorRT "
                                f"{version}.x ONNX parser")
    double = onnx.TensorProto.DOUBLE
    typed = list(graph.input) + list(graph.output) + list(graph.value_info)
    problems += [f"tensor {v.name!r} is float64 (TensorRT has no float64)" for v in typed
                 if v.type.tensor_type.elem_type == double]
    problems += [f"initializer {t.name!r} is float64" for t in graph.initializer if t.data_type == double]
    for node in graph.node:
        if node.op_type == "Cast" and any(a.name == "to" and a.i == double for a in node.attribute):
            problems.append(f"node {node.name!r}: Cast to float64")
    for where, tensor in _float_constants(graph):
        if tensor.data_type not in (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, double):
            continue
        values = numpy_helper.to_array(tensor)
        if not np.isfinite(values).all():
            problems.append(f"{where} holds inf/NaN; FP16 softmax turns it into NaN (use a bounded mask value)")
        elif values.size and np.abs(values).max() > FP16_MAX:
            problems.append(f"{where} holds {values.flat[np.abs(values).argmax()]:.3g}, beyond FP16's range "
                            f"(+-{FP16_MAX:g}): it becomes inf in the FP16 engine")
    props = {p.key: p.value for p in model.metadata_props}
    if task_name is not None and task_name not in TASKS:
        raise ValueError(f"unknown task {task_name!r}; choose one of: {', '.join(TASKS)}")
    task = TASKS.get(task_name or props.get("mbert_export.task", ""))
    if task is None:
        problems.append("no mbert_export.task metadata: the task's dynamic axes were not checked; pass --task TASK "
                        "(or check a graph that mbert-export exported)")
    else:
        inputs = {v.name: v for v in graph.input}
        for name in task.inputs:
            if name not in inputs:
                problems.append(f"input {name!r} is missing (task {task.name} expects {', '.join(task.inputs)})")
                continue
            dims = inputs[name].type.tensor_type.shape.dim
            for axis, axis_name in task.input_axes.items():
                got = dims[axis].dim_param if axis < len(dims) else None
                if got != axis_name:
                    problems.append(f"input {name!r} axis {axis} is {got or dims[axis].dim_value!r}, "
                                    f"expected the dynamic axis {axis_name!r}")
    return problems


def check_graph(path: str | Path, task_name: str | None = None) -> list[str]:
    """`check_model` on a file; external weights are not loaded (only the graph is inspected)."""
    path = Path(path)
    if path.is_dir() and (path / "model.onnx").is_file():  # an artifact folder: its graph
        path = path / "model.onnx"
    if not path.is_file():
        raise FileNotFoundError(f"{path} " + ("holds no model.onnx" if path.is_dir() else "does not exist")
                                + "; pass the .onnx file (or artifact folder) to check")
    try:
        model = onnx.load(path, load_external_data=False)
    except Exception as exc:  # onnx raises DecodeError and friends for non-ONNX files
        raise ValueError(f"{path} is not a readable ONNX file ({type(exc).__name__})") from None
    if not model.graph.node:
        raise ValueError(f"{path} is not an ONNX model (no graph: empty or not ONNX)")
    return check_model(model, task_name)
