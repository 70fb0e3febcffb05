"""Precision graphs and builds: what TensorRT needs is in the graph, bad input fails cleanly."""

from __future__ import annotations

import json
import shutil
import warnings

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from mbert_export import modeling
from mbert_export.build import BuildError, build_artifact, make_profiles
from mbert_export.calibration import corpus_path
from mbert_export.check import check_graph
from mbert_export.cli import main as cli_main
from mbert_export.config import preset_config
from mbert_export.export import export_onnx, sample_inputs
from mbert_export.precision import (PrecisionError, convert_fp16, matmul_scopes, quantize_int8,
                                   quantize_int8_dynamic)
from mbert_export.tasks import get_task
from mbert_export.tokenization import Tokenizer

ort = pytest.importorskip("onnxruntime")
CORPUS = corpus_path("train")


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A tiny random MLM with a WordPiece vocab learned from the bundled corpus (padded embedding)."""
    from tokenizers import BertWordPieceTokenizer

    from mbert_export.calibration import corpus_path

    folder = tmp_path_factory.mktemp("tiny-checkpoint")
    trainer = BertWordPieceTokenizer(lowercase=True)
    trainer.train([str(corpus_path("train"))], vocab_size=500, limit_alphabet=100,
                  special_tokens=["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"], show_progress=False)
    trainer.save_model(str(folder))
    tokenizer = Tokenizer.from_vocab(folder / "vocab.txt", lowercase=True)
    tokenizer.save_pretrained(folder)
    config = preset_config("tiny", vocab_size=512, tokenizer_vocab_size=tokenizer.vocab_size)
    modeling.MegatronBertForMaskedLM(config).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def fp32_graph(checkpoint, tmp_path_factory):
    model = modeling.MegatronBertForMaskedLM.from_pretrained(checkpoint)
    path = tmp_path_factory.mktemp("fp32") / "model.onnx"
    export_onnx(model, "mlm", path, verify=False, tokenizer_dir=checkpoint)
    return path


def _feeds(config, batch, seq, seed=0):
    return sample_inputs(config, get_task("mlm"), batch, seq, seed=seed)


def test_fp16_graph_keeps_io_types_and_survives_padding(fp32_graph, tmp_path):
    result = convert_fp16(fp32_graph, tmp_path / "model.onnx")
    graph = onnx.load(result.path)
    assert [i.type.tensor_type.elem_type for i in graph.graph.input] == [onnx.TensorProto.INT64] * 3
    assert graph.graph.output[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert any(t.data_type == onnx.TensorProto.FLOAT16 for t in graph.graph.initializer)
    assert {p.key: p.value for p in graph.metadata_props}["mbert_export.precision"] == "fp16"
    assert check_graph(result.path) == []
    config = preset_config("tiny")
    feeds = _feeds(config, 3, 64)
    feeds["attention_mask"][2, :] = 0  # a fully padded row at the maximum length
    logits = ort.InferenceSession(str(result.path)).run(None, feeds)[0]
    assert np.isfinite(logits).all()


def test_int8_graph_follows_tensorrt_rules(fp32_graph, tmp_path):
    config = preset_config("tiny")
    calibration = [_feeds(config, 4, n, seed=i) for i, n in enumerate((8, 16, 32, 64))]
    result = quantize_int8(fp32_graph, tmp_path / "model.onnx", calibration,
                           keep_float=["cls.predictions.decoder"])
    graph = onnx.load(result.path)
    assert result.kept_float == ["cls.predictions.decoder"]
    inits = {t.name: t for t in graph.graph.initializer}
    qdq = [n for n in graph.graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear")]
    assert qdq
    for node in qdq:  # symmetric: every zero point is an int8 zero
        zero_point = numpy_helper.to_array(inits[node.input[2]])
        assert zero_point.dtype == np.int8 and not zero_point.any()
    weight_dq = [n for n in qdq if n.op_type == "DequantizeLinear" and n.input[0] in inits]
    assert weight_dq and all({a.name: a.i for a in n.attribute}.get("axis") == 1 for n in weight_dq)
    producers = {o: n for n in graph.graph.node for o in n.output}
    scopes = matmul_scopes(onnx.load(fp32_graph))
    by_scope = {scope: name for name, scope in scopes.items()}
    matmuls = {n.name: n for n in graph.graph.node if n.op_type == "MatMul"}
    for scope in ("bert.encoder.layer.0.attention.self.scores", "bert.encoder.layer.0.attention.self.context",
                  "bert.encoder.layer.1.output.dense"):
        node = matmuls[by_scope[scope]]
        assert all(producers[i].op_type == "DequantizeLinear" for i in node.input), scope
    decoder = matmuls[by_scope["cls.predictions.decoder"]]
    assert not any(i in producers and producers[i].op_type == "DequantizeLinear" for i in decoder.input)
    assert check_graph(result.path) == []
    for batch, seq in ((1, 1), (2, 64)):  # shapes unlike calibration run and stay finite
        assert np.isfinite(ort.InferenceSession(str(result.path)).run(None, _feeds(config, batch, seq))[0]).all()


def test_int8_refuses_bad_requests(fp32_graph, tmp_path):
    config = preset_config("tiny")
    with pytest.raises(PrecisionError, match="matches no MatMul"):
        quantize_int8(fp32_graph, tmp_path / "a.onnx", [_feeds(config, 2, 8)], keep_float=["no.such.layer"])
    with pytest.raises(PrecisionError, match="unknown calibration method"):
        quantize_int8(fp32_graph, tmp_path / "a.onnx", [_feeds(config, 2, 8)], method="mse")
    with pytest.raises(PrecisionError, match="needs calibration batches"):
        quantize_int8(fp32_graph, tmp_path / "a.onnx", [])
    assert not (tmp_path / "a.onnx").exists()


def test_cpu_int8_recipe_quantizes_linears_dynamically_and_reports_what_stayed_float(fp32_graph, tmp_path):
    result = quantize_int8_dynamic(fp32_graph, tmp_path / "model.onnx", keep_float=["bert.encoder.layer.0.*"])
    graph = onnx.load(result.path)
    ops = [n.op_type for n in graph.graph.node]
    scopes = matmul_scopes(onnx.load(fp32_graph))
    linears = [n for n, s in scopes.items() if not s.endswith((".scores", ".context"))]
    assert ops.count("MatMulInteger") == len(linears) - 6 - 1  # layer 0's six Linears and the tied decoder
    meta = {p.key: p.value for p in graph.metadata_props}
    assert meta["mbert_export.precision"] == "int8" and meta["mbert_export.int8_recipe"] == "dynamic"
    assert "bert.encoder.layer.0.attention.self.query" in result.kept_float
    assert "cls.predictions.decoder" in result.kept_float  # its weight is a Transpose, not a constant
    assert "bert.encoder.layer.1.attention.self.scores" in result.kept_float
    assert "bert.encoder.layer.1.attention.self.query" not in result.kept_float
    assert json.loads(meta["mbert_export.int8_float_nodes"]) == result.kept_float
    problems = check_graph(result.path)  # TensorRT cannot build it: `check` says what to build instead
    assert "ONNX Runtime's CPU INT8 graph" in problems[0] and "--int8-recipe qdq" in problems[0]
    feeds = _feeds(preset_config("tiny"), 2, 16)
    reference = ort.InferenceSession(str(fp32_graph)).run(None, feeds)[0]
    got = ort.InferenceSession(str(result.path)).run(None, feeds)[0]
    assert got.shape == reference.shape and np.isfinite(got).all()
    with pytest.raises(PrecisionError, match="matches no MatMul"):
        quantize_int8_dynamic(fp32_graph, tmp_path / "b.onnx", keep_float=["no.such.layer"])
    assert not (tmp_path / "b.onnx").exists()


@pytest.mark.parametrize("activation,kernel", [("gelu", "Gelu"), ("gelu_new", "FastGelu")])
def test_cpu_int8_recipe_fuses_gelu_without_changing_it(tmp_path, activation, kernel):
    """Both GELU forms (erf; tanh, the 345M preset's) become ONNX Runtime's fused kernels; with every
    Linear kept in float the graph still computes what the FP32 graph computes."""
    import torch

    torch.manual_seed(0)
    model = modeling.MegatronBertForMaskedLM(preset_config("tiny", hidden_act=activation)).eval()
    fp32 = export_onnx(model, "mlm", tmp_path / "fp32" / "model.onnx", verify=False).path
    everything = sorted(set(matmul_scopes(onnx.load(fp32)).values()))
    result = quantize_int8_dynamic(fp32, tmp_path / "int8" / "model.onnx", keep_float=everything)
    ops = [(n.domain, n.op_type) for n in onnx.load(result.path).graph.node]
    assert ("com.microsoft", kernel) in ops or ("com.microsoft", "Bias" + kernel) in ops
    assert not {"Erf", "Tanh", "Pow"} & {op for _, op in ops}
    feeds = _feeds(preset_config("tiny"), 2, 16)
    feeds["attention_mask"][1, 9:] = 0
    reference = ort.InferenceSession(str(fp32)).run(None, feeds)[0]
    np.testing.assert_allclose(ort.InferenceSession(str(result.path)).run(None, feeds)[0], reference,
                               rtol=1e-4, atol=1e-4)


def test_rescored_int8_decoder_has_an_exact_top(fp32_graph, tmp_path):
    """The tied decoder in int8 with each token's top 8 recomputed in FP32 (everything else kept in
    float to isolate it): its Transpose and float MatMul are gone, the top scores equal FP32's, the
    rest carry int8 error only."""
    everything = sorted(set(matmul_scopes(onnx.load(fp32_graph)).values()))
    result = quantize_int8_dynamic(fp32_graph, tmp_path / "model.onnx", keep_float=everything,
                                   rescore=["cls.predictions.decoder"])
    assert result.details["rescore"] == ["cls.predictions.decoder"]
    assert "cls.predictions.decoder" not in result.kept_float
    graph = onnx.load(result.path)
    decoder_ops = [n.op_type for n in graph.graph.node if "rescored" in n.name]
    assert decoder_ops.count("MatMulInteger") == 1 and {"TopK", "ScatterElements"} <= set(decoder_ops)
    assert [n.op_type for n in graph.graph.node].count("Transpose") == [
        n.op_type for n in onnx.load(fp32_graph).graph.node].count("Transpose") - 1
    meta = {p.key: p.value for p in graph.metadata_props}
    assert json.loads(meta["mbert_export.int8_rescore"]) == ["cls.predictions.decoder"]
    feeds = _feeds(preset_config("tiny"), 2, 16)
    reference = ort.InferenceSession(str(fp32_graph)).run(None, feeds)[0]
    got = ort.InferenceSession(str(result.path)).run(None, feeds)[0]
    top5 = np.argsort(-reference, axis=-1)[..., :5]
    np.testing.assert_allclose(np.take_along_axis(got, top5, -1), np.take_along_axis(reference, top5, -1),
                               rtol=1e-5, atol=1e-5)
    assert (np.argsort(-got, axis=-1)[..., :5] == top5).all()
    # int8 scores elsewhere: ~0.4% weight rounding; a wrong scale axis would be orders larger.
    assert 0 < np.abs(got - reference).max() <= 0.02 * np.abs(reference).max()
    with pytest.raises(PrecisionError, match="--int8-rescore 'no.such' matches no MatMul"):
        quantize_int8_dynamic(fp32_graph, tmp_path / "b.onnx", rescore=["no.such"])
    with pytest.raises(PrecisionError, match="no constant weight"):
        quantize_int8_dynamic(fp32_graph, tmp_path / "b.onnx", rescore=["bert.encoder.layer.1.attention.self.scores"])
    assert not (tmp_path / "b.onnx").exists()


def test_keep_float_default_extends_the_recipe_and_an_explicit_keep_wins_over_the_default_rescore(fp32_graph):
    from mbert_export.build import DEFAULT_INT8_KEEP_FLOAT, DEFAULT_INT8_RESCORE, int8_layers

    said = []
    for recipe in ("dynamic", "qdq"):
        assert int8_layers(fp32_graph, recipe, None, None, said.append) == (list(DEFAULT_INT8_KEEP_FLOAT),
                                                                            list(DEFAULT_INT8_RESCORE))
    keep, rescore = int8_layers(fp32_graph, "dynamic", ["default", "bert.encoder.layer.1.*"], None, said.append)
    assert keep == [*DEFAULT_INT8_KEEP_FLOAT, "bert.encoder.layer.1.*"] and rescore == list(DEFAULT_INT8_RESCORE)
    assert int8_layers(fp32_graph, "dynamic", ["none"], ["none"], said.append) == ([], [])
    assert int8_layers(fp32_graph, "qdq", ["cls.*"], None, said.append)[0] == ["cls.*"]  # no rescore on Q/DQ
    assert not said
    keep, rescore = int8_layers(fp32_graph, "dynamic", ["cls.predictions.decoder"], None, said.append)
    assert keep == ["cls.predictions.decoder"] and rescore == []
    assert said == ["int8: cls.predictions.decoder stays in float as --keep-float asks (--int8-rescore "
                    "cls.predictions.decoder would compute it in int8 with its top scores rescored)"]
    assert int8_layers(fp32_graph, "dynamic", ["cls.*"], ["cls.predictions.decoder"], said.append)[1] == [
        "cls.predictions.decoder"]  # named by both: --int8-rescore says how it is computed
    with pytest.raises(PrecisionError, match="--keep-float 'bert.encoder.layer.9.*' matches no MatMul"):
        int8_layers(fp32_graph, "dynamic", ["default", "bert.encoder.layer.9.*"], None, said.append)
    with pytest.raises(PrecisionError, match="--int8-rescore 'cls.decoder' matches no MatMul"):
        int8_layers(fp32_graph, "dynamic", None, ["cls.decoder"], said.append)
    with pytest.raises(BuildError, match=r"--keep-float none keeps nothing in float; it cannot be combined with \['default'\]"):
        int8_layers(fp32_graph, "qdq", ["default", "none"], None, said.append)


@pytest.mark.parametrize("rescore", [["none"], ["cls.predictions.decoder"]])
def test_dynamic_int8_with_an_explicit_rescore_keeps_the_recipe_list(fp32_graph, tmp_path, rescore):
    """The recipe's keep-float patterns that match nothing in this graph (pooler, classifier, ...) are
    skipped, also when the user names the rescore (the rescore alone is checked strictly)."""
    from mbert_export.build import DEFAULT_INT8_KEEP_FLOAT, int8_layers

    keep, chosen = int8_layers(fp32_graph, "dynamic", None, rescore, print)
    result = quantize_int8_dynamic(fp32_graph, tmp_path / "model.onnx", keep_float=keep, strict=False,
                                   rescore=chosen, rescore_strict=True)
    assert keep == list(DEFAULT_INT8_KEEP_FLOAT)
    assert result.details["rescore"] == [r for r in rescore if r != "none"]
    assert ("cls.predictions.decoder" in result.kept_float) == (rescore == ["none"])


def test_keep_float_on_a_head_without_the_lm_decoder(task_artifacts, tmp_path):
    """--keep-float on a classifier: the default rescore (the LM decoder) is not in its graph and is
    skipped, while the user's own pattern is applied (this failed with "matches no MatMul" before)."""
    checkpoint, _ = task_artifacts("sequence-classification", ("fp32",))
    result = build_artifact("sequence-classification", "int8", checkpoint=checkpoint, output_dir=tmp_path / "cls",
                            backend="onnxruntime", batch=["1,2,4"], seq=["1,16,64"],
                            keep_float=["default", "bert.encoder.layer.1.output.dense"])
    assert "bert.encoder.layer.1.output.dense" in result.sidecar["kept_float"]
    assert "bert.encoder.layer.0.output.dense" in result.sidecar["kept_float"]  # the recipe's list too
    assert result.sidecar["int8_rescore"] == []


