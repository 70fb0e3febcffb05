"""Precision passes on the FP32 graph: FP16 casts and INT8 Q/DQ, the form TensorRT 10/11 builds.

TensorRT 11 has no FP16/INT8 builder flags and no calibrators; every network is strongly typed, so
the precision must already be in the ONNX graph. These passes write exactly the graphs TensorRT
builds, and ONNX Runtime runs the same files on CPU, so their accuracy is proven before a GPU sees them.

- FP16: ONNX Runtime's transformer float16 converter (`onnxruntime.transformers.float16`), inputs
  and outputs kept in their types (int64 ids in, FP32 logits out). The onnxconverter-common converter
  it derives from fails on dynamo-exported graphs (Cast nodes keep `to=FLOAT`); ModelOpt AutoCast
  does the same job but pins onnxruntime-gpu and an older onnx, which break the CPU install.
- INT8: `qdq.py`, explicit quantization with TensorRT's rules: symmetric int8 (zero point 0),
  per-channel weights, per-tensor activations, calibration by max, entropy or percentile, Q/DQ on
  both inputs of every MatMul. Written by hand because ONNX Runtime's `quantize_static` needs 20 GB
  to calibrate the 345M preset (qdq.py: 1.8 GB); its scales are the oracle in tests/test_qdq.py.
  Layers that hurt accuracy can be kept in float (`keep_float`); they are reported.
- INT8 for ONNX Runtime CPU (`quantize_int8_dynamic`): the Q/DQ graph runs no faster than FP32
  there, so the CPU backend gets ONNX Runtime's dynamic quantization (integer VNNI kernels) with
  the same keep-float list, fused GELU kernels, and the LM-head decoder in int8 with each token's
  top scores recomputed in FP32 (`_rescored_int8`).
"""

from __future__ import annotations

import ast
import fnmatch
import json
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable

import numpy as np
import onnx

from .fileio import EXTERNAL_DATA_THRESHOLD, PROTOBUF_LIMIT, publish_onnx, staging_dir

Progress = Callable[[str], None]
PRECISIONS = ("fp32", "fp16", "int8")
CALIBRATION_METHODS = ("max", "entropy", "percentile")


class PrecisionError(ValueError):
    """A precision pass that cannot run as asked; the message says what to do."""


@dataclass
class PrecisionResult:
    """What a precision pass wrote, what it kept in float, and how long it took."""

    path: Path
    precision: str
    seconds: float
    kept_float: list[str] = field(default_factory=list)
    details: dict = field(default_factory=dict)


def check_precision(name: str) -> str:
    if name not in PRECISIONS:
        raise PrecisionError(f"unknown precision {name!r}; choose one of {', '.join(PRECISIONS)}")
    return name


def _weight_bytes(model: onnx.ModelProto) -> int:
    total = 0
    for init in model.graph.initializer:
        dtype = onnx.helper.tensor_dtype_to_np_dtype(init.data_type)
        total += int(np.prod(init.dims)) * np.dtype(dtype).itemsize
    return total


def _set_metadata(model: onnx.ModelProto, base: dict[str, str] | None = None, **updates: str) -> None:
    """metadata_props = `base` (default: the model's own) plus `mbert_export.<key>` updates."""
    props = dict(base) if base is not None else {p.key: p.value for p in model.metadata_props}
    props.update({f"mbert_export.{k}": v for k, v in updates.items()})
    del model.metadata_props[:]
    for key, value in props.items():
        model.metadata_props.add(key=key, value=value)


def _save(model: onnx.ModelProto, output: Path) -> None:
    """Stage beside `output`, then rename into place (with one external-data file when large)."""
    stage = staging_dir(output.parent)
    try:
        staged = stage / output.name
        if _weight_bytes(model) > EXTERNAL_DATA_THRESHOLD:
            onnx.save_model(model, staged, save_as_external_data=True, all_tensors_to_one_file=True,
                            location=staged.name + ".data", size_threshold=1024)
        else:
            onnx.save_model(model, staged)
        publish_onnx(staged, output)
    finally:
        shutil.rmtree(stage, ignore_errors=True)


# ---------------------------------------------------------------------------- FP16
#: Ops kept in FP32 by default: none. Measured on the demo model (README "Design decisions"): with
#: opset-17 LayerNormalization and the bounded -1e4 attention mask nothing in this graph overflows
#: FP16, and TensorRT keeps LayerNormalization's accumulation in FP32 by itself.
DEFAULT_FP32_OPS: tuple[str, ...] = ()


