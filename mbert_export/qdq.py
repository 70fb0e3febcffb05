"""Memory-lean explicit INT8 quantization (QuantizeLinear/DequantizeLinear), the form TensorRT builds.

Written by hand because no library does it within the memory bar. ONNX Runtime's `quantize_static`
(QDQ, symmetric, per-channel, MatMul only) peaks at 11 GB RSS on the 345M preset's FP32 graph
(1.24 GiB of weights) with 4 calibration batches of 8 x <=256 tokens and at 20 GB with 16: its
pre-processing loads the weights (3.35 GB), its calibrator keeps every batch's full model outputs,
8x256x29056 logits included (7.4 GB), and its quantizer holds the float and the int8 model at once
(11 GB). NVIDIA ModelOpt does the same job but pins onnxruntime-gpu and an older onnx (DESIGN.md).

This module does the same placement with a small footprint (benchmarks/int8_memory.py):

- `calibrate` loads the graph without its weights, keeps only the nodes the calibrated tensors
  need (the logits are never computed), and adds outputs: `ReduceMax(Abs(x))` per tensor for "max"
  (a running max over batches), or the raw tensor for "entropy"/"percentile", folded batch by batch
  into one |x| histogram per tensor (batches are run a few rows at a time and never kept). One ONNX
  Runtime CPU session at ORT_ENABLE_BASIC, loaded from the graph's bytes with its external-data
  folder set to the source's, so no copy of the graph or the weights is written.
- `quantize` puts Q/DQ on the inputs of the chosen MatMuls: per-tensor int8 Q -> DQ on every
  activation input (scale amax/127, zero point 0; one pair per tensor however many MatMuls read
  it, and on both operands of the attention products), and int8 per-channel weights
  (axis 1 of [K, N], scale max|W[:, n]|/127) feeding DequantizeLinear(axis=1). A weight reached
  through Transpose(initializer) (the 345M decoder, tied to the word embeddings) is quantized in its
  transposed [K, N] form; the float table stays for the embedding Gather. Weights are streamed one
  tensor at a time from the source's external-data file into ONE new `<output>.data` file, so the
  peak is about the largest tensor plus the graph proto. Graphs with embedded weights stay in memory.

TensorRT's rules (DESIGN.md "TensorRT today"): symmetric, zero point 0, per-channel weights,
per-tensor activations, opset >= 13. Scales match `quantize_static` (MinMax, symmetric, per-channel,
QInt8) exactly on the same data; tests/test_qdq.py checks that against it as an oracle.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Callable, Iterable

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from .fileio import publish_onnx, staging_dir

Progress = Callable[[str], None]
METHODS = ("max", "entropy", "percentile")
QMAX = 127  # symmetric int8: [-127, 127], zero point 0
#: Histogram resolution: between HIST_BINS/2 and HIST_BINS bins of equal width cover [0, max|x|]
#: (bins are merged in pairs when the range grows, so re-binning is exact).
HIST_BINS = 2048
#: Histogram methods run each batch in chunks of about this many tokens (rows x sequence), since
#: every calibrated tensor of a run is held at once (345M: ~345 MB per 256-token row).
TOKENS_PER_RUN = 256
#: External-data tensors start at multiples of this (page size; lets runtimes mmap them).
ALIGN = 4096
#: New tensors smaller than this stay inside the .onnx when the output has external data.
EMBED_BELOW = 1024
MIN_OPSET = 13


class QdqError(ValueError):
    """A quantization request that cannot run as asked; the message says what to do."""


def _say(progress: Progress | None) -> Progress:
    return progress or (lambda message: None)


def _opset(model: onnx.ModelProto) -> int:
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)


def _weight_source(name: str, inits: dict, producers: dict) -> tuple[str, bool] | None:
    """(initializer name, transposed) when MatMul input `name` is a constant 2-D weight, else None.

    A weight is an initializer [K, N], or Transpose(perm=[1, 0]) of an initializer [N, K].
    """
    if name in inits:
        return name, False
    node = producers.get(name)
    if node is not None and node.op_type == "Transpose" and node.input[0] in inits:
        perm = next((list(a.ints) for a in node.attribute if a.name == "perm"), [1, 0])
        if len(inits[node.input[0]].dims) == 2 and perm == [1, 0]:
            return node.input[0], True
    return None


def _matmul_inputs(model: onnx.ModelProto, nodes: Iterable[str]):
    """For each named MatMul: (node index, [(input index, tensor, weight source or None), ...])."""
    inits = {i.name: i for i in model.graph.initializer}
    producers = {o: n for n in model.graph.node for o in n.output}
    position = {n.name: k for k, n in enumerate(model.graph.node) if n.name}
    out = []
    for name in nodes:
        k = position.get(name)
        if k is None or model.graph.node[k].op_type != "MatMul":
            raise QdqError(f"node {name!r} is not a MatMul of the graph")
        node = model.graph.node[k]
        out.append((k, [(i, t, _weight_source(t, inits, producers)) for i, t in enumerate(node.input)]))
    return out


def activation_tensors(model: onnx.ModelProto, nodes: Iterable[str]) -> list[str]:
    """The non-constant inputs of the MatMuls `nodes` (the tensors to calibrate), in graph order."""
    seen: dict[str, None] = {}
    for _, inputs in _matmul_inputs(model, nodes):
        for _, tensor, weight in inputs:
            if weight is None:
                seen.setdefault(tensor)
    return list(seen)


# ---------------------------------------------------------------------------- calibration
class _Histogram:
    """|x| histogram with equal bins over [0, max|x|], updated batch by batch."""

    def __init__(self):
        self.counts: np.ndarray | None = None
        self.width = 0.0
        self.amax = 0.0
        self.zeros = 0  # values seen while every value so far was 0 (no range yet)

    def add(self, x: np.ndarray) -> None:
        a = np.abs(x.ravel())
        if not a.size:
            return
        self.amax = max(self.amax, float(a.max()))
        if self.amax == 0.0:
            self.zeros += a.size
            return
        if self.counts is None:
            self.width = self.amax / (HIST_BINS // 2)
            self.counts = np.zeros(HIST_BINS // 2 + 1, dtype=np.int64)
            self.counts[0] += self.zeros
        while int(self.amax / self.width) + 1 > HIST_BINS:  # merge pairs: exact re-binning
            counts = self.counts if len(self.counts) % 2 == 0 else np.append(self.counts, 0)
            self.counts, self.width = counts.reshape(-1, 2).sum(axis=1), self.width * 2
        needed = int(self.amax / self.width) + 1
        if needed > len(self.counts):
            self.counts = np.append(self.counts, np.zeros(needed - len(self.counts), dtype=np.int64))
        index = (a * np.float32(1.0 / self.width)).astype(np.int32)
        np.minimum(index, len(self.counts) - 1, out=index)
        self.counts += np.bincount(index, minlength=len(self.counts))

    def percentile(self, percent: float) -> float:
        if self.counts is None:
            return self.amax
        cdf = np.cumsum(self.counts) / self.counts.sum()
        index = int(np.searchsorted(cdf, percent / 100.0))
        return min(self.amax, (index + 1) * self.width)

    def entropy(self, quant_bins: int = QMAX + 1) -> float:
        """TensorRT's entropy calibration: the clipping threshold whose 128-level quantization of the
        clipped distribution has the least KL divergence from it (outliers folded into the last bin)."""
        if self.counts is None or len(self.counts) <= quant_bins:
            return self.amax
        hist = self.counts.astype(np.float64)
        tail = np.cumsum(hist[::-1])[::-1]  # tail[i] = sum(hist[i:])
        best, best_i = np.inf, len(hist)
        for i in range(quant_bins, len(hist) + 1):
            p = hist[:i].copy()
            if i < len(hist):
                p[-1] += tail[i]
            nonzero = p != 0
            starts = (np.arange(quant_bins) * i) // quant_bins
            sums = np.add.reduceat(hist[:i], starts)
            used = np.add.reduceat(nonzero.astype(np.float64), starts)
            per_bin = np.divide(sums, used, out=np.zeros_like(sums), where=used > 0)
            q = np.repeat(per_bin, np.diff(np.append(starts, i))) * nonzero
            p_sum, q_sum = p.sum(), q.sum()
            if q_sum == 0:
                continue
            p, q = p[nonzero] / p_sum, np.maximum(q[nonzero] / q_sum, 1e-12)
            kl = float(np.sum(p * np.log(p / q)))
            if kl < best:
                best, best_i = kl, i
        return min(self.amax, (best_i + 0.5) * self.width)


def _replace(field, items) -> None:
    """Set a repeated proto field to `items` (copied first: they may be elements of `field`)."""
    copies = []
    for item in items:
        copy = type(item)()
        copy.CopyFrom(item)
        copies.append(copy)
    del field[:]
    field.extend(copies)


def _prune(graph: onnx.GraphProto, outputs: list[str]) -> None:
    """Keep only the nodes and initializers the `outputs` depend on."""
    needed, keep = set(outputs), []
    for node in reversed(graph.node):
        if any(o in needed for o in node.output):
            keep.append(node)
            needed.update(i for i in node.input if i)
            for attr in node.attribute:  # control flow: keep whatever the subgraphs read
                for sub in list(attr.g.node if attr.HasField("g") else []) + [n for g in attr.graphs for n in g.node]:
                    needed.update(sub.input)
    _replace(graph.node, reversed(keep))
    _replace(graph.initializer, [t for t in graph.initializer if t.name in needed])
    _replace(graph.value_info, [v for v in graph.value_info if v.name in needed])


def _session(model: onnx.ModelProto, folder: Path):
    """One CPU session on the in-memory graph; external data resolves against `folder`."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    options.enable_cpu_mem_arena = False  # give activation memory back between runs
    options.enable_mem_pattern = False  # shapes vary from batch to batch
    # Run nodes in graph order, so each ReduceMax follows its tensor's producer. The default order
    # keeps every calibrated tensor alive to the end (345M, 8 x 256 tokens: 4.2 GB instead of 1.7 GB).
    options.execution_order = ort.ExecutionOrder.PRIORITY_BASED
    options.log_severity_level = 3
    options.add_session_config_entry("session.model_external_initializers_file_folder_path", str(folder))
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