def test_tensorrt_backend_refuses_the_cpu_int8_recipe(checkpoint, tmp_path):
    with pytest.raises(BuildError, match="unknown INT8 recipe"):
        build_artifact("mlm", "int8", checkpoint=checkpoint, output_dir=tmp_path / "x", backend="onnxruntime",
                       int8_recipe="static")
    with pytest.raises(BuildError, match="TensorRT builds only the Q/DQ INT8 graph"):
        build_artifact("mlm", "int8", checkpoint=checkpoint, output_dir=tmp_path / "x", backend="tensorrt",
                       int8_recipe="dynamic")
    with pytest.raises(BuildError, match="--int8-rescore applies to the dynamic INT8 recipe only"):
        build_artifact("mlm", "int8", checkpoint=checkpoint, output_dir=tmp_path / "x", backend="onnxruntime",
                       int8_recipe="qdq", int8_rescore=["cls.predictions.decoder"])
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize("method", ["entropy", "percentile"])
def test_histogram_calibration_methods_run_on_varied_lengths(fp32_graph, tmp_path, method):
    config = preset_config("tiny")
    calibration = [_feeds(config, 2, n, seed=i) for i, n in enumerate((8, 24, 64))]
    result = quantize_int8(fp32_graph, tmp_path / "model.onnx", calibration, method=method)
    assert {p.key: p.value for p in onnx.load(result.path).metadata_props}["mbert_export.calibration"] == method