def convert_fp16(src: str | Path, output: str | Path, *, keep_fp32_ops: Iterable[str] = DEFAULT_FP32_OPS,
                 progress: Progress | None = None) -> PrecisionResult:
    """FP32 graph -> FP16 graph (int64 inputs and FP32 outputs unchanged)."""
    from onnxruntime.transformers import float16

    say = progress or (lambda message: None)
    start = time.perf_counter()
    keep = sorted(set(keep_fp32_ops))
    say(f"fp16: converting {src}" + (f" (keeping {', '.join(keep)} in FP32)" if keep else ""))
    model = onnx.load(str(src))
    model = float16.convert_float_to_float16(model, keep_io_types=True, op_block_list=keep or [],
                                             disable_shape_infer=_weight_bytes(model) > PROTOBUF_LIMIT)
    _set_metadata(model, precision="fp16", fp32_ops=json.dumps(keep))
    output = Path(output)
    _save(model, output)
    return PrecisionResult(output, "fp16", time.perf_counter() - start, kept_float=keep)


# ---------------------------------------------------------------------------- INT8
#: Entries per token that `_rescored_int8` recomputes in FP32: above fill-mask's default top 5.
RESCORE_TOP = 8


def matmul_scopes(model: onnx.ModelProto) -> dict[str, str]:
    """MatMul node name -> the reference module it computes, e.g. `bert.encoder.layer.0.output.dense`.

    Read from the name scopes torch's dynamo exporter stores on every node; the two attention
    products are named `...attention.self.scores` (Q K^T) and `...attention.self.context` (P V).
    Lets users and recipes name layers to keep in float instead of opaque node names.
    """
    scopes = {}
    for node in model.graph.node:
        if node.op_type != "MatMul":
            continue
        props = {p.key: p.value for p in node.metadata_props}
        try:
            path = ast.literal_eval(props.get("pkg.torch.onnx.name_scopes", "[]"))
        except (ValueError, SyntaxError):
            path = []
        module = path[-2] if len(path) >= 2 else ""
        module = module[len("model."):] if module.startswith("model.") else module
        if module.endswith("attention.self"):  # in graph order: Q K^T first, then P V
            module += ".context" if module + ".scores" in scopes.values() else ".scores"
        scopes[node.name] = module or node.name
    return scopes


def resolve_keep_float(model: onnx.ModelProto, patterns: Iterable[str], strict: bool = True,
                       option: str = "--keep-float") -> dict[str, str]:
    """Node name -> module for every MatMul matching a pattern (fnmatch on module path or node name).

    `strict`: a pattern that matches nothing is an error (a user's typo); recipes spanning several
    heads pass False.
    """
    scopes = matmul_scopes(model)
    chosen = {}
    for pattern in patterns:
        hits = {n: m for n, m in scopes.items() if fnmatch.fnmatchcase(m, pattern) or n == pattern}
        if not hits and strict:
            raise PrecisionError(f"{option} {pattern!r} matches no MatMul; modules are named like "
                                 f"{', '.join(sorted(set(scopes.values()))[:4])}, ...")
        chosen.update(hits)
    return chosen


def quantize_int8(src: str | Path, output: str | Path, calibration: list[dict[str, np.ndarray]], *,
                  method: str = "max", keep_float: Iterable[str] = (), strict: bool = True,
                  percentile: float = 99.999, progress: Progress | None = None) -> PrecisionResult:
    """FP32 graph -> INT8 Q/DQ graph calibrated on `calibration` (feed dicts of int64 arrays).

    Q/DQ go on both inputs of every MatMul: the inputs of every Linear and both operands of the two
    attention products, as NVIDIA's BERT recipe places them. MatMuls whose module matches a
    `keep_float` pattern (see `matmul_scopes`, e.g. "cls.predictions.decoder") stay in float.
    """
    from .qdq import quantize_int8_lean

    say = progress or (lambda message: None)
    if method not in CALIBRATION_METHODS:
        raise PrecisionError(f"unknown calibration method {method!r}; choose one of {', '.join(CALIBRATION_METHODS)}")
    if not calibration:
        raise PrecisionError("INT8 needs calibration batches; pass --calibration TEXT or use the bundled corpus")
    start = time.perf_counter()
    src, output = Path(src), Path(output)
    graph = onnx.load(str(src), load_external_data=False)
    kept_nodes = resolve_keep_float(graph, keep_float, strict)
    keep = sorted(set(kept_nodes.values()))
    del graph
    say(f"int8: calibrating ({method}) on {len(calibration)} batches")
    quantize_int8_lean(src, output, calibration, method=method, keep_float_nodes=set(kept_nodes),
                       percentile=percentile, progress=say,
                       metadata={"mbert_export.precision": "int8", "mbert_export.int8_recipe": "qdq",
                                 "mbert_export.calibration": method,
                                 "mbert_export.int8_float_nodes": json.dumps(keep)})
    return PrecisionResult(output, "int8", time.perf_counter() - start, kept_float=keep,
                           details={"int8_recipe": "qdq", "calibration_method": method,
                                    "calibration_batches": len(calibration)})


