"""Memory-lean INT8 Q/DQ pass (mbert_export.qdq): TensorRT's placement, ONNX Runtime's scales, both storages."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from mbert_export import qdq
from mbert_export.check import check_graph

ort = pytest.importorskip("onnxruntime")
pytest.importorskip("torch")

INPUTS = ("input_ids", "attention_mask", "token_type_ids")


@pytest.fixture(scope="module")
def graphs(tmp_path_factory):
    """The tiny MLM graph with external data (exporter threshold 0) and the same graph embedded."""
    import torch

    from mbert_export.config import preset_config
    from mbert_export.export import export_onnx
    from mbert_export.modeling import MegatronBertForMaskedLM

    torch.manual_seed(0)
    model = MegatronBertForMaskedLM(preset_config("tiny")).eval()
    root = tmp_path_factory.mktemp("qdq")
    external = root / "ext" / "model.onnx"
    export_onnx(model, "mlm", external, verify=False, external_data_threshold=0)
    embedded = root / "emb" / "model.onnx"
    embedded.parent.mkdir()
    onnx.save_model(onnx.load(str(external)), str(embedded))
    return {"external": external, "embedded": embedded, "root": root}


@pytest.fixture(scope="module")
def batches():
    """Calibration batches of varied lengths with an extra key the graph does not take."""
    from mbert_export.config import preset_config
    from mbert_export.export import sample_inputs
    from mbert_export.tasks import get_task

    config, task = preset_config("tiny"), get_task("mlm")
    out = [sample_inputs(config, task, 4, length, seed=i) for i, length in enumerate((8, 16, 32, 12))]
    for batch in out:
        batch["special_tokens_mask"] = np.zeros_like(batch["input_ids"])
    return out


@pytest.fixture(scope="module")
def quantized(graphs, batches):
    """method -> (path, nodes) of the external-data graph quantized with each calibration method."""
    out = {}
    for method in qdq.METHODS:
        path = graphs["root"] / f"int8-{method}" / "model.onnx"
        out[method] = path, qdq.quantize_int8_lean(graphs["external"], path, batches, method=method)
    return out


def run(path, batch):
    """The graph's own semantics: Q/DQ pairs run as written (no fusion into ONNX Runtime's integer
    kernels, whose u8 x s8 int16 sums saturate on AVX2-only CPUs: max |diff| 0.117 vs 0.04 allowed on
    an AVX2 EPYC; the graph is TensorRT's, which has no such kernel)."""
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return session.run(None, {k: batch[k] for k in INPUTS})[0]


def matmul_quantization(path) -> dict[tuple[str, int], tuple[onnx.NodeProto, np.ndarray, np.ndarray | None]]:
    """(MatMul name, input index) -> (DequantizeLinear feeding it, its scale, its int8 initializer or None)."""
    model = onnx.load(str(path))
    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    producers = {o: n for n in model.graph.node for o in n.output}
    out = {}
    for node in model.graph.node:
        if node.op_type == "MatMul":
            for index, name in enumerate(node.input):
                dq = producers.get(name)
                if dq is not None and dq.op_type == "DequantizeLinear":
                    out[(node.name, index)] = dq, inits[dq.input[1]], inits.get(dq.input[0])
    return out


def attention_matmuls(path) -> list[str]:
    from mbert_export.precision import matmul_scopes

    scopes = matmul_scopes(onnx.load(str(path), load_external_data=False))
    return [n for n, m in scopes.items() if m.endswith((".scores", ".context"))]


