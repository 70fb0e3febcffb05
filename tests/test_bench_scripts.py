"""The benchmark harness (`mbert-export bench`, mbert_export/bench.py) and the scripts in benchmarks/:
bad arguments refused up front, result names kept in benchmarks/results, cached graphs keyed on the
weights they came from, partial results marked. Tiny model and fast paths only."""

from __future__ import annotations

import importlib.util
import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest

from mbert_export import bench
from mbert_export.cli import main as cli_main

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def dirs(tmp_path, monkeypatch):
    """bench's results and artifacts folders, moved to tmp_path."""
    monkeypatch.setattr(bench, "RESULTS_DIR", tmp_path / "results")
    monkeypatch.setattr(bench, "ARTIFACTS_DIR", tmp_path / "artifacts")
    return tmp_path


def script(name: str):
    """benchmarks/NAME.py as a module (its main() is called in-process)."""
    spec = importlib.util.spec_from_file_location(f"bench_script_{name}", REPO / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# ---------------------------------------------------------------------------- bench
@pytest.mark.parametrize("name", ["a/b", "../x", "", "..", "a\\b"])
def test_result_names_with_separators_are_refused(name):
    with pytest.raises(ValueError, match="must be a plain file name"):
        bench.check_name(name)
    with pytest.raises(ValueError, match="must be a plain file name"):
        bench.save_results(name, {}, "")


def test_bench_checks_its_result_files_before_measuring(dirs, capsys):
    (dirs / "results" / "t.json").mkdir(parents=True)
    code = cli_main(["bench", "--model", "tiny", "--backends", "pytorch-fp32", "--shapes", "1x8", "--name", "t"])
    err = capsys.readouterr().err
    assert code == 2 and "t.json is a folder" in err and "Traceback" not in err
    assert not (dirs / "artifacts").exists()


def test_a_checkpoint_folder_gets_a_safe_result_name_and_artifact_folder(dirs, tmp_path):
    folder = tmp_path / "my ckpt"
    folder.mkdir()
    assert bench.model_label(str(folder)) == "my-ckpt"
    other = tmp_path / "elsewhere" / "my ckpt"
    cached = bench.artifact_folder(str(folder), folder)
    assert cached.parent == bench.ARTIFACTS_DIR and cached.name.startswith("my-ckpt-")
    assert cached != bench.artifact_folder(str(other), other)  # same folder name, another checkpoint
    assert bench.artifact_folder("demo", Path("/x")) == bench.ARTIFACTS_DIR / "demo"


class Exporting(Exception):
    """Raised from the progress callback when an export starts: the rebuild was decided (and is skipped)."""


def test_cached_graphs_are_rebuilt_when_the_weights_change(dirs, tmp_path):
    from mbert_export.config import preset_config
    from mbert_export.modeling import MegatronBertForMaskedLM

    checkpoint = tmp_path / "ckpt"
    model = MegatronBertForMaskedLM(preset_config("tiny")).eval()
    model.save_pretrained(checkpoint)
    messages: list[str] = []

    def progress(message: str) -> None:
        messages.append(message)
        if message.startswith("export:"):
            raise Exporting

    # A graph built from these weights (a stand-in file: reuse must not read it) is reused as it is.
    folder = bench.artifact_folder(str(checkpoint), checkpoint)
    graph = folder / "fp32" / "model.onnx"
    graph.parent.mkdir(parents=True)
    graph.write_text("built before")
    (folder / bench.SOURCE_FILE).write_text(json.dumps(bench.weights_source(model, checkpoint)))
    graphs = bench.prepare_graphs(model, str(checkpoint), checkpoint, ["ort-fp32"], progress)
    assert graphs == {"ort-fp32": graph} and graph.read_text() == "built before"
    assert any("reusing the ort-fp32 graph" in m for m in messages)
    # The weights change ("retrained"): the old graph goes and an export starts.
    weights = next(p for p in checkpoint.iterdir() if p.name.startswith("model."))
    stat = weights.stat()
    os.utime(weights, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    messages.clear()
    with pytest.raises(Exporting):
        bench.prepare_graphs(model, str(checkpoint), checkpoint, ["ort-fp32"], progress)
    assert any("not built from these weights" in m for m in messages) and not graph.exists()
    assert json.loads((folder / bench.SOURCE_FILE).read_text()) == bench.weights_source(model, checkpoint)
    # A graph with no record of its weights (an older cache) is not trusted either.
    (folder / bench.SOURCE_FILE).unlink()
    graph.parent.mkdir(parents=True, exist_ok=True)
    graph.write_text("unknown weights")
    with pytest.raises(Exporting):
        bench.prepare_graphs(model, str(checkpoint), checkpoint, ["ort-fp32"], progress)
    assert not graph.exists()
    # A preset's random weights are fingerprinted themselves (another torch or model code draws others).
    import torch

    torch.manual_seed(0)
    first = bench.weights_source(MegatronBertForMaskedLM(preset_config("tiny")).eval(), None)
    torch.manual_seed(0)
    assert bench.weights_source(MegatronBertForMaskedLM(preset_config("tiny")).eval(), None) == first
    torch.manual_seed(1)
    assert bench.weights_source(MegatronBertForMaskedLM(preset_config("tiny")).eval(), None) != first
    assert first["versions"]["torch"] == torch.__version__ and first["int8_recipe"]["keep_float"]


def test_bench_clips_long_sequences_the_same_way_for_seq_and_shapes(dirs):
    messages: list[str] = []
    report = bench.run_benchmark("tiny", backends=["pytorch-fp32"], batches=(1,), seqs=(8, 100), repeats=1,
                                 warmup=0, name="t", progress=messages.append)
    assert [(r["batch"], r["sequence"]) for r in report["results"]] == [(1, 8), (1, 64)]
    assert any("[100] exceed the model's 64 positions; timed at 64 instead" in m for m in messages)
    report = bench.run_benchmark("tiny", backends=["pytorch-fp32"], batches=(), seqs=(), shapes=[(1, 100)],
                                 repeats=1, warmup=0, name="t", progress=messages.append)
    assert [(r["batch"], r["sequence"]) for r in report["results"]] == [(1, 64)]
    saved = json.loads((dirs / "results" / "t.json").read_text())
    assert saved["complete"] is True
    assert "Partial results" not in (dirs / "results" / "t.md").read_text()


def test_an_interrupted_bench_marks_what_it_saved_as_partial(dirs, capsys):
    def progress(message: str) -> None:
        if "shape 2 of 2" in message:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):  # still Ctrl-C for callers; the CLI ends with 130
        bench.run_benchmark("tiny", backends=["pytorch-fp32"], shapes=[(1, 8), (1, 16)], repeats=1, warmup=0,
                            name="t", progress=progress)
    assert capsys.readouterr().err.startswith("interrupted: 1 of 2 shapes are saved in")
    saved = json.loads((dirs / "results" / "t.json").read_text())
    assert saved["complete"] is False and len(saved["results"]) == 1
    assert (dirs / "results" / "t.md").read_text().startswith(bench.PARTIAL_NOTE)


def test_warmup_zero_makes_no_untimed_call():
    calls = {"a": 0, "b": 0}

    def runner(key):
        def run(feeds):
            calls[key] += 1
            return np.zeros((1, 2, 3))
        return run

    feeds = {"input_ids": np.zeros((1, 2), dtype=np.int64)}
    rows = bench.bench_shape({bench.REFERENCE: runner("a"), "b": runner("b")}, feeds, warmup=0, repeats=2,
                             budget_s=60, progress=print)
    assert calls == {"a": 2, "b": 2} and rows["b"]["top1_agreement"] == 1.0 and rows["b"]["rounds"] == 2


# ---------------------------------------------------------------------------- openvino_int8_paths.py
@pytest.mark.parametrize("argv, message", [
    (["--shapes", "1*8"], "--shapes '1*8': expected BATCHxSEQ items"),
    (["--shapes", "1x0"], "expected positive BATCHxSEQ items"),
    (["--shapes", ""], "expected positive BATCHxSEQ items"),
    (["--repeats", "0"], "--repeats must be >= 1, got 0"),
    (["--threads", "0"], "--threads must be >= 1, got 0"),
    (["--name", "../../../tmp/x"], "--name '../../../tmp/x' must be a plain file name"),
    (["--model", "nope"], "--model 'nope' is neither 'demo'"),
])
def test_openvino_int8_paths_refuses_bad_arguments_up_front(dirs, capsys, argv, message):
    with pytest.raises(SystemExit) as stop:
        script("openvino_int8_paths").main(["--model", "tiny", *argv])
    err = capsys.readouterr().err
    assert stop.value.code == 2 and message in err and "Traceback" not in err
    assert not (dirs / "results").exists() and not (dirs / "artifacts").exists()


def test_openvino_int8_paths_default_name_follows_the_model(tmp_path):
    module = script("openvino_int8_paths")
    assert module.result_name(module.DEFAULT_MODEL, "") == "openvino-int8-paths"  # the committed 345M table
    assert module.result_name("demo", "") == "openvino-int8-paths-demo"
    assert module.result_name(str(tmp_path / "my model"), "") == "openvino-int8-paths-my-model"
    assert module.result_name("demo", "quick") == "openvino-int8-paths-quick"


# ---------------------------------------------------------------------------- parity_table.py, serve_bench.py, triton_floor.py
@pytest.mark.parametrize("argv, message", [
    (["--backends", "foo"], "--backends: unknown or no backends ['foo']; choose from onnxruntime, openvino"),
    (["--backends", ""], "--backends: unknown or no backends []"),
    (["--tasks", "mlm,nope"], "--tasks: unknown or no tasks ['nope']; choose from"),
    (["--tasks", ","], "--tasks: unknown or no tasks []"),
    (["--name", "sub/x"], "--name 'sub/x' must be a plain file name"),
])
def test_parity_table_refuses_bad_arguments_up_front(dirs, capsys, argv, message):
    work = dirs / "work"
    with pytest.raises(SystemExit) as stop:
        script("parity_table").main(["--work", str(work), *argv])
    err = capsys.readouterr().err
    assert stop.value.code == 2 and message in err and "Traceback" not in err
    assert not work.exists() and not (dirs / "results").exists()


@pytest.mark.parametrize("name", ["serve_bench", "triton_floor"])
def test_serving_scripts_refuse_result_names_that_leave_the_results_folder(dirs, capsys, name):
    with pytest.raises(SystemExit) as stop:
        script(name).main(["--name", "../x", "--perf-analyzer", "/nonexistent"])
    err = capsys.readouterr().err
    assert stop.value.code == 2 and "--name '../x' must be a plain file name" in err
    assert not (dirs / "results").exists()


def test_serve_bench_help_shows_its_default_name(capsys):
    with pytest.raises(SystemExit):
        script("serve_bench").main(["--help"])
    assert "(default demo: serve-demo)" in " ".join(capsys.readouterr().out.split())


# ---------------------------------------------------------------------------- precision_cost.py, int8_memory.py
def test_the_precision_work_graph_is_kept_per_preset(tmp_path, capsys):
    module = script("precision_cost")
    tiny, big = module.work_graph(tmp_path, "tiny"), module.work_graph(tmp_path, "megatron-bert-345m-cased")
    assert tiny != big and not module.check_work_graph(tiny, "tiny")  # missing: to be exported
    tiny.parent.mkdir(parents=True)
    tiny.write_bytes(b"graph")
    with pytest.raises(ValueError, match="has no preset.txt saying which preset"):
        module.check_work_graph(tiny, "tiny")
    (tiny.parent / module.PRESET_RECORD).write_text("tiny\n")
    assert module.check_work_graph(tiny, "tiny")
    with pytest.raises(SystemExit) as stop:  # another preset's graph is refused before any pass runs
        script("int8_memory").main(["--preset", "megatron-bert-345m-cased", "--src", str(tiny)])
    err = capsys.readouterr().err
    assert stop.value.code == 2 and "was exported from the tiny preset, not megatron-bert-345m-cased" in err


def test_export_cost_verifies_within_the_presets_positions():
    module = script("export_cost")
    assert module.verify_tokens("tiny") == 64 and module.verify_tokens("megatron-bert-345m-cased") == 512


# ---------------------------------------------------------------------------- exporter_choice.py
@pytest.mark.parametrize("argv, message", [
    (["--preset", "foo"], "unknown preset foo; choose from"),
    (["--timeout", "0"], "--timeout must be a positive number of seconds, got 0"),
])
def test_exporter_choice_refuses_bad_arguments_up_front(tmp_path, capsys, argv, message):
    results = tmp_path / "exporter_choice.json"
    with pytest.raises(SystemExit) as stop:
        script("exporter_choice").main(["--preset", "tiny", *argv, "--results", str(results),
                                        "--out-dir", str(tmp_path / "out")])
    assert stop.value.code == 2 and message in capsys.readouterr().err
    assert not results.exists() and not (tmp_path / "out").exists()


def test_an_exporter_child_past_its_timeout_is_a_row_error(tmp_path):
    out = tmp_path / "out" / "tiny__dynamo" / "model.onnx"
    row = script("exporter_choice").run_child("export", "tiny", "dynamo", out, timeout=0.05)
    assert row == {"error": "export child timed out after 0.05 s (--timeout)"}


# ---------------------------------------------------------------------------- convert_memory*.py
@pytest.mark.parametrize("name", ["convert_memory", "convert_memory_torch_dist"])
@pytest.mark.parametrize("kind, message", [("missing", "does not exist; create it"),
                                           ("file", "is a file, not a folder")])
def test_convert_benchmarks_refuse_a_bad_workdir_up_front(tmp_path, capsys, name, kind, message):
    workdir = tmp_path / "work"
    if kind == "file":
        workdir.write_text("")
    with pytest.raises(SystemExit) as stop:
        script(name).main(["--workdir", str(workdir)])
    err = capsys.readouterr().err
    assert stop.value.code == 2 and f"--workdir {workdir} {message}" in err and "Traceback" not in err


def test_convert_memory_torch_dist_refuses_zero_layers(tmp_path, capsys):
    with pytest.raises(SystemExit) as stop:
        script("convert_memory_torch_dist").main(["--layers", "0", "--workdir", str(tmp_path)])
    assert stop.value.code == 2 and "--layers must be >= 1, got 0" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())


def test_ctrl_c_while_the_graphs_are_built_says_nothing_was_saved(dirs, capsys, monkeypatch):
    def progress(message: str) -> None:
        if message.startswith("export:"):
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        bench.run_benchmark("tiny", backends=["ort-fp32"], shapes=[(1, 8)], repeats=1, name="t", progress=progress)
    assert capsys.readouterr().err == "interrupted: nothing was saved\n"
    assert not (dirs / "results" / "t.json").exists()
    from mbert_export import cli  # the command line: status 130, no traceback

    monkeypatch.setattr(cli, "progress", progress)
    assert cli.main(["bench", "--model", "tiny", "--backends", "ort-fp32", "--shapes", "1x8", "--repeats", "1",
                     "--name", "t"]) == 130
    assert "Traceback" not in capsys.readouterr().err