# ---------------------------------------------------------------------------- accuracy
#: Acceptance bars against the FP32 graph (issue: FP16 >= 99.9 % top-1 agreement at masked
#: positions; INT8 >= 99 % and held-out MLM accuracy within 0.5 points of FP32). The top-1 bars
#: and the FP32 max-abs bound are the runtime's per-precision thresholds (runtime/verify.py).
MLM_ACCURACY_DROP = {"fp32": 0.0, "fp16": 0.005, "int8": 0.005, "bf16": 0.005}


def compare_graphs(reference: str | Path, candidate: str | Path, batches: list[dict[str, np.ndarray]],
                   real_vocab_size: int | None = None, backend: str = "onnxruntime",
                   inference_precision: str | None = None) -> dict:
    """Run two graphs of one task over `batches` and compare every output.

    The reference runs on ONNX Runtime CPU; the candidate on `backend` ("onnxruntime", or "openvino"
    at `inference_precision`), so a graph is checked on the runtime that will serve it.
    Per output, pooled over the batches (runtime.verify.compare_outputs on each): max/mean abs
    difference at real tokens, NaN/inf count of the candidate, top-1 agreement. Positions counted
    for agreement: where a batch has `labels` != -100 (masked positions of MLM text), otherwise
    every real token / sequence. With `labels`, MLM accuracy of both graphs is reported too.
    Padded vocabulary rows (>= real_vocab_size) are excluded from argmax.
    """
    from .runtime.artifact import read_onnx_metadata
    from .runtime.onnxruntime import OnnxRuntimeBackend
    from .runtime.verify import Thresholds, compare_outputs
    from .tasks import get_task

    ref = OnnxRuntimeBackend(reference)
    if backend == "openvino":
        from .runtime.openvino import OpenVinoBackend

        cand = OpenVinoBackend(candidate, inference_precision=inference_precision, cache_dir=False)
    elif backend == "onnxruntime":
        cand = OnnxRuntimeBackend(candidate)
    else:
        raise PrecisionError(f"compare_graphs runs candidates on onnxruntime or openvino, not {backend!r}")
    task = get_task(read_onnx_metadata(reference).get("mbert_export.task", "mlm"))
    names, inputs = list(ref.output_names), list(ref.input_names)
    vocab = real_vocab_size or 1 << 62
    stats = {n: {"max_abs_diff": 0.0, "sum_abs": 0.0, "count": 0, "nonfinite": 0, "agree": 0, "positions": 0,
                 "ref_correct": 0, "cand_correct": 0, "labelled": 0} for n in names}
    for batch in batches:
        feeds = {k: batch[k] for k in inputs}
        outs_ref, outs_cand = ref.infer(feeds), cand.infer(feeds)
        labels = batch.get("labels")
        positions = labels != -100 if labels is not None else None
        for check in compare_outputs(task, batch, outs_ref, outs_cand, Thresholds(), vocab, positions=positions,
                                     judge_top1=False):
            s = stats[check.name]
            s["max_abs_diff"] = max(s["max_abs_diff"], check.max_abs)
            s["sum_abs"] += check.mean_abs * outs_ref[check.name].size
            s["count"] += outs_ref[check.name].size
            s["nonfinite"] += check.nan + check.inf
            if check.top1_count is not None:
                s["agree"] += check.top1_count[0]
                s["positions"] += check.top1_count[1]
            if positions is not None and check.name == task.vocab_output:
                top_ref = outs_ref[check.name][..., :vocab].argmax(-1)[positions]
                top_cand = outs_cand[check.name][..., :vocab].argmax(-1)[positions]
                s["ref_correct"] += int((top_ref == labels[positions]).sum())
                s["cand_correct"] += int((top_cand == labels[positions]).sum())
                s["labelled"] += int(positions.sum())
    report = {}
    for name, s in stats.items():
        entry = {"max_abs_diff": s["max_abs_diff"], "mean_abs_diff": s["sum_abs"] / max(1, s["count"]),
                 "nonfinite": s["nonfinite"]}
        if s["positions"]:
            entry["top1_agreement"] = s["agree"] / s["positions"]
            entry["positions"] = s["positions"]
        if s["labelled"]:
            entry["reference_mlm_accuracy"] = s["ref_correct"] / s["labelled"]
            entry["mlm_accuracy"] = s["cand_correct"] / s["labelled"]
        report[name] = entry
    return report