def test_quantized_graph_follows_tensorrt_rules(graphs, quantized, batches):
    path, nodes = quantized["max"]
    model = onnx.load(str(path))
    onnx.checker.check_model(model)
    assert check_graph(path) == []
    matmuls = [n.name for n in model.graph.node if n.op_type == "MatMul"]
    assert sorted(nodes) == sorted(matmuls) and len(nodes) == 18
    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    producers = {o: n for n in model.graph.node for o in n.output}
    for node in model.graph.node:
        if node.op_type in ("QuantizeLinear", "DequantizeLinear"):
            zero = inits[node.input[2]]
            assert zero.dtype == np.int8 and not zero.any(), node.name
            if node.op_type == "DequantizeLinear" and node.input[0] in inits:  # weight: per-channel, axis 1
                weight = inits[node.input[0]]
                assert weight.dtype == np.int8 and weight.ndim == 2
                assert [a.i for a in node.attribute if a.name == "axis"] == [1]
                assert inits[node.input[1]].shape == zero.shape == (weight.shape[1],)
                assert np.abs(weight).max() <= 127
            elif node.op_type == "DequantizeLinear":  # activation: fed by Q of the same scale
                q = producers[node.input[0]]
                assert q.op_type == "QuantizeLinear" and q.input[1:] == node.input[1:]
                assert inits[node.input[1]].shape == ()
    placed = matmul_quantization(path)
    assert set(placed) == {(n, i) for n in matmuls for i in (0, 1)}  # both inputs of every MatMul
    attention = attention_matmuls(path)
    assert len(attention) == 4 and all(placed[(n, i)][2] is None for n in attention for i in (0, 1))
    # one Q/DQ pair per tensor: the three QKV projections share their input's pair
    quantizers = [n.input[0] for n in model.graph.node if n.op_type == "QuantizeLinear"]
    assert len(quantizers) == len(set(quantizers)) == 18  # 22 activation inputs, 18 distinct tensors
    assert {p.key for p in model.metadata_props} >= {"mbert_export.task", "mbert_export.config"}
    for batch in batches:
        got, ref = run(path, batch), run(graphs["external"], batch)
        assert np.isfinite(got).all() and np.abs(got - ref).max() < 0.1 * np.abs(ref).max()


def test_max_scales_equal_onnxruntime_quantize_static(graphs, quantized, batches, tmp_path):
    from onnxruntime.quantization import (CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType,
                                          quantize_static)

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.batches = iter(batches)

        def get_next(self):
            batch = next(self.batches, None)
            return None if batch is None else {k: batch[k] for k in INPUTS}

    oracle = tmp_path / "ort.onnx"
    quantize_static(str(graphs["embedded"]), str(oracle), Reader(), quant_format=QuantFormat.QDQ,
                    op_types_to_quantize=["MatMul"], per_channel=True, activation_type=QuantType.QInt8,
                    weight_type=QuantType.QInt8, calibrate_method=CalibrationMethod.MinMax,
                    extra_options={"ActivationSymmetric": True, "WeightSymmetric": True,
                                   # as TensorRT's recipe: Q/DQ on MatMul inputs only, not outputs
                                   "OpTypesToExcludeOutputQuantization": ["MatMul"]})
    ours, theirs = matmul_quantization(quantized["max"][0]), matmul_quantization(oracle)
    assert set(ours) == set(theirs) and len(ours) == 36
    for key, (_, scale, weight) in theirs.items():
        np.testing.assert_allclose(ours[key][1], scale, rtol=1e-6, err_msg=str(key))
        if weight is not None:
            np.testing.assert_array_equal(ours[key][2], weight, err_msg=str(key))
    for batch in batches:
        np.testing.assert_allclose(run(quantized["max"][0], batch), run(oracle, batch), atol=1e-4)


def test_external_data_gives_the_embedded_result(graphs, quantized, batches, tmp_path):
    out = tmp_path / "emb-int8" / "model.onnx"
    qdq.quantize_int8_lean(graphs["embedded"], out, batches, method="max")
    ext_path = quantized["max"][0]
    assert sorted(p.name for p in out.parent.iterdir()) == ["model.onnx"]
    assert sorted(p.name for p in ext_path.parent.iterdir()) == ["model.onnx", "model.onnx.data"]
    embedded = {t.name: numpy_helper.to_array(t) for t in onnx.load(str(out)).graph.initializer}
    external = {t.name: numpy_helper.to_array(t, base_dir=str(ext_path.parent))
                for t in onnx.load(str(ext_path)).graph.initializer}
    assert embedded.keys() == external.keys()
    for name, value in embedded.items():
        np.testing.assert_array_equal(value, external[name], err_msg=name)
    stored = onnx.load(str(ext_path), load_external_data=False)
    assert any(t.data_location == onnx.TensorProto.EXTERNAL for t in stored.graph.initializer)
    for batch in batches:
        np.testing.assert_array_equal(run(out, batch), run(ext_path, batch))