def _chunks(feeds: dict[str, np.ndarray], rows: int):
    total = next(iter(feeds.values())).shape[0]
    for start in range(0, total, rows):
        yield {k: v[start:start + rows] for k, v in feeds.items()}


def calibrate(model_path: str | Path, batches: Iterable[dict[str, np.ndarray]], tensors: Iterable[str],
              method: str = "max", percentile: float = 99.999,
              progress: Progress | None = None) -> dict[str, float]:
    """Tensor name -> amax (clipping threshold of |x|) over `batches` (feed dicts, any sequence length).

    "max": max |x|; "percentile": the `percentile` of |x|; "entropy": TensorRT's KL-divergence
    threshold. Weights are not loaded into Python; ONNX Runtime reads them from the external-data file.
    """
    say = _say(progress)
    if method not in METHODS:
        raise QdqError(f"unknown calibration method {method!r}; choose one of {', '.join(METHODS)}")
    model_path = Path(model_path)
    model = onnx.load(str(model_path), load_external_data=False)
    graph = model.graph
    tensors = list(dict.fromkeys(tensors))
    known = {o for n in graph.node for o in n.output} | {i.name for i in graph.input}
    missing = [t for t in tensors if t not in known]
    if missing:
        raise QdqError(f"tensors not produced by the graph: {', '.join(missing[:5])}")
    if method == "max":
        # Each reduction goes right after the tensor's producer so that ONNX Runtime runs it (and frees
        # the tensor) at once; appended at the end, every calibrated tensor would live to the end.
        reduce = {t: [helper.make_node("Abs", [t], [f"{t}__calib_abs"], name=f"{t}__calib_abs"),
                      helper.make_node("ReduceMax", [f"{t}__calib_abs"], [f"{t}__calib_amax"],
                                       name=f"{t}__calib_amax", keepdims=0)] for t in tensors}
        ordered = [n for t in tensors if t in {i.name for i in graph.input} for n in reduce.pop(t)]
        for node in graph.node:
            ordered.append(node)
            ordered += [n for o in node.output if o in reduce for n in reduce.pop(o)]
        _replace(graph.node, ordered)
        outputs = [f"{t}__calib_amax" for t in tensors]
        value_infos = [helper.make_tensor_value_info(o, TensorProto.FLOAT, []) for o in outputs]
    else:
        outputs = tensors
        value_infos = [helper.make_tensor_value_info(t, TensorProto.FLOAT, None) for t in tensors]
    del graph.output[:]
    graph.output.extend(value_infos)
    _prune(graph, outputs)
    input_names = [i.name for i in graph.input if i.name not in {t.name for t in graph.initializer}]
    say(f"int8: calibrating {len(tensors)} tensors ({method}); {len(graph.node)} nodes kept")
    session = _session(model, model_path.parent)
    del model, graph
    amax = dict.fromkeys(tensors, 0.0)
    hists = {t: _Histogram() for t in tensors} if method != "max" else {}
    count, start = 0, time.perf_counter()
    for count, batch in enumerate(batches, 1):
        absent = [n for n in input_names if n not in batch]
        if absent:
            raise QdqError(f"calibration batch {count} lacks the graph inputs {', '.join(absent)}")
        feeds = {n: batch[n] for n in input_names}
        if method == "max":
            for t, value in zip(tensors, session.run(outputs, feeds)):
                amax[t] = max(amax[t], float(value))
        else:
            seq = max(1, next(iter(feeds.values())).shape[-1])
            for chunk in _chunks(feeds, max(1, TOKENS_PER_RUN // seq)):
                values = session.run(outputs, chunk)
                for t in tensors:
                    hists[t].add(values.pop(0))
                del values
        say(f"int8: calibration batch {count} done ({time.perf_counter() - start:.0f} s)")
    if not count:
        raise QdqError("calibration needs at least one batch")
    if method == "percentile":
        amax = {t: h.percentile(percentile) for t, h in hists.items()}
    elif method == "entropy":
        say("int8: entropy threshold search")
        amax = {t: h.entropy() for t, h in hists.items()}
    return amax


# ---------------------------------------------------------------------------- quantization
def _external_info(tensor: TensorProto) -> dict[str, str]:
    return {e.key: e.value for e in tensor.external_data}


def _source_array(tensor: TensorProto, folder: Path) -> np.ndarray:
    """The tensor's values: a read-only memmap of its bytes when external, else from the proto."""
    if tensor.data_location != TensorProto.EXTERNAL:
        return numpy_helper.to_array(tensor)
    info = _external_info(tensor)
    dtype = np.dtype(helper.tensor_dtype_to_np_dtype(tensor.data_type))
    count = int(np.prod(tensor.dims, dtype=np.int64))
    offset = int(info.get("offset", 0))
    if count == 0:
        return np.zeros(tuple(tensor.dims), dtype)
    return np.memmap(folder / info["location"], dtype=dtype, mode="r", offset=offset, shape=tuple(tensor.dims))


class _Sink:
    """Where output tensors go: appended to one external-data file, or embedded in the proto."""

    def __init__(self, data_path: Path | None):
        self.path = data_path
        self.file = open(data_path, "wb") if data_path else None

    def put(self, name: str, array: np.ndarray, like: TensorProto | None = None) -> TensorProto:
        array = array if array.flags.c_contiguous else np.ascontiguousarray(array)  # keeps 0-d scalars 0-d
        if self.file is None or array.nbytes < EMBED_BELOW:
            tensor = numpy_helper.from_array(array, name)
            return tensor
        position = self.file.tell()
        if position % ALIGN:
            self.file.write(b"\0" * (ALIGN - position % ALIGN))
            position = self.file.tell()
        self.file.write(memoryview(array.reshape(-1)).cast("B"))
        tensor = TensorProto()
        if like is not None:
            tensor.CopyFrom(like)
            tensor.ClearField("raw_data")
            del tensor.external_data[:]
        else:
            tensor.dims.extend(array.shape)
            tensor.data_type = helper.np_dtype_to_tensor_dtype(array.dtype)
        tensor.name = name
        tensor.data_location = TensorProto.EXTERNAL
        for key, value in (("location", self.path.name), ("offset", str(position)), ("length", str(array.nbytes))):
            tensor.external_data.add(key=key, value=value)
        return tensor

    def close(self) -> None:
        if self.file is not None:
            self.file.flush()
            os.fsync(self.file.fileno())
            self.file.close()


def _unique(name: str, taken: set[str]) -> str:
    candidate, n = name, 1
    while candidate in taken:
        candidate, n = f"{name}_{n}", n + 1
    taken.add(candidate)
    return candidate


def _quantize_weight(values: np.ndarray, transposed: bool) -> tuple[np.ndarray, np.ndarray]:
    """float [K, N] (or [N, K] when `transposed`) -> int8 [K, N] and per-column scales [N]."""
    w = np.asarray(values, dtype=np.float32)
    w = w.T if transposed else w
    amax = np.maximum(w.max(axis=0), -w.min(axis=0)).astype(np.float64)
    scale = (amax / QMAX).astype(np.float32)
    scale[scale < np.finfo(np.float32).tiny] = 1.0  # an all-zero column (as ONNX Runtime does)
    q = w / scale
    np.rint(q, out=q)
    np.clip(q, -QMAX, QMAX, out=q)
    return np.ascontiguousarray(q.astype(np.int8)), scale


def quantize(model_path: str | Path, output_path: str | Path, amax: dict[str, float], *, nodes: Iterable[str],
             progress: Progress | None = None, metadata: dict[str, str] | None = None) -> list[str]:
    """Write `output_path`: the graph with Q/DQ on both inputs of every MatMul in `nodes`.

    `amax` gives the clipping threshold of every activation input (see `calibrate`). Weights
    become int8 per-channel initializers. `metadata` entries are added to the graph's
    metadata_props (which are kept). Returns the quantized node names.
    """
    say = _say(progress)
    model_path, output_path = Path(model_path), Path(output_path)
    say(f"int8: quantizing into {output_path}")
    if output_path.suffix != ".onnx":
        raise QdqError(f"output {output_path} should end in .onnx")
    nodes = list(dict.fromkeys(nodes))
    model = onnx.load(str(model_path), load_external_data=False)
    if _opset(model) < MIN_OPSET:
        raise QdqError(f"opset {_opset(model)} < {MIN_OPSET}: Q/DQ per-channel needs opset >= 13; re-export")
    graph = model.graph
    plan = _matmul_inputs(model, nodes)
    missing = [t for _, inputs in plan for _, t, w in inputs if w is None and t not in amax]
    if missing:
        raise QdqError(f"no calibrated amax for {', '.join(sorted(set(missing))[:5])}; calibrate them first")
    taken = {o for n in graph.node for o in n.output} | {i.name for i in graph.initializer} | \
        {i.name for i in graph.input} | {n.name for n in graph.node}
    new_inits: list[tuple[str, object]] = []  # (name, numpy array) or (name, ("weight", source, transposed))
    act_dq: dict[str, str] = {}
    weight_dq: dict[tuple[str, bool], str] = {}
    inserts: dict[int, list[onnx.NodeProto]] = {}  # node index -> Q/DQ nodes to put before it
    zero = np.zeros((), dtype=np.int8)
    nodes_copy = [onnx.NodeProto() for _ in graph.node]
    for copy, node in zip(nodes_copy, graph.node):
        copy.CopyFrom(node)
    for k, inputs in plan:
        node = nodes_copy[k]
        before = inserts.setdefault(k, [])
        for index, tensor, weight in inputs:
            if weight is None:
                if tensor not in act_dq:
                    scale = np.array(max(float(amax[tensor]), 0.0) / QMAX, dtype=np.float32)
                    if scale < np.finfo(np.float32).tiny:
                        scale = np.array(1.0, dtype=np.float32)
                    s, z = _unique(f"{tensor}_scale", taken), _unique(f"{tensor}_zero_point", taken)
                    q, dq = _unique(f"{tensor}_quantized", taken), _unique(f"{tensor}_dequantized", taken)
                    new_inits += [(s, scale), (z, zero)]
                    before += [helper.make_node("QuantizeLinear", [tensor, s, z], [q], name=_unique(f"{q}_Q", taken)),
                               helper.make_node("DequantizeLinear", [q, s, z], [dq], name=_unique(f"{dq}_DQ", taken))]
                    act_dq[tensor] = dq
                node.input[index] = act_dq[tensor]
            else:
                if weight not in weight_dq:
                    base = weight[0] + ("_transposed" if weight[1] else "")
                    w, s = _unique(f"{base}_quantized", taken), _unique(f"{base}_scale", taken)
                    z, dq = _unique(f"{base}_zero_point", taken), _unique(f"{base}_dequantized", taken)
                    new_inits.append((w, ("weight", weight, s, z)))
                    before.append(helper.make_node("DequantizeLinear", [w, s, z], [dq], name=_unique(f"{dq}_DQ", taken),
                                                   axis=1))
                    weight_dq[weight] = dq
                node.input[index] = weight_dq[weight]
    rebuilt = []
    for k, node in enumerate(nodes_copy):
        rebuilt += inserts.get(k, [])
        rebuilt.append(node)
    # Drop what the rewiring left unused (float weights now stored as int8, bypassed Transposes).
    graph_outputs = {o.name for o in graph.output}
    while True:
        used = {i for n in rebuilt for i in n.input} | graph_outputs
        alive = [n for n in rebuilt if n.op_type != "Transpose" or any(o in used for o in n.output)]
        if len(alive) == len(rebuilt):
            break
        rebuilt = alive
    used = {i for n in rebuilt for i in n.input} | graph_outputs
    _replace(graph.node, rebuilt)
    produced = {o for n in rebuilt for o in n.output} | {i.name for i in graph.input}
    _replace(graph.value_info, [v for v in graph.value_info if v.name in produced])
    if metadata:
        props = {p.key: p.value for p in model.metadata_props}
        props.update(metadata)
        del model.metadata_props[:]
        for key, value in props.items():
            model.metadata_props.add(key=key, value=value)

    source_inits = [TensorProto() for _ in graph.initializer]
    for copy, tensor in zip(source_inits, graph.initializer):
        copy.CopyFrom(tensor)
    del graph.initializer[:]
    by_name = {t.name: t for t in source_inits}
    external = any(t.data_location == TensorProto.EXTERNAL for t in source_inits)
    folder = model_path.parent
    stage = staging_dir(output_path.parent)
    try:
        staged = stage / output_path.name
        sink = _Sink(stage / (output_path.name + ".data") if external else None)
        try:
            out_inits = []
            for tensor in source_inits:  # copy the float tensors still used, one at a time
                if tensor.name not in used:
                    continue
                if tensor.data_location == TensorProto.EXTERNAL:
                    values = _source_array(tensor, folder)
                    out_inits.append(sink.put(tensor.name, values, like=tensor))
                    del values
                else:
                    out_inits.append(tensor)
            done = 0
            for name, item in new_inits:  # quantize weights, one at a time
                if isinstance(item, np.ndarray):
                    out_inits.append(sink.put(name, item))
                    continue
                _, (source, transposed), scale_name, zero_name = item
                values = _source_array(by_name[source], folder)
                if values.ndim != 2:
                    raise QdqError(f"weight {source} has shape {list(values.shape)}; only 2-D weights are supported")
                q, scale = _quantize_weight(values, transposed)
                del values
                out_inits += [sink.put(name, q), sink.put(scale_name, scale),
                              sink.put(zero_name, np.zeros(scale.shape, dtype=np.int8))]
                del q
                done += 1
                if done % 24 == 0:
                    say(f"int8: {done} weights quantized")
        finally:
            sink.close()
        graph.initializer.extend(out_inits)
        onnx.save_model(model, str(staged))
        publish_onnx(staged, output_path)
    finally:
        import shutil

        shutil.rmtree(stage, ignore_errors=True)
    say(f"int8: wrote {output_path} ({len(act_dq)} activation Q/DQ pairs, {len(weight_dq)} int8 weights)")
    return nodes


def quantize_int8_lean(src: str | Path, output: str | Path, batches: Iterable[dict[str, np.ndarray]], *,
                       method: str = "max", keep_float_nodes: Iterable[str] = (), percentile: float = 99.999,
                       progress: Progress | None = None, metadata: dict[str, str] | None = None) -> list[str]:
    """Calibrate and quantize every MatMul of `src` except `keep_float_nodes`; returns the nodes quantized."""
    model = onnx.load(str(src), load_external_data=False)
    keep = set(keep_float_nodes)
    nodes = [n.name for n in model.graph.node if n.op_type == "MatMul" and n.name not in keep]
    if not nodes:
        raise QdqError("no MatMul left to quantize")
    tensors = activation_tensors(model, nodes)
    del model
    amax = calibrate(src, batches, tensors, method=method, percentile=percentile, progress=progress)
    return quantize(src, output, amax, nodes=nodes, progress=progress, metadata=metadata)
