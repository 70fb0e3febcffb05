"""The parity suite: every task x precision x backend x several shapes against the PyTorch reference.

Each task runs on the demo encoder with a trained head (tests/demo_heads.py; random heads give
near-tied logits no reduced precision keeps). For every task the FP32 graph is exported once and
turned into the FP16 graph, TensorRT's INT8 Q/DQ graph and ONNX Runtime CPU's dynamic INT8 graph;
`mbert_export.parity.compare_checkpoint` then runs the reference and the artifact on held-out
sentences and on random shapes from 1 x 1 to the artifact's maximum, and judges them with the
precision's thresholds (fp32: 1e-4 max abs; fp16: top-1 >= 99.9 %; int8: top-1 >= 99 %, pooled
over the held-out text; cosine and NaN/inf on every set). ONNX Runtime CPU runs here, and
OpenVINO CPU on the FP32 graph (at f32, and bf16 where the CPU has it) and the INT8 Q/DQ graph; the
TensorRT engines of the same graphs are the `gpu`-marked tests at the end.
"""

from __future__ import annotations

import pytest

pytest.importorskip("torch")
pytest.importorskip("onnxruntime")

from demo_heads import ARTIFACT_MAX_SEQ as MAX_SEQ  # noqa: E402
from demo_heads import GRAPHS, OPENVINO_ROWS  # noqa: E402
from demo_heads import PARITY_SAMPLES as SAMPLES  # noqa: E402

from mbert_export.parity import POOLED_TEXT, compare_checkpoint  # noqa: E402
from mbert_export.tasks import TASKS  # noqa: E402


@pytest.fixture(scope="module")
def reference_cache():
    """`reference_cache(task)`: one dict shared by the rows of one task (the reference model and its
    outputs are the same for every graph of a task); the previous task's is dropped."""
    held: dict[str, dict] = {}

    def for_task(task: str) -> dict:
        if task not in held:
            held.clear()
            held[task] = {}
        return held[task]

    return for_task


@pytest.mark.parametrize("graph", GRAPHS)
@pytest.mark.parametrize("task", list(TASKS))
def test_onnxruntime_artifact_matches_the_reference(task_artifacts, reference_cache, task, graph, tmp_path):
    checkpoint, artifacts = task_artifacts(task)
    result = compare_checkpoint(checkpoint, artifacts[graph], samples=SAMPLES, report=tmp_path / "parity.json",
                                reference_cache=reference_cache(task))
    failures = [f"{r['inputs']} {r['output']}: {f}" for r in result["rows"] for f in r["failures"]]
    assert result["passed"], "\n".join(failures)
    assert result["precision"] == graph.split("-")[0]
    inputs = {r["inputs"] for r in result["rows"]}
    assert "random batch 1 x seq 1" in inputs and any(f"x seq {MAX_SEQ}" in name for name in inputs)
    assert sum(name.startswith("held-out text") for name in inputs) >= 2
    outputs = set(TASKS[task].output_names)
    assert {r["output"] for r in result["rows"]} == outputs
    logits = {name for name in outputs if name.endswith("logits")}
    pooled = {r["output"]: r for r in result["rows"] if r["inputs"] == POOLED_TEXT}
    assert set(pooled) == logits  # every logits output judged on held-out text
    assert all(r["top1_count"][1] >= 32 for r in pooled.values())
    assert (tmp_path / "parity.md").read_text().count("|") > 20


def test_a_damaged_artifact_fails_parity(task_artifacts, tmp_path):
    """The harness can fail: an artifact whose head weights differ from the checkpoint's."""
    import shutil

    import onnx
    from onnx import numpy_helper

    checkpoint, artifacts = task_artifacts("sequence-classification")
    damaged = tmp_path / "damaged"
    shutil.copytree(artifacts["fp32"], damaged)
    graph = onnx.load(str(damaged / "model.onnx"))
    weight = next(t for t in graph.graph.initializer if t.name.endswith("classifier.weight"))
    weight.CopyFrom(numpy_helper.from_array(-numpy_helper.to_array(weight), weight.name))  # the head flipped
    onnx.save(graph, str(damaged / "model.onnx"))
    result = compare_checkpoint(checkpoint, damaged, samples=8)
    assert not result["passed"]
    assert any("max abs" in f for r in result["rows"] for f in r["failures"])
    _, other = task_artifacts("nsp")  # an artifact of another checkpoint's head: refused, not compared
    with pytest.raises(ValueError, match="has no weights for the nsp head"):
        compare_checkpoint(checkpoint, other["fp32"], samples=8)


