"""ONNX export of every task: dynamic axes, opset, parity with transformers, readiness check, bad input."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from onnx import helper as onnx_helper

from helpers import random_inputs, tiny_config, twin_pair
from mbert_export import modeling
from mbert_export.check import check_graph, check_model
from mbert_export.cli import main as cli_main
from mbert_export.export import ExportError, export_onnx, load_model_for_task
from mbert_export.tasks import TASKS

ort = pytest.importorskip("onnxruntime")

#: Shapes unlike the export sample (2 x 8): (batch, sequence).
PARITY_SHAPES = [(1, 1), (3, 29), (2, 64)]


@pytest.mark.parametrize("task_name", list(TASKS))
def test_every_task_matches_transformers_on_onnx_runtime(task_name, tmp_path):
    task = TASKS[task_name]
    config, ours, hf_model = twin_pair(task.model_class, is_decoder=task.is_decoder)
    if task.is_decoder:
        hf_model.config.use_cache = False
    path = tmp_path / "model.onnx"
    result = export_onnx(ours, task_name, path)
    assert max(result.max_abs_diff.values()) <= 1e-4

    graph = onnx.load(path)
    assert next(o.version for o in graph.opset_import if o.domain in ("", "ai.onnx")) >= 17
    assert [i.name for i in graph.graph.input] == ["input_ids", "attention_mask", "token_type_ids"]
    assert [o.name for o in graph.graph.output] == list(task.output_names)
    for graph_input in graph.graph.input:
        dims = [d.dim_param for d in graph_input.type.tensor_type.shape.dim]
        assert dims == [task.input_axes[i] for i in range(len(dims))]
    metadata = {p.key: p.value for p in graph.metadata_props}
    assert metadata["mbert_export.task"] == task_name
    assert "LayerNormalization" in {n.op_type for n in graph.graph.node}

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    num_choices = 3 if task_name == "multiple-choice" else None
    for seed, (batch, seq) in enumerate(PARITY_SHAPES):
        inputs = random_inputs(config, batch, seq, seed=seed, num_choices=num_choices)
        with torch.no_grad():
            expected = hf_model(**inputs, return_dict=True)
        got = session.run(None, {k: v.numpy() for k, v in inputs.items()})
        for name, value in zip(task.output_names, got):
            diff = np.abs(value - expected[name].numpy()).max()
            assert diff <= 1e-4, f"{task_name}.{name} at {batch}x{seq}: {diff:.2e}"


def test_external_data_when_over_the_threshold(tmp_path, tiny):
    model = modeling.MegatronBertForMaskedLM(tiny).eval()
    path = tmp_path / "big" / "model.onnx"
    result = export_onnx(model, "mlm", path, external_data_threshold=0)
    assert result.external_data == path.with_name("model.onnx.data")
    assert sorted(p.name for p in path.parent.iterdir()) == ["model.onnx", "model.onnx.data", "reference.npz"]
    graph = onnx.load(path, load_external_data=False)
    external = [t for t in graph.graph.initializer if t.data_location == onnx.TensorProto.EXTERNAL]
    assert external and {e.value for t in external for e in t.external_data if e.key == "location"} == {
        "model.onnx.data"}
    inputs = random_inputs(tiny, 2, 20)
    got = ort.InferenceSession(str(path)).run(["logits"], {k: v.numpy() for k, v in inputs.items()})[0]
    with torch.no_grad():
        assert np.abs(got - model(**inputs)["logits"].numpy()).max() <= 1e-4


def test_tokenizer_files_travel_with_the_graph(tmp_path, tiny):
    source = tmp_path / "model"
    modeling.MegatronBertForMaskedLM(tiny).save_pretrained(source)
    (source / "vocab.txt").write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a"]) + "\n")
    out = tmp_path / "onnx" / "model.onnx"
    assert cli_main(["export", "--task", "mlm", "--checkpoint", str(source), "--output", str(out)]) == 0
    assert (out.parent / "vocab.txt").read_text() == (source / "vocab.txt").read_text()


# ---------------------------------------------------------------------------- readiness check
@pytest.fixture(scope="module")
def tiny_graph(tmp_path_factory):
    """One exported sequence-classification graph of the tiny preset, read (never changed) by the checks."""
    path = tmp_path_factory.mktemp("tiny-graph") / "model.onnx"
    export_onnx(modeling.MegatronBertForSequenceClassification(tiny_config()).eval(), "sequence-classification",
                path, verify=False)
    return path


def test_output_into_a_closed_pipe_ends_quietly(tiny_graph, monkeypatch, capsys):
    """`mbert-export check ... | head`: when the reader has gone, the command ends with exit 1 and no traceback."""
    import os

    read_end, write_end = os.pipe()
    os.close(read_end)
    stdout = os.fdopen(write_end, "w")
    monkeypatch.setattr("sys.stdout", stdout)
    try:
        assert cli_main(["check", str(tiny_graph)]) == 1
    finally:
        monkeypatch.undo()
        stdout.close()  # now writes to /dev/null (the CLI pointed the descriptor there)
    assert "Traceback" not in capsys.readouterr().err


def test_check_passes_an_exported_graph_and_fails_a_planted_unsupported_op(tiny_graph, tmp_path, capsys):
    path = tiny_graph
    assert check_graph(path) == []
    graph = onnx.load(path)
    last = graph.graph.output[0].name
    graph.graph.node.append(onnx_helper.make_node("Bernoulli", [last], ["sampled"], name="planted_bernoulli"))
    graph.graph.node.append(onnx_helper.make_node("MyOp", [last], ["custom"], name="planted_custom",
                                                   domain="com.example"))
    bad = tmp_path / "bad.onnx"
    onnx.save(graph, bad)
    problems = check_graph(bad)
    assert any("planted_bernoulli" in p and "Bernoulli" in p for p in problems)
    assert any("planted_custom" in p for p in problems)
    assert cli_main(["check", str(bad)]) == 1
    assert "planted_bernoulli" in capsys.readouterr().out
    assert cli_main(["check", str(path)]) == 0


def test_check_flags_float64_inf_and_fp16_overflowing_constants(tiny_graph):
    graph = onnx.load(tiny_graph)
    nodes = graph.graph.node
    nodes.append(onnx_helper.make_node("Constant", [], ["neg_inf"], name="mask_inf",
                                       value=onnx_helper.make_tensor("v", onnx.TensorProto.FLOAT, [], [-np.inf])))
    nodes.append(onnx_helper.make_node("Constant", [], ["fmin"], name="mask_finfo_min", value=onnx_helper.make_tensor(
        "w", onnx.TensorProto.FLOAT, [], [float(np.finfo(np.float32).min)])))
    nodes.append(onnx_helper.make_node("Cast", ["fmin"], ["as_double"], name="to_double", to=onnx.TensorProto.DOUBLE))
    problems = check_model(graph)
    assert any("mask_inf" in p and "inf" in p for p in problems)
    assert any("mask_finfo_min" in p and "FP16" in p for p in problems)
    assert any("to_double" in p and "float64" in p for p in problems)


def test_check_on_folders_foreign_and_empty_graphs(tiny_graph, tmp_path, capsys):
    """An artifact folder is checked through its graph; a graph without task metadata is not called ready;
    an empty file and an unknown task are bad input."""
    folder = tmp_path / "artifact"
    folder.mkdir()
    onnx.save(onnx.load(str(tiny_graph)), str(folder / "model.onnx"))
    assert cli_main(["check", str(folder)]) == 0 and "TensorRT-ready" in capsys.readouterr().out
    foreign = onnx.load(str(tiny_graph))
    del foreign.metadata_props[:]
    onnx.save(foreign, str(tmp_path / "foreign.onnx"))
    assert cli_main(["check", str(tmp_path / "foreign.onnx")]) == 1
    assert "no mbert_export.task metadata: the task's dynamic axes were not checked" in capsys.readouterr().out
    (tmp_path / "empty.onnx").write_bytes(b"")
    assert cli_main(["check", str(tmp_path / "empty.onnx")]) == 2
    assert "is not an ONNX model (no graph" in capsys.readouterr().err
    assert cli_main(["check", str(folder), "--task", "bogus"]) == 2
    assert "unknown task 'bogus'" in capsys.readouterr().err


def test_check_flags_a_static_axis(tiny_graph):
    graph = onnx.load(tiny_graph)
    graph.graph.input[0].type.tensor_type.shape.dim[1].dim_value = 128
    assert any("'input_ids' axis 1" in p and "sequence" in p for p in check_model(graph))


# ---------------------------------------------------------------------------- bad input
@pytest.mark.parametrize("kwargs, message", [
    ({"opset": 16}, "opset 16 is too old"),
    ({"opset": 26}, r"opset 26 is newer than the exporter can write \(17..25"),
    ({"max_seq_len": 65}, "outside 1..64"),
    ({"max_seq_len": 0}, "outside 1..64"),
])
def test_bad_export_arguments_write_nothing(tmp_path, tiny, kwargs, message):
    model = modeling.MegatronBertForMaskedLM(tiny).eval()
    with pytest.raises(ExportError, match=message):
        export_onnx(model, "mlm", tmp_path / "model.onnx", **kwargs)
    assert list(tmp_path.iterdir()) == []


def test_output_that_is_a_folder_is_refused(tmp_path, tiny):
    (tmp_path / "graph.onnx").mkdir()
    with pytest.raises(ExportError, match="is a folder; name the graph file to write"):
        export_onnx(modeling.MegatronBertForMaskedLM(tiny).eval(), "mlm", tmp_path / "graph.onnx")


def test_bad_tokenizer_fails_before_any_work_and_names_its_own_file(tmp_path, tiny):
    """The tokenizer is checked before tracing: nothing is written, and the message names the source."""
    source = tmp_path / "checkpoint"
    source.mkdir()
    (source / "tokenizer.json").write_text("garbage")
    output = tmp_path / "out" / "model.onnx"
    with pytest.raises(ValueError, match=f"{source / 'tokenizer.json'} is not a valid tokenizers tokenizer.json"):
        export_onnx(modeling.MegatronBertForMaskedLM(tiny).eval(), "mlm", output, tokenizer_dir=source)
    assert not output.parent.exists()


def test_a_file_of_a_hugging_face_folder_is_pointed_to_its_folder(tmp_path, tiny):
    from mbert_export.checkpoints import CheckpointError

    folder = tmp_path / "hf"
    modeling.MegatronBertForMaskedLM(tiny).save_pretrained(folder)
    for name in ("model.safetensors", "config.json"):
        with pytest.raises(CheckpointError, match=f"is a file of the Hugging Face folder {folder}: pass that folder"):
            load_model_for_task(folder / name, "mlm")


def test_unknown_task_and_wrong_model_class(tmp_path, tiny):
    model = modeling.MegatronBertForMaskedLM(tiny).eval()
    with pytest.raises(ValueError, match="unknown task 'fill-mask'; choose one of: base, mlm"):
        export_onnx(model, "fill-mask", tmp_path / "model.onnx")
    with pytest.raises(ExportError, match="exports a MegatronBertForQuestionAnswering"):
        export_onnx(model, "question-answering", tmp_path / "model.onnx")


def test_unwritable_output_folder(tmp_path, tiny):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    with pytest.raises(ExportError, match="cannot write to"):
        export_onnx(modeling.MegatronBertForMaskedLM(tiny).eval(), "mlm", blocker / "model.onnx")


def test_failed_verification_leaves_no_file(tmp_path, tiny, monkeypatch):
    """A graph that fails verification is never published (here: a zero tolerance trips on rounding)."""
    import mbert_export.export as export_module

    real_verify = export_module.verify_against_reference
    monkeypatch.setattr(export_module, "verify_against_reference",
                        lambda *args, **kwargs: real_verify(*args, tolerance=0.0))
    model = modeling.MegatronBertForMaskedLM(tiny).eval()
    with torch.no_grad():  # large logits make FP32 rounding differences certain
        model.cls.predictions.decoder.bias.add_(1000.0)
    with pytest.raises(ExportError, match="differs from the reference"):
        export_onnx(model, "mlm", tmp_path / "model.onnx")
    assert list(tmp_path.iterdir()) == []


def test_cli_errors_are_one_line(tmp_path, tiny, capsys):
    not_a_checkpoint = tmp_path / "notes.txt"
    not_a_checkpoint.write_text("hello")
    code = cli_main(["export", "--task", "mlm", "--checkpoint", str(not_a_checkpoint),
                     "--output", str(tmp_path / "out" / "model.onnx")])
    err = capsys.readouterr().err
    assert code == 2 and err.splitlines()[-1].startswith("error: ") and "Traceback" not in err
    assert not (tmp_path / "out" / "model.onnx").exists()

    folder = tmp_path / "pretraining"
    modeling.MegatronBertForPreTraining(tiny).save_pretrained(folder)
    code = cli_main(["export", "--task", "sequence-classification", "--checkpoint", str(folder),
                     "--output", str(tmp_path / "cls" / "model.onnx")])
    err = capsys.readouterr().err
    assert code == 2 and "--allow-random-head" in err
    code = cli_main(["export", "--task", "sequence-classification", "--checkpoint", str(folder),
                     "--output", str(tmp_path / "cls" / "model.onnx"), "--allow-random-head"])
    printed = capsys.readouterr()
    assert code == 0 and f"no tokenizer files (vocab.txt or tokenizer.json) in {folder}, so the artifact runs on " \
        f"token ids" in printed.out + printed.err and f"put the tokenizer's vocab.txt in {folder}" in printed.err


def test_causal_lm_is_loaded_as_a_decoder(tmp_path, tiny):
    folder = tmp_path / "mlm"
    modeling.MegatronBertForMaskedLM(tiny).save_pretrained(folder)
    model = load_model_for_task(folder, "causal-lm")
    assert model.config.is_decoder
    export_onnx(model, "causal-lm", tmp_path / "causal.onnx")


@pytest.mark.slow
def test_345m_preset_exports_with_external_data_and_verifies(tmp_path):
    """BERT-345M-sized export (random weights): one external-data file, verified against PyTorch."""
    from mbert_export.config import preset_config

    torch.manual_seed(0)
    model = modeling.MegatronBertForMaskedLM(preset_config("megatron-bert-345m-cased")).eval()
    result = export_onnx(model, "mlm", tmp_path / "model.onnx", max_seq_len=128)
    assert result.external_data is not None and result.external_data.stat().st_size > 1e9
    assert max(result.max_abs_diff.values()) <= 1e-4
    assert check_graph(result.path) == []