def test_fp32_build_is_complete_and_verifies(checkpoint, tmp_path, capsys):
    out = tmp_path / "mlm-fp32"
    code = cli_main(["build", "--task", "mlm", "--fp32", "--backend", "onnxruntime", "--checkpoint", str(checkpoint),
                     "--output-dir", str(out), "--seq", "1,16,64", "--batch", "1,2,4"])
    printed = capsys.readouterr().out
    assert code == 0, printed
    assert {"model.onnx", "build.json", "reference.npz", "tokenizer.json", "vocab.txt"} <= {
        p.name for p in out.iterdir()}
    sidecar = json.loads((out / "build.json").read_text())
    assert sidecar["task"] == "mlm" and sidecar["precision"] == "fp32" and sidecar["backend"] == "onnxruntime"
    assert sidecar["profiles"] == [{"batch": [1, 2, 4], "sequence": [1, 16, 64], "num_choices": [2, 4, 8]}]
    assert sidecar["export_max_abs_diff"] <= 1e-4 and len(sidecar["onnx_sha256"]) == 64
    assert "PASSED" in printed and "fill_mask(" in printed

    # Parity harness: the artifact against the PyTorch reference of its checkpoint ...
    report = tmp_path / "parity.json"
    assert cli_main(["compare", "--checkpoint", str(checkpoint), "--artifact", str(out), "--samples", "6",
                     "--report", str(report)]) == 0
    result = json.loads(report.read_text())
    assert result["passed"] and any(r["inputs"].startswith("held-out text") for r in result["rows"])
    assert any(r["inputs"] == "random batch 4 x seq 64" for r in result["rows"])  # the profile maximum
    assert report.with_suffix(".md").read_text().count("| logits |") == len(result["rows"])
    # ... and against another model's weights, which it must fail.
    other = tmp_path / "other"
    config = json.loads((checkpoint / "config.json").read_text())
    modeling.MegatronBertForMaskedLM(preset_config("tiny", vocab_size=config["vocab_size"],
                                                   tokenizer_vocab_size=config["tokenizer_vocab_size"])
                                     ).save_pretrained(other)
    assert cli_main(["compare", "--checkpoint", str(other), "--artifact", str(out), "--samples", "2"]) == 1