def accuracy_problems(report: dict, precision: str) -> list[str]:
    """Which acceptance bars a `compare_graphs` report misses (empty: accepted)."""
    from .runtime.verify import thresholds_for

    limits = thresholds_for(precision)
    problems = []
    for name, entry in report.items():
        if entry["nonfinite"]:
            problems.append(f"{name}: {entry['nonfinite']} NaN/inf values")
        if precision == "fp32" and entry["max_abs_diff"] > limits.max_abs:
            problems.append(f"{name}: max abs difference {entry['max_abs_diff']:.2e} > {limits.max_abs:.0e}")
        bar = limits.min_top1
        if bar is not None and "top1_agreement" in entry and entry["top1_agreement"] < bar:
            problems.append(f"{name}: top-1 agreement {entry['top1_agreement']:.4%} < {bar:.1%}")
        if "mlm_accuracy" in entry:
            drop = entry["reference_mlm_accuracy"] - entry["mlm_accuracy"]
            if drop > MLM_ACCURACY_DROP[precision]:
                problems.append(f"{name}: MLM accuracy {entry['mlm_accuracy']:.2%} is {drop * 100:.2f} points "
                                f"below FP32's {entry['reference_mlm_accuracy']:.2%}")
    return problems


# ---------------------------------------------------------------------------- INT8 for ONNX Runtime CPU
#: Weight types of the dynamic recipe. ONNX Runtime's u8 x s8 kernels are its fast ones, but on
#: CPUs without int8 dot-product instructions (AVX2 only) they add pairs of products in int16
#: (vpmaddubsw), which saturates: measured on an AVX2-only EPYC, base hidden states fell to cosine
#: 0.9896, nsp to 63/64 pooled top-1. u8 x u8 kernels do not saturate (nsp 128/128 there) and ran
#: ~20% slower on AVX2 GEMMs; 7-bit s8 weights (`reduce_range`) did not saturate either but lost
#: more (nsp 125/128). "auto" picks s8 on CPUs with VNNI/AMX int8 and u8 elsewhere; the graph
#: records its choice, and `verify()` on the deployment machine shows a mismatch.
DYNAMIC_WEIGHT_TYPES = ("auto", "s8", "u8")


def dynamic_weight_type(requested: str = "auto") -> str:
    """'auto' -> 's8' on CPUs with int8 dot-product instructions, 'u8' elsewhere (see above)."""
    from .machine import has_int8_dot_product

    if requested not in DYNAMIC_WEIGHT_TYPES:
        raise PrecisionError(f"--int8-weights must be one of {', '.join(DYNAMIC_WEIGHT_TYPES)}, got {requested!r}")
    if requested != "auto":
        return requested
    return "s8" if has_int8_dot_product() else "u8"