# ---------------------------------------------------------------------------- OpenVINO (CPU)
#: One call of each task's method, run on OpenVINO and on ONNX Runtime (the same FP32 graph).
METHOD_CALLS = {
    "base": ("embed", ("Paris is a city.",), {"pooling": "mean"}),
    "mlm": ("fill_mask", ("Paris is the [MASK] of France.",), {"top_k": 3}),
    "causal-lm": ("next_token", ("Paris is the",), {"top_k": 3}),
    "nsp": ("next_sentence", ("It rained.", "The street is wet."), {}),
    "pretraining": ("fill_mask", ("Paris is the [MASK] of France.",), {"top_k": 3}),
    "sequence-classification": ("classify", ("a great movie",), {"top_k": None}),
    "multiple-choice": ("multiple_choice", ("Pick one:", ["a cat", "a dog", "a car"]), {}),
    "token-classification": ("classify_tokens", ("Ada lives in London",), {}),
    "question-answering": ("answer_question", ("Who wrote it?", "Ada wrote it in London."), {}),
}


@pytest.mark.parametrize("graph,inference_precision", OPENVINO_ROWS)
@pytest.mark.parametrize("task", list(TASKS))
def test_openvino_matches_the_reference(task_artifacts, reference_cache, task, graph, inference_precision, tmp_path):
    """The same graphs on OpenVINO (issue 13), judged like the ONNX Runtime rows; an FP32 graph at
    bf16 by the bf16 bars, the INT8 graph at bf16 (bf16 outside its int8 layers) by the INT8 bars. Plus each task's method gives ONNX Runtime's result."""
    pytest.importorskip("openvino")
    from mbert_export.runtime import OrtMegatronBert, OvMegatronBert
    from mbert_export.runtime.openvino import cpu_capabilities

    if inference_precision == "bf16" and "BF16" not in cpu_capabilities():
        pytest.skip(f"bf16 inference needs AVX512-BF16 or AMX; OpenVINO sees {', '.join(cpu_capabilities())} here")
    checkpoint, artifacts = task_artifacts(task)
    result = compare_checkpoint(checkpoint, artifacts[graph], samples=SAMPLES, backend="openvino",
                                inference_precision=inference_precision, report=tmp_path / "parity.json",
                                reference_cache=reference_cache(task))
    failures = [f"{r['inputs']} {r['output']}: {f}" for r in result["rows"] for f in r["failures"]]
    assert result["passed"], "\n".join(failures)
    expected = "bf16" if inference_precision == "bf16" and graph in ("fp32", "fp16") else graph.split("-")[0]
    assert result["precision"] == expected and f"{inference_precision}," in result["runs_on"]
    assert {r["output"] for r in result["rows"]} == set(TASKS[task].output_names)
    if graph == "fp32" and inference_precision == "f32":
        method, args, kwargs = METHOD_CALLS[task]
        with OvMegatronBert(artifacts[graph], cache_dir=False) as ov, OrtMegatronBert(artifacts[graph]) as ort:
            got, want = getattr(ov, method)(*args, **kwargs), getattr(ort, method)(*args, **kwargs)
        _assert_same_result(got, want)


def _assert_same_result(got, want, tol: float = 1e-4) -> None:
    """Equal structure, labels and tokens; scores and arrays within `tol`."""
    import numpy as np

    if isinstance(want, dict):
        assert set(got) == set(want)
        for key in want:
            _assert_same_result(got[key], want[key], tol)
    elif isinstance(want, (list, tuple)):
        assert len(got) == len(want)
        for a, b in zip(got, want):
            _assert_same_result(a, b, tol)
    elif isinstance(want, (float, np.floating, np.ndarray)):
        np.testing.assert_allclose(got, want, atol=tol)
    else:
        assert got == want


# ---------------------------------------------------------------------------- TensorRT engines
@pytest.mark.gpu
@pytest.mark.parametrize("precision", ["fp32", "fp16", "int8"])
@pytest.mark.parametrize("task", list(TASKS))
def test_tensorrt_engine_matches_the_reference(task_artifacts, task, precision, tmp_path):
    """Strongly typed engines of the same graphs, through TRTMegatronBert. Needs TensorRT and a GPU."""
    from mbert_export.build import build_artifact, tensorrt_status

    usable, reason = tensorrt_status()
    if not usable:
        pytest.skip(f"TensorRT engines need TensorRT and an NVIDIA GPU: {reason}")
    checkpoint, _ = task_artifacts(task, ("fp32",))
    built = build_artifact(task, precision, checkpoint=checkpoint, output_dir=tmp_path / precision,
                           backend="tensorrt", batch=["1,4,8"], seq=[f"1,64,{MAX_SEQ}"], choices="2,4,4")
    result = compare_checkpoint(checkpoint, built.folder, samples=SAMPLES, backend="tensorrt")
    assert result["passed"], [f for r in result["rows"] for f in r["failures"]]