# ---------------------------------------------------------------------------- bad input
@pytest.mark.parametrize("argv, message", [
    (["--batch", "8,4,32"], "need 1 <= min <= opt <= max"),
    (["--seq", "1,64,65"], "exceeds the model's max_position_embeddings"),
    (["--seq", "1,64"], "exactly three values"),
    (["--backend", "tensorrt"], "--backend tensorrt needs TensorRT"),
    (["--precision", "fp8"], "unknown precision 'fp8'"),
    (["--backend", "onnxruntime", "--inference-precision", "f32"], "applies to --backend openvino only"),
    (["--calibration", "anything.txt"], "--calibration applies to --int8 only"),
    (["--keep-float", "bert.*"], "--keep-float applies to --int8 only"),
    (["--precision", "int8", "--keep-float", "none", "--keep-float", "default"], "it cannot be combined with ['default']"),
    (["--opt-level", "9"], "--opt-level is 0..5"),
    (["--workspace-gb", "-1"], "--workspace-gb must be a positive number"),
    (["--precision", "int8", "--int8-recipe", "qdq", "--calibration", "/nonexistent/text.txt"],
     "cannot read calibration text /nonexistent/text.txt"),
    (["--precision", "int8", "--backend", "onnxruntime", "--int8-recipe", "dynamic", "--calibration", str(CORPUS)],
     "the dynamic recipe (onnxruntime) does not calibrate"),
])
def test_bad_build_arguments_are_one_line_errors(checkpoint, tmp_path, capsys, argv, message):
    out = tmp_path / "out"
    precision = [] if "--precision" in argv else ["--fp32"]
    code = cli_main(["build", "--task", "mlm", *precision, "--checkpoint", str(checkpoint),
                     "--output-dir", str(out), *argv])
    err = capsys.readouterr().err
    assert code == 2 and message in err and "Traceback" not in err
    assert not out.exists()