def quantize_int8_dynamic(src: str | Path, output: str | Path, *, keep_float: Iterable[str] = (),
                          rescore: Iterable[str] = (), strict: bool = True, rescore_strict: bool | None = None,
                          weights: str = "auto", progress: Progress | None = None) -> PrecisionResult:
    """FP32 graph -> CPU INT8 graph: ONNX Runtime dynamic quantization of the Linear layers.

    Weights int8 per channel (`weights`: s8 symmetric or u8, see DYNAMIC_WEIGHT_TYPES), activations quantized per call (DynamicQuantizeLinear +
    MatMulInteger, which ONNX Runtime CPU fuses into its VNNI kernels). TensorRT cannot build it;
    static Q/DQ graphs run no faster than FP32 on ONNX Runtime CPU (benchmarks/results), hence a
    recipe of its own. Needs no calibration. Only MatMuls with a constant weight are quantized, so
    the attention products and the (transposed, tied) LM-head decoder stay in float; then the float
    MatMuls matching a `rescore` pattern get int8 scores with an exact top (`_rescored_int8`). The
    result lists every module left in float, whether by `keep_float` or by that rule, and the
    rescored ones. `strict`: every pattern must match (see resolve_keep_float); `rescore_strict`
    (default: `strict`) the same for `rescore`, whose modules must also have a constant weight.
    """
    from onnxruntime.quantization import QuantType, quantize_dynamic

    say = progress or (lambda message: None)
    start = time.perf_counter()
    src, output = Path(src), Path(output)
    graph = onnx.load(str(src), load_external_data=False)
    metadata = {p.key: p.value for p in graph.metadata_props}
    large = any(t.data_location == onnx.TensorProto.EXTERNAL for t in graph.graph.initializer)
    scopes = matmul_scopes(graph)
    excluded = resolve_keep_float(graph, keep_float, strict)
    rescore_strict = strict if rescore_strict is None else rescore_strict
    resolve_keep_float(graph, rescore, rescore_strict, option="--int8-rescore")  # typos fail before the slow part
    del graph
    weight_type = dynamic_weight_type(weights)
    say(f"int8 (dynamic, ONNX Runtime CPU, {weight_type} weights): quantizing {src}")
    stage = staging_dir(output.parent)
    try:
        staged = stage / "quantized.onnx"
        quantize_dynamic(str(src), str(staged), per_channel=True, op_types_to_quantize=["MatMul"],
                         weight_type=QuantType.QInt8 if weight_type == "s8" else QuantType.QUInt8, nodes_to_exclude=sorted(excluded),
                         use_external_data_format=large)
        model = _fuse_gelu(onnx.load(str(staged)))
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    rescored = _rescored_int8(model, rescore, rescore_strict, say, weight_type)
    float_nodes = {n.name for n in model.graph.node if n.op_type == "MatMul"}
    kept = sorted({scope for name, scope in scopes.items() if name in float_nodes})
    _set_metadata(model, metadata, precision="int8", int8_recipe="dynamic", int8_weights=weight_type,
                  int8_float_nodes=json.dumps(kept),
                  int8_rescore=json.dumps(rescored))
    _save(model, output)
    return PrecisionResult(output, "int8", time.perf_counter() - start, kept_float=kept,
                           details={"int8_recipe": "dynamic", "rescore": rescored,
                                                              "int8_weights": weight_type})


def _fuse_gelu(model: onnx.ModelProto) -> onnx.ModelProto:
    """GELU subgraphs -> ONNX Runtime's fused Gelu / FastGelu kernels, by its transformer optimizer.

    GELU fusions only: its attention fusion does not match dynamo-exported graphs, and its
    SkipLayerNormalization ran no faster here. The tanh GELU of the 345M preset is left unfused by
    ONNX Runtime's session optimizer; fused, the INT8 call at 1 x 128 is ~4% faster.
    """
    import logging

    from onnxruntime.transformers.fusion_options import FusionOptions
    from onnxruntime.transformers.optimizer import optimize_model

    options = FusionOptions("bert")
    for name in vars(options):
        if name.startswith("enable_") and name not in ("enable_gelu", "enable_bias_gelu"):
            setattr(options, name, False)
    optimizer_log = logging.getLogger("onnxruntime.transformers.optimizer")
    level = optimizer_log.level
    optimizer_log.setLevel(logging.ERROR)  # "model producer not matched": expected, ours is mbert-export
    try:
        fused = optimize_model(model, model_type="bert", num_heads=0, hidden_size=0, opt_level=0,
                               optimization_options=options).model
    finally:
        optimizer_log.setLevel(level)
    if not any(o.domain == "com.microsoft" for o in fused.opset_import):  # the fused ops' domain
        fused.opset_import.append(onnx.helper.make_opsetid("com.microsoft", 1))
    return fused