def test_histogram_methods_clip_at_or_below_max(graphs, quantized, batches):
    model = onnx.load(str(graphs["external"]), load_external_data=False)
    nodes = [n.name for n in model.graph.node if n.op_type == "MatMul"]
    tensors = qdq.activation_tensors(model, nodes)
    maxima = qdq.calibrate(graphs["external"], batches, tensors, method="max")
    for method in ("entropy", "percentile"):
        amax = qdq.calibrate(graphs["external"], batches, tensors, method=method, percentile=99.9)
        assert amax.keys() == maxima.keys()
        for t in tensors:
            assert 0 < amax[t] <= maxima[t] * (1 + 1e-5), (method, t)
        assert any(amax[t] < maxima[t] * 0.999 for t in tensors), method
        assert np.isfinite(run(quantized[method][0], batches[0])).all()


def test_histogram_rebinning_is_exact():
    rng = np.random.default_rng(0)
    first, second = rng.normal(size=10000).astype(np.float32), 40 * rng.normal(size=10000).astype(np.float32)
    hist = qdq._Histogram()
    hist.add(np.zeros(7, np.float32))
    hist.add(first)
    hist.add(second)
    assert len(hist.counts) <= qdq.HIST_BINS and hist.counts.sum() == 20007
    expected = np.bincount(np.minimum((np.abs(np.concatenate([first, second])) / hist.width).astype(int),
                                      len(hist.counts) - 1), minlength=len(hist.counts))
    expected[0] += 7
    assert np.abs(hist.counts - expected).sum() <= 4  # only float rounding at bin edges may differ
    assert hist.percentile(100) == hist.amax == np.abs(second).max()
    assert hist.percentile(50) < hist.amax / 10 and hist.entropy() <= hist.amax


def test_keep_float_nodes_and_transposed_weights(graphs, batches, tmp_path):
    """A decoder weight reached through Transpose(initializer), as in the 345M graph, is quantized
    transposed (same result as the folded weight); kept nodes get no Q/DQ."""
    model = onnx.load(str(graphs["embedded"]))
    decoder = [n for n in model.graph.node if n.op_type == "MatMul"][-1]
    weight = next(t for t in model.graph.initializer if t.name == decoder.input[1])
    table = numpy_helper.from_array(numpy_helper.to_array(weight).T.copy(), "decoder_table")
    model.graph.initializer.remove(weight)
    model.graph.initializer.append(table)
    index = list(model.graph.node).index(decoder)
    model.graph.node.insert(index, onnx.helper.make_node("Transpose", ["decoder_table"], [decoder.input[1]],
                                                         name="decoder_transpose", perm=[1, 0]))
    transposed = tmp_path / "t" / "model.onnx"
    transposed.parent.mkdir()
    onnx.save_model(model, str(transposed))
    folded_out, transposed_out = tmp_path / "f8" / "model.onnx", tmp_path / "t8" / "model.onnx"
    qdq.quantize_int8_lean(graphs["embedded"], folded_out, batches)
    qdq.quantize_int8_lean(transposed, transposed_out, batches)
    result = onnx.load(str(transposed_out))
    assert "decoder_transpose" not in {n.name for n in result.graph.node}
    assert "decoder_table" not in {t.name for t in result.graph.initializer}  # nothing else reads it
    for batch in batches:
        np.testing.assert_array_equal(run(transposed_out, batch), run(folded_out, batch))

    kept = tmp_path / "k8" / "model.onnx"
    done = qdq.quantize_int8_lean(graphs["external"], kept, batches, keep_float_nodes={decoder.name})
    assert decoder.name not in done and len(done) == 17
    placed = matmul_quantization(kept)
    assert (decoder.name, 0) not in placed and (decoder.name, 1) not in placed
    assert np.isfinite(run(kept, batches[0])).all()


def test_bad_requests_say_what_to_do(graphs, batches, tmp_path):
    with pytest.raises(qdq.QdqError, match="method"):
        qdq.calibrate(graphs["external"], batches, [], method="minmax")
    with pytest.raises(qdq.QdqError, match="not a MatMul"):
        qdq.quantize(graphs["external"], tmp_path / "x.onnx", {}, nodes=["nope"])
    model = onnx.load(str(graphs["external"]), load_external_data=False)
    first = next(n.name for n in model.graph.node if n.op_type == "MatMul")
    with pytest.raises(qdq.QdqError, match="calibrate"):
        qdq.quantize(graphs["external"], tmp_path / "x.onnx", {}, nodes=[first])
    assert not (tmp_path / "x.onnx").exists()