@pytest.mark.parametrize("argv, present, missing", [
    (["--fp16"], [], "heldout.txt"),
    (["--fp32"], [], None),  # FP32 on ONNX Runtime reads no corpus text
    (["--fp32", "--backend", "openvino"], [], "heldout.txt"),  # checked on OpenVINO against held-out text
    (["--int8", "--int8-recipe", "qdq"], ["heldout.txt"], "train.txt"),
    (["--int8", "--int8-recipe", "qdq", "--calibration", str(CORPUS)], ["heldout.txt"], None),
])
def test_missing_corpus_is_said_before_any_work(checkpoint, tmp_path, capsys, monkeypatch, argv, present, missing):
    """Outside a clone the bundled corpus is absent: a build that reads it says so first, naming the file."""
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for name in present:
        shutil.copyfile(corpus_path(name.removesuffix(".txt")), corpus / name)
    monkeypatch.setenv("MBERT_EXPORT_CORPUS_DIR", str(corpus))
    out = tmp_path / "out"
    backend = [] if "--backend" in argv else ["--backend", "onnxruntime"]  # auto picks OpenVINO on VNNI CPUs
    code = cli_main(["build", "--task", "mlm", *argv, *backend, "--checkpoint", str(checkpoint), "--output-dir", str(out)])
    said = capsys.readouterr()
    if missing is None:  # the build runs to its accuracy check (which a random tiny model may miss)
        assert "corpus file" not in said.err and "Traceback" not in said.err
        assert code == 0 if "--fp32" in argv else "checking the int8 graph" in said.out + said.err
        return
    assert code == 2 and f"corpus file {corpus / missing} not found" in said.err and not out.exists()
    assert "MBERT_EXPORT_CORPUS_DIR" in said.err and "Traceback" not in said.err
    hint = "cannot be replaced by --calibration" if missing == "heldout.txt" else "--calibration PATH"
    assert hint in said.err


def test_output_folder_with_another_build_needs_force(checkpoint, tmp_path):
    out = tmp_path / "taken"
    out.mkdir()
    (out / "engine.plan").write_bytes(b"another build")
    with pytest.raises(BuildError, match="already holds a build; pass --force"):
        build_artifact("mlm", "fp32", checkpoint=checkpoint, output_dir=out, seq=["1,8,16"])
    assert (out / "engine.plan").read_bytes() == b"another build"