def _rescored_int8(model: onnx.ModelProto, patterns: Iterable[str], strict: bool, say: Progress, weight_type: str,
                   top: int = RESCORE_TOP) -> list[str]:
    """Rewrite the float MatMuls matching `patterns` as int8 scores with an exact top; returns their modules.

    Y = A W is computed by ONNX Runtime's int8 kernels (activation quantized per call, W per output
    channel), then each row's `top` largest entries are recomputed in FP32 from the float weight
    (TopK -> Gather of those weight columns -> MatMul -> ScatterElements). Made for the tied LM-head
    decoder, 15-20% of the 345M model's CPU time: in int8 alone it flips 1.4% of the demo model's
    masked top-1 predictions (ranking among near-tied vocabulary scores); rescored, the top `top`
    entries per token are exact, so top-1 and top-5 agree with FP32 wherever the int8 top `top`
    holds the true top-5. The other entries keep int8 error (they only enter softmax sums).
    Hand-written because no quantization tool offers it. Standard ONNX ops.
    """
    from onnx import TensorProto, helper, numpy_helper

    from .qdq import _quantize_weight, _weight_source

    chosen = resolve_keep_float(model, patterns, strict,
                                option="--int8-rescore (applies to MatMuls left in float, see --keep-float)")
    consumers: dict[str, int] = {}
    for node in model.graph.node:
        for name in node.input:
            consumers[name] = consumers.get(name, 0) + 1
    initializers = {t.name: t for t in model.graph.initializer}
    producers = {out: n for n in model.graph.node for out in n.output}
    done = []
    for node in [n for n in model.graph.node if n.name in chosen]:
        source = _weight_source(node.input[1], initializers, producers)
        if source is None:
            if strict:
                raise PrecisionError(f"--int8-rescore {chosen[node.name]!r}: its MatMul has no constant "
                                     "weight (attention products cannot be rescored)")
            continue
        name, transposed = source
        values = numpy_helper.to_array(initializers[name])
        weight, scale = _quantize_weight(values, transposed)
        zero = np.zeros(weight.shape[1], np.int8)
        if weight_type == "u8":  # the same values, offset by 128 (see DYNAMIC_WEIGHT_TYPES)
            weight = (weight.astype(np.int16) + 128).astype(np.uint8)
            zero = np.full(weight.shape[1], 128, np.uint8)
        p = f"{node.name}_rescored"
        model.graph.initializer.extend([
            numpy_helper.from_array(weight, p + "_weight"),
            numpy_helper.from_array(zero, p + "_weight_zero"),
            numpy_helper.from_array(scale, p + "_weight_scale"),
            numpy_helper.from_array(np.array([min(top, weight.shape[1])], np.int64), p + "_top"),
            numpy_helper.from_array(np.array([-1], np.int64), p + "_last_axis")])
        columns = name  # [N, K]: the rows Gather picks the top entries' weights from
        if not transposed:  # an untied [K, N] weight: add its transposed copy
            columns = p + "_columns"
            model.graph.initializer.append(numpy_helper.from_array(np.ascontiguousarray(values.T), columns))
        a, (y,) = node.input[0], node.output
        nodes = [
            helper.make_node("DynamicQuantizeLinear", [a], [p + "_a_q", p + "_a_scale", p + "_a_zero"]),
            helper.make_node("MatMulInteger", [p + "_a_q", p + "_weight", p + "_a_zero", p + "_weight_zero"],
                             [p + "_int"]),
            helper.make_node("Cast", [p + "_int"], [p + "_float"], to=TensorProto.FLOAT),
            helper.make_node("Mul", [p + "_a_scale", p + "_weight_scale"], [p + "_step"]),
            helper.make_node("Mul", [p + "_float", p + "_step"], [p + "_int8_scores"]),
            helper.make_node("TopK", [p + "_int8_scores", p + "_top"], [p + "_top_values", p + "_top_index"],
                             axis=-1),
            helper.make_node("Gather", [columns, p + "_top_index"], [p + "_top_weights"], axis=0),
            helper.make_node("Unsqueeze", [a, p + "_last_axis"], [p + "_a_column"]),
            helper.make_node("MatMul", [p + "_top_weights", p + "_a_column"], [p + "_exact_column"]),
            helper.make_node("Squeeze", [p + "_exact_column", p + "_last_axis"], [p + "_exact"]),
            helper.make_node("ScatterElements", [p + "_int8_scores", p + "_top_index", p + "_exact"], [y],
                             axis=-1),
        ]
        for index, new in enumerate(nodes):
            new.name = f"{p}_{index}_{new.op_type}"
        position = list(model.graph.node).index(node)
        model.graph.node.remove(node)
        for offset, new in enumerate(nodes):
            model.graph.node.insert(position + offset, new)
        if transposed and consumers.get(node.input[1]) == 1:  # the tied weight's Transpose, now unused
            model.graph.node.remove(producers[node.input[1]])
        done.append(chosen[node.name])
    if done:
        say(f"int8: {', '.join(sorted(done))} in int8 with its top {top} per token rescored in FP32")
    return sorted(done)