def test_build_engine_script_is_build_under_its_own_name():
    """scripts/build_engine.py: the README's entry point takes build's options and names itself in errors."""
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "scripts" / "build_engine.py"
    done = subprocess.run([sys.executable, str(script), "--task", "mlm", "--fp16", "--bogus"], capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 2 and "build_engine.py: error: unrecognized arguments: --bogus" in done.stderr
    assert "--allow-random-head" in done.stderr and "SUBCOMMAND" not in done.stderr


def test_output_folder_of_other_files_is_never_replaced(checkpoint, tmp_path, capsys):
    """--force replaces an earlier build, not a folder of someone's files; a file is no folder."""
    theirs = tmp_path / "theirs"
    theirs.mkdir()
    (theirs / "notes.txt").write_text("precious")
    a_file = tmp_path / "a-file"
    a_file.write_text("not a folder")
    for target, message in ((theirs, "holds files this did not write (notes.txt)"), (a_file, "is a file, not a folder")):
        for force in ([], ["--force"]):
            code = cli_main(["build", "--task", "mlm", "--fp32", "--checkpoint", str(checkpoint), "--output-dir",
                             str(target), "--seq", "1,8,16", *force])
            err = capsys.readouterr().err
            assert code == 2 and message in err and "Traceback" not in err
    assert (theirs / "notes.txt").read_text() == "precious" and a_file.read_text() == "not a folder"


def test_build_takes_allow_random_head_as_its_error_advises(checkpoint, tmp_path, capsys):
    """An MLM checkpoint has no classifier: refused with advice naming a flag build has, which then works."""
    out = tmp_path / "cls"
    argv = ["build", "--task", "sequence-classification", "--fp32", "--checkpoint", str(checkpoint),
            "--output-dir", str(out), "--seq", "1,8,16"]
    assert cli_main(argv) == 2 and "--allow-random-head" in capsys.readouterr().err and not out.exists()
    assert cli_main([*argv, "--allow-random-head"]) == 0
    assert "PASSED" in capsys.readouterr().out and (out / "build.json").is_file()


def test_output_folder_holding_the_checkpoint_is_refused_even_with_force(checkpoint, tmp_path, capsys):
    before = sorted(p.name for p in checkpoint.iterdir())
    code = cli_main(["build", "--task", "mlm", "--fp32", "--checkpoint", str(checkpoint), "--output-dir",
                     str(checkpoint), "--force", "--seq", "1,8,16"])
    err = capsys.readouterr().err
    assert code == 2 and "which this reads from: writing there would destroy it" in err and "Traceback" not in err
    assert sorted(p.name for p in checkpoint.iterdir()) == before


def test_profiles_from_several_seq_ranges():
    profiles = make_profiles(["1,4,8"], ["1,64,128", "129,256,512"], 512)
    assert [p.sequence for p in profiles] == [(1, 64, 128), (129, 256, 512)]
    shapes = profiles[0].shapes(get_task("multiple-choice"))
    assert shapes["input_ids"] == ((1, 2, 1), (4, 4, 64), (8, 8, 128))


def test_int8_calibration_text_mostly_unknown_warns_with_ratio(checkpoint, tmp_path):
    from mbert_export.build import calibration_data, make_profiles
    from mbert_export.config import MegatronBertConfig
    from mbert_export.reference import model_tokenizer

    text = tmp_path / "foreign.txt"
    text.write_text("\n".join(["Здравствуйте мир это текст на другом языке"] * 50), encoding="utf-8")
    tokenizer = model_tokenizer(None, MegatronBertConfig.from_pretrained(checkpoint), checkpoint)
    messages = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        calibration_data(tokenizer, text, make_profiles([], ["1,16,32"], 64), get_task("mlm"),
                         preset_config("tiny"), messages.append)
    assert any("[UNK]" in str(w.message) and "%" in str(w.message) for w in caught)
    calibration_data(tokenizer, None, make_profiles([], ["1,16,32"], 64), get_task("mlm"),
                     preset_config("tiny"), messages.append)
    assert any("bundled corpus" in m for m in messages)


# ---------------------------------------------------------------------------- the demo model's bars
@pytest.mark.parametrize("precision,recipe", [("fp16", None), ("int8", "qdq"), ("int8", "dynamic")])
def test_demo_model_meets_the_precision_bars(tmp_path, precision, recipe):
    """FP16 >= 99.9 % and INT8 (both recipes: TensorRT's Q/DQ graph and ONNX Runtime CPU's dynamic
    graph) >= 99 % top-1 agreement with the FP32 graph at masked held-out positions and at every
    profile shape, MLM accuracy within 0.5 points (the build refuses otherwise)."""
    from mbert_export.build import DEFAULT_CHECKPOINT

    result = build_artifact("mlm", precision, checkpoint=DEFAULT_CHECKPOINT, output_dir=tmp_path / precision,
                            seq=["1,64,256"], batch=["1,4,16"], int8_recipe=recipe or "auto")
    accuracy = result.sidecar["accuracy"]
    held_out = accuracy["held-out masked text"]["logits"]
    bar = {"fp16": 0.999, "int8": 0.99}[precision]
    assert held_out["top1_agreement"] >= bar and held_out["positions"] > 1000
    assert held_out["reference_mlm_accuracy"] - held_out["mlm_accuracy"] <= 0.005
    assert held_out["reference_mlm_accuracy"] > 0.15  # a model that learned something
    profile_sets = [name for name in accuracy if name.startswith("batch ")]
    assert len(profile_sets) == 3 and all(accuracy[n]["logits"]["top1_agreement"] >= bar for n in profile_sets)
    assert all(accuracy[n]["logits"]["nonfinite"] == 0 for n in accuracy)
    if precision == "int8":
        assert result.sidecar["int8_recipe"] == recipe
        assert ("cls.predictions.decoder" in result.sidecar["kept_float"]) == (recipe == "qdq")
        if recipe == "dynamic":  # the decoder runs in int8 with an exact top instead
            assert result.sidecar["int8_rescore"] == ["cls.predictions.decoder"]
        ops = {n.op_type for n in onnx.load(result.folder / "model.onnx").graph.node}
        assert ("QuantizeLinear" in ops) == (recipe == "qdq") and ("MatMulInteger" in ops) == (recipe == "dynamic")
        if recipe == "qdq":
            assert check_graph(result.folder / "model.onnx") == []


# ---------------------------------------------------------------------------- OpenVINO
def test_openvino_int8_build_is_checked_on_openvino_and_records_the_machine(tmp_path, capsys):
    """`build --backend openvino --int8`: the calibrated Q/DQ graph, checked on OpenVINO against the FP32
    graph with the INT8 bars (demo model: >= 99 % top-1 at masked held-out positions); build.json names
    the OpenVINO version, the inference precision and the CPU. On a CPU with bf16 the build checks bf16
    first and keeps it only if it keeps the INT8 bars, else it says so and checks f32."""
    pytest.importorskip("openvino")
    from mbert_export.build import DEFAULT_CHECKPOINT
    from mbert_export.runtime import OvMegatronBert
    from mbert_export.runtime.openvino import cpu_capabilities

    messages: list[str] = []
    result = build_artifact("mlm", "int8", checkpoint=DEFAULT_CHECKPOINT, output_dir=tmp_path / "ov", backend="openvino",
                            seq=["1,64,128"], batch=["1,4,8"], progress=messages.append)
    checks = [m for m in messages if "graph on OpenVINO at inference precision" in m]
    first = "bf16" if "BF16" in cpu_capabilities() else "f32"
    assert f"at inference precision {first} " in checks[0], checks
    sidecar = result.sidecar
    chosen = sidecar["openvino"]["inference_precision"]
    assert f"at inference precision {chosen} " in checks[-1]
    if len(checks) == 2:  # bf16 missed the bar: said, then f32
        assert chosen == "f32" and any("misses its bar" in m and "trying inference precision f32" in m for m in messages)
    else:
        assert len(checks) == 1 and chosen == first
    assert sidecar["backend"] == "openvino" and sidecar["int8_recipe"] == "qdq" and sidecar["openvino"]["version"]
    assert sidecar["machine"]["cpu"] and sidecar["machine"]["cores"] >= 1 and "versions" in sidecar["machine"]
    held_out = sidecar["accuracy"]["held-out masked text"]["logits"]
    assert held_out["top1_agreement"] >= 0.99 and held_out["positions"] > 1000
    with OvMegatronBert(result.folder) as ov:
        assert ov.inference_precision == chosen and ov.verify().passed
    # `verify` checks an OpenVINO build on OpenVINO unless told otherwise
    assert cli_main(["verify", str(result.folder)]) == 0
    assert cli_main(["verify", str(result.folder), "--backend", "onnxruntime"]) in (0, 1)
    said = capsys.readouterr().out.split("verify ")[1:]
    assert " on openvino " in said[0] and " on onnxruntime " in said[1], said


@pytest.mark.parametrize("requested, precision, capabilities, tried", [
    (None, "int8", ["FP32", "BF16", "INT8"], ["bf16", "f32"]),  # bf16 first where it may keep the INT8 bar
    (None, "int8", ["FP32", "INT8"], ["f32"]),
    (None, "fp32", ["FP32", "BF16", "INT8"], ["f32"]),  # bf16 cannot keep the FP32/FP16 bars
    (None, "fp16", ["FP32", "BF16", "INT8"], ["f32"]),
    ("f32", "int8", ["FP32", "BF16", "INT8"], ["f32"]),  # asked for: only that one
    ("bf16", "fp32", ["FP32", "BF16", "INT8"], ["bf16"]),
    ("bf16", "int8", ["FP32", "INT8"], ValueError),
])
def test_openvino_build_checks_inference_precisions_in_order(requested, precision, capabilities, tried):
    from mbert_export.build import openvino_inference_precisions

    if tried is ValueError:
        with pytest.raises(ValueError, match="needs a CPU with BF16"):
            openvino_inference_precisions(requested, precision, capabilities)
    else:
        assert openvino_inference_precisions(requested, precision, capabilities) == tried


@pytest.mark.parametrize("missed", [("bf16",), ("bf16", "f32")])
def test_openvino_int8_build_falls_back_from_bf16_and_says_why(tmp_path, monkeypatch, missed):
    """When bf16 misses the INT8 bars the build checks f32 and records what bf16 missed; when both
    miss, the error names both precisions and nothing is written. The bars' verdicts are forced (a
    real miss needs a model bf16 cannot keep); the build's own logic around them is what runs."""
    pytest.importorskip("openvino")
    from mbert_export import build as build_module
    from mbert_export.build import DEFAULT_CHECKPOINT
    from mbert_export.runtime.openvino import cpu_capabilities

    if "BF16" not in cpu_capabilities():
        pytest.skip("the build checks bf16 first only on CPUs with AVX512-BF16/AMX")
    real = build_module.evaluate_precision

    def forced(*args, inference_precision=None, **kwargs):
        reports, problems = real(*args, inference_precision=inference_precision, **kwargs)
        return reports, problems + ([f"forced miss at {inference_precision}"] if inference_precision in missed else [])

    monkeypatch.setattr(build_module, "evaluate_precision", forced)
    messages: list[str] = []
    out = tmp_path / "ov"
    options = dict(checkpoint=DEFAULT_CHECKPOINT, output_dir=out, backend="openvino", seq=["1,16,32"],
                   batch=["1,2,4"], progress=messages.append)
    if missed == ("bf16", "f32"):
        with pytest.raises(BuildError, match=r"misses its accuracy bar at OpenVINO inference precision f32 "
                                             r"\(also missed at bf16\)"):
            build_artifact("mlm", "int8", **options)
        assert not out.exists()
        return
    sidecar = build_artifact("mlm", "int8", **options).sidecar
    assert sidecar["openvino"]["inference_precision"] == "f32"
    rejected = sidecar["openvino"]["rejected_inference_precisions"]
    assert list(rejected) == ["bf16"] and "forced miss at bf16" in rejected["bf16"]  # (32-token text: bf16 may miss too)
    assert any("forced miss at bf16" in m and "trying inference precision f32" in m for m in messages)


def test_openvino_choices_follow_the_cpu(checkpoint, tmp_path):
    """auto picks OpenVINO only where its int8 kernels measured faster (int8 dot-product CPUs); bf16 is
    refused before any work on CPUs without it."""
    pytest.importorskip("openvino")
    from mbert_export.build import choose_backend, tensorrt_status
    from mbert_export.machine import INT8_DOT_PRODUCT_FLAGS, cpu_flags
    from mbert_export.runtime.openvino import cpu_capabilities

    said: list[str] = []
    chosen = choose_backend("auto", said.append)
    if not tensorrt_status()[0]:
        assert chosen == ("openvino" if set(cpu_flags()) & set(INT8_DOT_PRODUCT_FLAGS) else "onnxruntime")
        assert "int8 dot-product" in said[0] or "has" in said[0]
    if "BF16" not in cpu_capabilities():
        with pytest.raises(BuildError, match="bf16 needs a CPU with BF16 support"):
            build_artifact("mlm", "fp32", checkpoint=checkpoint, output_dir=tmp_path / "x", backend="openvino",
                           inference_precision="bf16")
        assert not (tmp_path / "x").exists()


# ---------------------------------------------------------------------------- real TensorRT engines
@pytest.mark.gpu
@pytest.mark.parametrize("precision", ["fp32", "fp16", "int8"])
def test_tensorrt_engine_matches_the_reference(tmp_path, precision):
    """Build a strongly typed engine of the demo model and check it on its reference vectors and
    against the PyTorch reference. Needs TensorRT and an NVIDIA GPU; skipped otherwise."""
    from mbert_export.build import DEFAULT_CHECKPOINT, tensorrt_status
    from mbert_export.parity import compare_checkpoint
    from mbert_export.runtime import TRTMegatronBert

    usable, reason = tensorrt_status()
    if not usable:
        pytest.skip(f"TensorRT engine build needs TensorRT and a GPU: {reason}")
    result = build_artifact("mlm", precision, checkpoint=DEFAULT_CHECKPOINT, output_dir=tmp_path / precision,
                            backend="tensorrt", seq=["1,64,128", "129,192,256"], batch=["1,4,8"])
    assert (result.folder / "engine.plan").is_file() and result.sidecar["tensorrt_version"]
    with TRTMegatronBert(result.folder) as runtime:
        assert runtime.verify().passed
        assert runtime.fill_mask("The [MASK] statement is used to import a module.", top_k=3)
    assert compare_checkpoint(DEFAULT_CHECKPOINT, result.folder, samples=16, backend="tensorrt")["passed"]


# ---------------------------------------------------------------------------- benchmark harness
@pytest.mark.parametrize("argv, message", [
    (["--backends", "pytorch-fp32,foo"], "unknown or no backends ['foo']; choose from pytorch-fp32"),
    (["--backends", ""], "unknown or no backends []"),
    (["--threads", "0"], "--threads must be >= 1, got 0"),
    (["--repeats", "0"], "--repeats must be >= 1, got 0"),
    (["--budget", "0"], "--budget must be a positive number of seconds"),
    (["--batch", "0", "--shapes", ""], "batch sizes and sequence lengths must be positive integers"),
    (["--batch", "a"], "--batch 'a': expected comma-separated integers"),
    (["--name", ""], "--name '' must be a plain file name"),
    (["--name", "../elsewhere"], "--name '../elsewhere' must be a plain file name"),
    (["--model", "megatron-bert-345m-casd"], "is neither 'demo', a preset (tiny, megatron-bert-345m-cased"),
])
def test_bad_bench_arguments_are_refused_before_any_work(tmp_path, monkeypatch, capsys, argv, message):
    from mbert_export import bench

    monkeypatch.setattr(bench, "RESULTS_DIR", tmp_path / "results")
    monkeypatch.setattr(bench, "ARTIFACTS_DIR", tmp_path / "artifacts")
    code = cli_main(["bench", "--backends", "pytorch-fp32", *argv])
    err = capsys.readouterr().err
    assert code == 2 and message in err and "Traceback" not in err
    assert not (tmp_path / "results").exists() and not (tmp_path / "artifacts").exists()


def test_bench_measures_against_the_reference_even_when_not_named():
    from mbert_export.bench import check_arguments

    assert check_arguments(["ort-fp32", "ort-fp32"], [1], [8], None, 1, 0, 1, 1.0, "x") == ["pytorch-fp32", "ort-fp32"]


def test_benchmark_writes_tables_with_speedups_and_held_out_agreement(tmp_path, monkeypatch):
    """A tiny run of `mbert-export bench` on the demo model: every backend timed in the same run,
    JSON/markdown written, and the CPU INT8 graph keeps the 99 % agreement bar on held-out text."""
    from mbert_export import bench

    monkeypatch.setattr(bench, "RESULTS_DIR", tmp_path / "results")
    monkeypatch.setattr(bench, "ARTIFACTS_DIR", tmp_path / "artifacts")
    messages = []
    backends = ("pytorch-fp32", "ort-fp32", "ort-int8-dynamic", "ov-f32", "ov-bf16")
    report = bench.run_benchmark("demo", backends=backends, batches=(2,),
                                 seqs=(32,), repeats=3, warmup=1, name="t", progress=messages.append)
    rows = report["results"][0]["backends"]
    has_bf16 = not any(m.startswith("bench: ov-bf16 skipped") for m in messages)
    assert set(rows) == {"pytorch-fp32", "ort-fp32", "ort-int8-dynamic", "ov-f32"} | ({"ov-bf16"} if has_bf16 else set())
    assert rows["pytorch-fp32"]["speedup_vs_pytorch_fp32"] == 1.0 and rows["ort-fp32"]["rounds"] == 3
    agreement = report["held_out_agreement"]
    assert agreement["ort-fp32"]["top1_agreement"] >= 0.999 and agreement["ort-fp32"]["positions"] > 1000
    assert agreement["ov-f32"]["top1_agreement"] >= 0.999
    assert agreement["ort-int8-dynamic"]["top1_agreement"] >= 0.99
    table = (tmp_path / "results" / "t.md").read_text()
    assert "| 2 x 32 | ort-int8-dynamic |" in table and "Masked held-out text" in table
    saved = json.loads((tmp_path / "results" / "t.json").read_text())
    assert saved["name"] == "t"
    machine = saved["machine"]  # every result names its machine
    assert machine["cpu"] and machine["cores"] >= 1 and machine["threads"] == 2 and "openvino" in machine["versions"]
    assert machine["cpu"] in table.splitlines()[0] and "ISA:" in table.splitlines()[0]
    assert any("interleaved" in m for m in messages)


def test_cpu_int8_weight_type_follows_the_cpu_and_u8_never_saturates(tmp_path):
    """s8 weights saturate ONNX Runtime's int16 pair sums on CPUs without VNNI/AMX; u8 weights do not.

    One MatMul whose inputs and weights are all large and positive: every pair of products exceeds
    int16 in the u8 x s8 kernel of an AVX2-only CPU. 'auto' must pick the weight type that is exact
    on this CPU."""
    from onnx import TensorProto, helper, numpy_helper

    from mbert_export.machine import has_int8_dot_product
    from mbert_export.precision import dynamic_weight_type

    rng = np.random.default_rng(0)
    weight = rng.uniform(0.9, 1.0, (64, 16)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"], name="/bert/encoder/layer.1/output/dense/MatMul")], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 64])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], [numpy_helper.from_array(weight, "w")])
    fp32 = tmp_path / "fp32.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), fp32)
    x = rng.uniform(0.9, 1.0, (4, 64)).astype(np.float32)
    x[:, 0] = 0.0  # the activation range starts at 0: large values quantize near 255
    reference = x @ weight
    errors = {}
    for kind, dtype in (("s8", np.int8), ("u8", np.uint8)):
        result = quantize_int8_dynamic(fp32, tmp_path / f"{kind}.onnx", weights=kind, strict=False)
        model = onnx.load(result.path)
        assert {p.key: p.value for p in model.metadata_props}["mbert_export.int8_weights"] == kind
        assert any(numpy_helper.to_array(t).dtype == dtype and t.dims == [64, 16] for t in model.graph.initializer)
        got = ort.InferenceSession(str(result.path)).run(None, {"x": x})[0]
        errors[kind] = float(np.abs(got - reference).max() / np.abs(reference).max())
    assert errors["u8"] < 0.02
    chosen = dynamic_weight_type("auto")
    assert chosen == ("s8" if has_int8_dot_product() else "u8")
    assert errors[chosen] < 0.02  # what auto picks is exact on this CPU
    if not has_int8_dot_product():
        assert errors["s8"] > 0.1  # the saturation this choice avoids
    with pytest.raises(PrecisionError, match="--int8-weights must be one of"):
        dynamic_weight_type("int4")
