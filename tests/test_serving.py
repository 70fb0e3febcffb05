"""Serving with a real tritonserver 2.51 (nvidia-pytriton's binary, python backend) on 127.0.0.1.

The server and its python models run from their own virtual environment (numpy < 2, tokenizers,
onnxruntime, this package without torch), named by $MBERT_TRITON_ENV; .ci/run builds it. With CI=true
these tests fail when it is missing; elsewhere they skip. The in-process runtime (OrtMegatronBert, and
OvMegatronBert for an OpenVINO build) is the oracle. Each server is started on free ports, stopped by its PID, and checked to leave no process.

The ensemble's middle model (`onnxruntime_onnx` / `tensorrt_plan`) needs backends only NVIDIA's
container has: here a python-backend STAND-IN (tests/triton_onnx_standin.py) serves the same
model.onnx under the same config; tokenize and postprocess run for real.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from mbert_export.runtime import OrtMegatronBert

IN_CI = os.environ.get("CI") == "true"
SERVER_ENV = os.environ.get("MBERT_TRITON_ENV", "")
TASKS = ("mlm", "sequence-classification", "token-classification", "question-answering", "pretraining",
         "multiple-choice", "base", "causal-lm")
#: Long enough for concurrent requests to meet in the dynamic batcher, short for serial calls.
QUEUE_DELAY_US = 3000
STANDIN = Path(__file__).with_name("triton_onnx_standin.py")

MLM_TEXTS = ["The [MASK] statement is used to import a module.", "A [MASK] returns a new list.",
             "Use the [MASK] function to open a file.", "The [MASK] of a list is its length.",
             "An [MASK] is raised when the key is missing."]
TEXTS = ["The import statement loads 3 modules from the package.", "A function returns a new list.",
         "Python 3.12 adds a new syntax for type parameters.", "The file is opened in binary mode."]
QUESTION = "Which number is mentioned?"


def _need(what: str, ok: bool) -> None:
    if not ok:
        if IN_CI:
            pytest.fail(f"CI=true but {what}; .ci/run builds the server venv and exports MBERT_TRITON_ENV")
        pytest.skip(what)


def _tritonclient():
    try:
        import tritonclient.grpc  # noqa: F401
        import tritonclient.http  # noqa: F401
    except ImportError:
        _need("tritonclient is not installed (pip install 'tritonclient[http,grpc]')", False)


def _server_env() -> str:
    _need("no Triton server env ($MBERT_TRITON_ENV)", bool(SERVER_ENV) and Path(SERVER_ENV, "bin", "python").exists())
    return SERVER_ENV


def assert_same(got, want, where="result"):
    """Equal structure and values; floats within 1e-4 (batches pad differently than single calls)."""
    if isinstance(want, float) or isinstance(got, float):
        assert abs(float(got) - float(want)) <= 1e-4 + 1e-3 * abs(float(want)), f"{where}: {got} != {want}"
    elif isinstance(want, dict):
        assert isinstance(got, dict) and set(got) == set(want), f"{where}: {got} != {want}"
        for key in want:
            assert_same(got[key], want[key], f"{where}.{key}")
    elif isinstance(want, (list, tuple, np.ndarray)):
        assert len(got) == len(want), f"{where}: {got} != {want}"
        for i, (g, w) in enumerate(zip(got, want)):
            assert_same(g, w, f"{where}[{i}]")
    else:
        assert got == want, f"{where}: {got!r} != {want!r}"


# ---------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def artifacts(task_artifacts) -> dict[str, Path]:
    """task -> FP32 ONNX artifact folder of the demo encoder with a trained head (shared with the parity suite)."""
    return {task: task_artifacts(task, ("fp32",))[1]["fp32"] for task in TASKS}


@pytest.fixture(scope="module")
def runtimes(artifacts):
    made = {task: OrtMegatronBert(folder) for task, folder in artifacts.items()}
    yield made
    for runtime in made.values():
        runtime.close()


def _names(task: str) -> str:
    return {"sequence-classification": "cls", "token-classification": "ner", "question-answering": "qa",
            "multiple-choice": "mc", "causal-lm": "clm"}.get(task, task)


@pytest.fixture(scope="module")
def server_env() -> str:
    """The server venv (checked before any artifact is built: skips fast where there is none)."""
    _tritonclient()
    return _server_env()


@pytest.fixture(scope="module")
def python_server(server_env, artifacts, tmp_path_factory):
    """One tritonserver serving the four tasks in the python layout; stopped (and checked) by the last test."""
    from mbert_export.serving.repository import write_repository
    from mbert_export.serving.server import start_server

    env = server_env
    repository = tmp_path_factory.mktemp("python-layout") / "repository"
    write_repository([artifacts[t] for t in TASKS], repository, names=[_names(t) for t in TASKS], layout="python",
                     max_queue_delay_us=QUEUE_DELAY_US, threads=1, instances=1)
    server = start_server(repository, python_env=env, timeout=180)
    yield server
    server.stop()


def _client(server, task: str, protocol: str):
    from mbert_export.serving import TritonMegatronBert

    url = server.http_url if protocol == "http" else server.grpc_url
    return TritonMegatronBert(url, _names(task), protocol, timeout=60)


def _calls(task: str):
    """(method, args, kwargs) exercising single and list inputs and a few options."""
    if task == "mlm":
        return [("fill_mask", (MLM_TEXTS[0],), {}), ("fill_mask", (MLM_TEXTS,), {"top_k": 3}),
                ("fill_mask", ("The [MASK] is a [MASK].",), {"top_k": 2}),
                ("fill_mask", (MLM_TEXTS[1],), {"targets": ["value", "list"]})]
    if task == "sequence-classification":
        return [("classify", (TEXTS[0],), {}), ("classify", (TEXTS,), {"top_k": None}),
                ("classify", (TEXTS[:2],), {"text_pair": TEXTS[2:], "function_to_apply": "sigmoid"})]
    if task == "token-classification":
        return [("classify_tokens", (TEXTS[0],), {}), ("classify_tokens", (TEXTS,), {"aggregation": "simple"}),
                ("classify_tokens", (TEXTS[2],), {"ignore_labels": []})]
    if task == "pretraining":  # two methods in one model: `method` picks
        return [("fill_mask", (MLM_TEXTS[0],), {"top_k": 2}), ("next_sentence", (TEXTS[0], TEXTS[1]), {}),
                ("next_sentence", (TEXTS[:2], TEXTS[2:]), {})]
    if task == "multiple-choice":
        return [("multiple_choice", ("Pick one:", ["a cat", "a dog", "a car"]), {}),
                ("multiple_choice", (["Pick one:", "Which?"], [["a cat", "a dog"], ["a car", "a bus"]]), {})]
    if task == "base":
        return [("embed", (TEXTS[0],), {"pooling": "mean"}), ("embed", (TEXTS,), {})]
    if task == "causal-lm":
        return [("next_token", ("Paris is the",), {"top_k": 3}), ("next_token", (TEXTS[:2],), {})]
    return [("answer_question", (QUESTION, TEXTS[0]), {}),
            ("answer_question", ([QUESTION] * 4, TEXTS), {"top_k": 2}),
            ("answer_question", (QUESTION, " ".join(TEXTS * 6)), {"max_answer_len": 5})]


# ---------------------------------------------------------------------------- configs (no server)
def test_every_config_parses_and_matches_the_graph(artifacts, tmp_path):
    _tritonclient()
    import onnx
    from tritonclient.grpc import model_config_pb2

    from mbert_export.serving.repository import parse_config, write_repository

    python = write_repository(list(artifacts.values()), tmp_path / "py", names=[_names(t) for t in TASKS],
                              preferred_batch=[4, 8], instances=2)
    ensemble = write_repository([artifacts["mlm"], artifacts["token-classification"]], tmp_path / "ens",
                                names=["mlm", "ner"], layout="ensemble")
    assert [e.name for e in ensemble] == ["mlm_tokenize", "mlm_model", "mlm_postprocess", "mlm",
                                          "ner_tokenize", "ner_model", "ner_postprocess", "ner"]
    types = {1: "TYPE_FP32", 7: "TYPE_INT64", 10: "TYPE_FP16"}
    for entry in python + ensemble:
        root = tmp_path / ("py" if entry in python else "ens")
        config = parse_config((root / entry.name / "config.pbtxt").read_text())
        assert config.name == entry.name and config.max_batch_size == 32  # plain exports: the runtime's default
        ios = {t.name: (t.data_type, list(t.dims), getattr(t, "optional", False)) for t in list(config.input) + list(config.output)}
        if entry.kind in ("python", "ensemble") and not entry.name.endswith(("_tokenize", "_postprocess")):
            assert ios["RESULT"][:2] == (model_config_pb2.DataType.Value("TYPE_STRING"), [1])
        if entry.kind == "onnxruntime_onnx":
            graph = onnx.load(str(root / entry.name / "1" / "model.onnx"), load_external_data=False).graph
            for value in list(graph.input) + list(graph.output):
                dims = [d.dim_value if d.dim_value else -1 for d in value.type.tensor_type.shape.dim][1:]
                want = model_config_pb2.DataType.Value(types[value.type.tensor_type.elem_type])
                assert ios[value.name][:2] == (want, dims), value.name
            assert len(ios) == len(graph.input) + len(graph.output)
            assert config.instance_group[0].kind == config.instance_group[0].KIND_CPU
        if entry not in python and config.instance_group:  # defaults: two CPU instances, no queue delay
            assert config.instance_group[0].count == 2
            if config.HasField("dynamic_batching"):
                assert config.dynamic_batching.max_queue_delay_microseconds == 0
        if entry in python:
            assert config.dynamic_batching.preferred_batch_size == [4, 8] and config.instance_group[0].count == 2
            assert (root / entry.name / "1" / "mbert_export" / "runtime" / "pipeline.py").is_file()
            bundled = "".join(p.read_text() for p in (root / entry.name / "1").rglob("*.py"))
            assert not re.search(r"^\s*(import|from)\s+(torch|transformers)\b", bundled, re.M)
    cls = parse_config((tmp_path / "py" / "cls" / "config.pbtxt").read_text())
    assert [(i.name, i.optional) for i in cls.input] == [("TEXT", False), ("TEXT_PAIR", True)]
    qa = parse_config((tmp_path / "py" / "qa" / "config.pbtxt").read_text())
    assert [i.name for i in qa.input] == ["QUESTION", "CONTEXT"]
    assert {p: qa.parameters[p].string_value for p in ("task", "top_k", "max_answer_len")} == {
        "task": "question-answering", "top_k": "1", "max_answer_len": "15"}


def test_engine_folders_get_tensorrt_configs(artifacts, tmp_path):
    _tritonclient()
    from mbert_export.serving.repository import parse_config, write_repository

    folder = tmp_path / "engine"
    shutil.copytree(artifacts["mlm"], folder)
    (folder / "engine.plan").write_bytes(b"not a real engine")
    (folder / "build.json").write_text(json.dumps({
        "task": "mlm", "precision": "fp32", "engine": "engine.plan", "max_seq_len": 64,
        "profiles": [{"batch": [1, 4, 8], "sequence": [1, 32, 64], "num_choices": [2, 4, 8]},
                     {"batch": [1, 8, 16], "sequence": [1, 16, 32], "num_choices": [2, 4, 8]}]}))
    entries = {e.name: e for e in write_repository([folder], tmp_path / "repo", layout="ensemble")}
    model = parse_config(entries["engine_model"].config)
    assert model.platform == "tensorrt_plan" and model.max_batch_size == 16
    assert model.instance_group[0].kind == model.instance_group[0].KIND_GPU and model.instance_group[0].count == 1
    assert (tmp_path / "repo" / "engine_model" / "1" / "model.plan").read_bytes() == b"not a real engine"
    python = write_repository([folder], tmp_path / "py")[0]
    assert parse_config(python.config).parameters["backend"].string_value == "tensorrt"
    cpu = write_repository([folder], tmp_path / "cpu", backend="onnxruntime")[0]
    assert parse_config(cpu.config).instance_group[0].kind == model.instance_group[0].KIND_CPU
    assert not (tmp_path / "cpu" / "engine" / "1" / "artifact" / "engine.plan").exists()


def test_auto_backend_follows_the_build_and_the_server_env_check_follows_the_models(artifacts, tmp_path,
                                                                                    monkeypatch):
    """`auto`: an OpenVINO build runs on OpenVINO in the python layout (the ensemble's middle model stays
    onnxruntime_onnx); a TensorRT build without its engine file runs its graph on ONNX Runtime. The
    server-env check asks for each python model's runtime, and skips a config Triton would refuse."""
    _tritonclient()
    from mbert_export.serving.repository import parse_config, write_repository
    from mbert_export.serving.server import _python_model_imports

    def build_of(backend: str, **extra) -> Path:
        folder = tmp_path / f"{backend}-build"
        shutil.copytree(artifacts["mlm"], folder)
        (folder / "build.json").write_text(json.dumps({"task": "mlm", "precision": "fp32", "backend": backend,
                                                       **extra}))
        return folder

    openvino, tensorrt = build_of("openvino"), build_of("tensorrt", engine="engine.plan")
    entries = write_repository([openvino, tensorrt, artifacts["mlm"]], tmp_path / "repo", names=["ov", "trt", "ort"])
    assert [e.describe() for e in entries] == ["python running openvino", "python running onnxruntime",
                                               "python running onnxruntime"]
    groups = [parse_config(e.config).instance_group[0] for e in entries]
    assert [g.kind for g in groups] == [groups[0].KIND_CPU] * 3
    assert _python_model_imports(tmp_path / "repo") == {"tokenizers": "tokenizers", "onnxruntime": "onnxruntime",
                                                        "openvino": "openvino>=2026.4,<2027"}
    (tmp_path / "repo" / "ort" / "config.pbtxt").write_text("backend: python\nno_such_field: 1\n")
    (tmp_path / "repo" / "trt" / "config.pbtxt").unlink()
    assert sorted(_python_model_imports(tmp_path / "repo")) == ["openvino", "tokenizers"]
    monkeypatch.setitem(sys.modules, "tritonclient.grpc", None)  # no tritonclient: what any repository needs
    assert sorted(_python_model_imports(tmp_path / "repo")) == ["onnxruntime", "tokenizers"]
    monkeypatch.undo()
    ensemble = {e.name: e for e in write_repository([openvino], tmp_path / "ensemble", layout="ensemble")}
    assert ensemble["openvino-build_model"].kind == "onnxruntime_onnx"


def test_bad_repository_requests_write_nothing(artifacts, tmp_path):
    from mbert_export.serving.repository import write_repository

    with pytest.raises(ValueError, match="question answering splits long contexts"):
        write_repository([artifacts["mlm"], artifacts["question-answering"]], tmp_path / "r", names=["mlm", "qa"],
                         layout="ensemble")
    with pytest.raises(ValueError, match="two models would be called"):
        write_repository([artifacts["mlm"], artifacts["mlm"]], tmp_path / "r")
    with pytest.raises(ValueError, match="one --name per artifact"):
        write_repository([artifacts["mlm"]], tmp_path / "r", names=["a", "b"])
    with pytest.raises(ValueError, match="does not exist"):
        write_repository([tmp_path / "missing"], tmp_path / "r")
    with pytest.raises(ValueError, match="model name aaaaaaaaaaaaaaaaaaaa... is 300 characters long; use at most 200"):
        write_repository([artifacts["mlm"]], tmp_path / "r", names=["a" * 300])
    with pytest.raises(ValueError, match="shape dynamic batching, which is off"):
        write_repository([artifacts["mlm"]], tmp_path / "r", dynamic_batching=False, preferred_batch=[8])
    with pytest.raises(ValueError, match="threads set the python layout's runtime"):
        write_repository([artifacts["mlm"]], tmp_path / "r", layout="ensemble", threads=3)
    with pytest.raises(ValueError, match="sequence_bucket pads the ensemble's token ids"):
        write_repository([artifacts["mlm"]], tmp_path / "r", sequence_bucket=7)  # the python layout
    with pytest.raises(ValueError, match="the repository path is empty"):
        write_repository([artifacts["mlm"]], "", overwrite=True)
    assert not (tmp_path / "r").exists() and not list(tmp_path.glob(".r.*"))
    write_repository([artifacts["mlm"]], tmp_path / "r")
    with pytest.raises(FileExistsError):
        write_repository([artifacts["mlm"]], tmp_path / "r")
    write_repository([artifacts["mlm"]], tmp_path / "r", names=["other"], overwrite=True)  # a repository: replaced
    assert [p.name for p in (tmp_path / "r").iterdir()] == ["other"]
    theirs = tmp_path / "docs"  # a folder of someone's files is never replaced, --overwrite or not
    (theirs / "sub").mkdir(parents=True)
    (theirs / "notes.txt").write_text("precious")
    with pytest.raises(FileExistsError, match=r"docs holds files this did not write \(notes.txt, sub\)"):
        write_repository([artifacts["mlm"]], theirs, overwrite=True)
    assert (theirs / "notes.txt").read_text() == "precious" and (theirs / "sub").is_dir()


def test_weights_in_files_of_any_name_go_with_the_graph(artifacts, runtimes, tmp_path):
    """A graph whose weights sit in w.bin (not model.onnx.data): both layouts copy them where the
    graph names them, and the copies answer as the artifact does."""
    import onnx
    import onnxruntime

    from mbert_export.runtime.artifact import MissingFileError
    from mbert_export.serving.repository import write_repository
    from mbert_export.serving.triton_models import ARTIFACT_DIR

    folder = tmp_path / "mlm"
    shutil.copytree(artifacts["mlm"], folder)
    onnx.save_model(onnx.load(str(folder / "model.onnx")), str(folder / "model.onnx"), save_as_external_data=True,
                    location="w.bin", size_threshold=1024)
    python = write_repository([folder], tmp_path / "py", names=["mlm"])[0]
    assert "w.bin" in python.files
    copy = tmp_path / "py" / "mlm" / "1" / ARTIFACT_DIR
    assert_same(OrtMegatronBert(copy).fill_mask(MLM_TEXTS[0]), runtimes["mlm"].fill_mask(MLM_TEXTS[0]))
    entries = write_repository([folder], tmp_path / "ens", names=["mlm"], layout="ensemble")
    model = next(e for e in entries if e.kind == "onnxruntime_onnx")
    assert model.files == ["model.onnx", "w.bin"]
    onnxruntime.InferenceSession(str(tmp_path / "ens" / model.name / "1" / "model.onnx"))  # its weights found
    (folder / "w.bin").unlink()
    with pytest.raises(MissingFileError, match="keeps weights in w.bin, which is not in"):
        write_repository([folder], tmp_path / "gone", names=["mlm"])
    assert not (tmp_path / "gone").exists()


def test_bad_artifacts_and_options_get_their_own_errors(artifacts, tmp_path):
    """What is wrong is named (not a traceback, not "no TensorRT engine"), and nothing is destroyed."""
    from mbert_export.runtime import ArtifactError
    from mbert_export.serving.repository import write_repository

    def copy(name: str, **build_json) -> Path:
        folder = tmp_path / name
        shutil.copytree(artifacts["mlm"], folder)
        if build_json:
            (folder / "build.json").write_text(json.dumps({"task": "mlm", "precision": "fp32", **build_json}))
        return folder

    artifact = copy("artifact")
    before = sorted(p.name for p in artifact.iterdir())
    for target in (artifact, tmp_path):  # the artifact's folder, or one that holds it: refused, even with overwrite
        with pytest.raises(ValueError, match="which this reads from: writing there would destroy it"):
            write_repository([artifact], target, overwrite=True)
    assert sorted(p.name for p in artifact.iterdir()) == before
    (tmp_path / "a-file").write_text("x")
    with pytest.raises(FileExistsError, match="is a file, not a folder"):
        write_repository([artifact], tmp_path / "a-file", overwrite=True)
    with pytest.raises(FileExistsError, match="a-file is a file, not a folder"):
        write_repository([artifact], tmp_path / "a-file" / "sub")
    assert (tmp_path / "a-file").read_text() == "x" and not list(tmp_path.glob(".a-file*"))
    empty = copy("empty-graph")
    (empty / "model.onnx").write_bytes(b"")
    with pytest.raises(ArtifactError, match="model.onnx is not an ONNX model"):
        write_repository([empty], tmp_path / "r")
    no_tokenizer = copy("no-tokenizer")
    for name in ("vocab.txt", "tokenizer.json"):
        (no_tokenizer / name).unlink(missing_ok=True)
    for layout in ("python", "ensemble"):
        with pytest.raises(ArtifactError, match="no-tokenizer has no tokenizer files .* the served models take text"):
            write_repository([no_tokenizer], tmp_path / "r", layout=layout)
    bad_build_json = {"task": ["mlm"], "profiles": [{"batch": 5}], "openvino": "x", "max_batch": 1e30}
    messages = {"task": "task must be a task name", "profiles": "'profiles' must be a list of objects",
                "openvino": "'openvino' must be a JSON object", "max_batch": "max_batch must be between 1 and"}
    for key, value in bad_build_json.items():
        folder = copy(f"bad-{key}", **{key: value})
        with pytest.raises(ArtifactError, match=messages[key]):
            write_repository([folder], tmp_path / "r")
    with pytest.raises(ArtifactError, match="build.json: max_batch must be an integer, got 2.7"):
        write_repository([copy("fractional", max_batch=2.7)], tmp_path / "r")
    neither = copy("neither")
    (neither / "model.onnx").unlink()
    with pytest.raises(ArtifactError, match="neither has neither model.onnx nor engine.plan"):
        write_repository([neither], tmp_path / "r", backend="tensorrt")
    engine_only = copy("engine-only", engine="engine.plan", max_batch=2**40)
    (engine_only / "model.onnx").unlink()
    (engine_only / "engine.plan").write_bytes(b"engine")
    with pytest.raises(ArtifactError, match="engine-only/build.json") as caught:  # the engine side's own problem
        write_repository([engine_only], tmp_path / "r")
    assert "has no model.onnx" not in str(caught.value)
    with pytest.raises(ArtifactError, match="has no TensorRT engine"):
        write_repository([artifact], tmp_path / "r", layout="ensemble", backend="tensorrt")
    with pytest.raises(ValueError, match="instances must be an integer from 1 to 2147483647"):
        write_repository([artifact], tmp_path / "r", instances=2**31)
    with pytest.raises(ValueError, match="preferred batch size 64 exceeds max_batch_size 32 of this artifact"):
        write_repository([artifact], tmp_path / "r", preferred_batch=[8, 64])
    assert not (tmp_path / "r").exists()


# ---------------------------------------------------------------------------- python layout, real server
@pytest.mark.parametrize("protocol", ["http", "grpc"])
@pytest.mark.parametrize("task", TASKS)
def test_python_layout_answers_equal_the_runtime(python_server, runtimes, task, protocol):
    with _client(python_server, task, protocol) as client:
        assert client.task.name == task and client.ready()
        for method, args, kwargs in _calls(task):
            want = getattr(runtimes[task], method)(*args, **kwargs)
            assert_same(getattr(client, method)(*args, **kwargs), want, f"{task} {method}{args}")


def test_concurrent_clients_are_batched_and_answer_as_serial(python_server, runtimes):
    """8 threads x 12 requests each (bounded), mixed single texts; batches > 1 in the server's statistics."""
    from mbert_export.serving import TritonMegatronBert

    texts = MLM_TEXTS * 3
    serial = {t: runtimes["mlm"].fill_mask(t, top_k=3) for t in set(texts)}
    before = TritonMegatronBert(python_server.http_url, "mlm").batch_sizes()
    results: dict[tuple[int, int], object] = {}
    errors: list[BaseException] = []
    barrier = threading.Barrier(8, timeout=60)

    def worker(index: int) -> None:
        try:
            protocol = "grpc" if index % 2 else "http"
            with _client(python_server, "mlm", protocol) as client:
                barrier.wait()
                for j in range(12):
                    results[index, j] = client.fill_mask(texts[(index + j) % len(texts)], top_k=3)
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
    start = time.monotonic()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert not any(t.is_alive() for t in threads) and time.monotonic() - start < 120
    assert not errors, errors
    assert len(results) == 96
    for (index, j), got in results.items():
        assert_same(got, serial[texts[(index + j) % len(texts)]], f"client {index} request {j}")
    stats = TritonMegatronBert(python_server.http_url, "mlm")
    for _ in range(50):  # the server records a batch's statistics just after answering it
        after = stats.batch_sizes()
        executed = {size: after.get(size, 0) - before.get(size, 0) for size in after}
        if sum(size * count for size, count in executed.items()) >= 96:
            break
        time.sleep(0.1)
    stats.close()
    assert sum(size * count for size, count in executed.items()) == 96
    assert max(size for size, count in executed.items() if count) > 1, executed


def test_config_and_statistics_read_alike_over_http_and_grpc(python_server):
    """gRPC's answers come as the HTTP client's: counts and dims as ints, data types by name."""
    with _client(python_server, "mlm", "http") as http, _client(python_server, "mlm", "grpc") as grpc:
        http.fill_mask(MLM_TEXTS[0])
        by_http, by_grpc = http.statistics(), grpc.statistics()
        assert isinstance(by_grpc["inference_count"], int) and by_grpc["inference_count"] >= 1
        for key in ("inference_count", "execution_count", "last_inference"):
            assert by_grpc[key] == by_http[key], key
        assert grpc.batch_sizes() == http.batch_sizes() and http.batch_sizes()
        for key in ("max_batch_size", "input", "output"):
            assert grpc.config[key] == http.config[key], key
        assert grpc.config["input"][0]["data_type"] == "TYPE_STRING" and grpc.config["input"][0]["dims"] == [1]


def test_bad_requests_fail_alone_in_one_batch(python_server, runtimes):
    """Good and bad requests sent at once (one dynamic batch): each bad one gets its own error."""
    import tritonclient.grpc as grpcclient
    from tritonclient.utils import InferenceServerException

    long_text = "[MASK] " + "word " * 200
    cases = [("good", MLM_TEXTS[0], {}), ("no mask", "There is no mask here.", {}),
             ("good", MLM_TEXTS[1], {}), ("too long", long_text, {}), ("wrong task", MLM_TEXTS[2], {"method": "classify"}),
             ("bad option", MLM_TEXTS[3], {"top_k": "0"}), ("unknown option", MLM_TEXTS[3], {"beam": "2"}),
             ("good", MLM_TEXTS[4], {"top_k": "2"}), ("truncated", long_text, {"truncation": "true"})]
    replies: dict[int, object] = {}
    barrier = threading.Barrier(len(cases), timeout=60)

    def send(index: int, text: str, params: dict) -> None:  # one client per thread, all sent at once
        client = grpcclient.InferenceServerClient(python_server.grpc_url)
        tensor = grpcclient.InferInput("TEXT", [1, 1], "BYTES")
        tensor.set_data_from_numpy(np.array([[text.encode()]], dtype=np.object_))
        barrier.wait()
        try:
            reply = client.infer("mlm", [tensor], parameters=params, client_timeout=60)
            replies[index] = [json.loads(r[0]) for r in reply.as_numpy("RESULT")]
        except InferenceServerException as exc:
            replies[index] = exc
        finally:
            client.close()

    threads = [threading.Thread(target=send, args=(i, text, params)) for i, (_, text, params) in enumerate(cases)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(90)
    assert len(replies) == len(cases)
    messages = {"no mask": "has no [MASK] token", "too long": "pass truncation=True",
                "wrong task": "classify() needs an artifact exported for task 'sequence-classification'",
                "bad option": "top_k must be a positive integer", "unknown option": "unknown option(s) beam"}
    for index, (kind, text, params) in enumerate(cases):
        if kind in messages:
            assert not isinstance(replies[index], list) and messages[kind] in replies[index].message(), kind
            assert replies[index].status() == "StatusCode.INVALID_ARGUMENT", kind  # a client's error, not the server's
        else:
            options = {k: json.loads(v) for k, v in params.items()}
            assert_same(replies[index], [runtimes["mlm"].fill_mask(text, **options)])
    with _client(python_server, "mlm", "http") as mlm:
        assert mlm.ready()
        assert_same(mlm.fill_mask(MLM_TEXTS[0]), runtimes["mlm"].fill_mask(MLM_TEXTS[0]))
        with pytest.raises(ValueError, match="has no \\[MASK\\] token"):
            mlm.fill_mask(["A [MASK] here.", "none here"])
        with pytest.raises(ValueError, match="classify\\(\\) needs an artifact"):
            mlm.classify("text")


def test_client_edges_answer_as_in_process(python_server, runtimes):
    """One client shared by threads, lists longer than a batch, numpy options, bad values and timeouts."""
    from mbert_export.serving import TritonMegatronBert, TritonRequestError

    local, want = runtimes["mlm"], runtimes["mlm"].fill_mask(MLM_TEXTS[0], top_k=3)
    for protocol in ("http", "grpc"):
        with _client(python_server, "mlm", protocol) as mlm:
            answers, errors = [], []

            def work() -> None:  # gRPC: shared; HTTP: refused at once (tritonclient's HTTP client is not thread-safe)
                try:
                    answers.extend(mlm.fill_mask(MLM_TEXTS[0], top_k=3) for _ in range(5))
                except Exception as exc:  # noqa: BLE001 - checked below
                    errors.append(exc)

            workers = [threading.Thread(target=work) for _ in range(4)]
            for worker in workers:
                worker.start()
            for worker in workers:
                worker.join(60)
            assert not any(w.is_alive() for w in workers), protocol
            if protocol == "grpc":
                assert errors == [] and len(answers) == 20
                for answer in answers:
                    assert_same(answer, want)
            else:
                assert answers == [] and len(errors) == 4 and all(
                    isinstance(e, RuntimeError) and "belongs to the thread that made it" in str(e) for e in errors)
                assert_same(mlm.fill_mask(MLM_TEXTS[0], top_k=3), want)  # its own thread: fine
            texts = ["A [MASK] returns a new list."] * (mlm.max_batch + 3)
            texts[mlm.max_batch + 1] = "There is no mask here."  # in the second piece the client sends
            with pytest.raises(ValueError, match=rf"^text\[{mlm.max_batch + 1}\] has no \[MASK\] token"):
                local.fill_mask(texts)
            with pytest.raises(TritonRequestError, match=rf"^text\[{mlm.max_batch + 1}\] has no \[MASK\] token"):
                mlm.fill_mask(texts)
            texts[mlm.max_batch + 1] = "[MASK] " + "word " * 300  # the tokenizer's own wording: "input N"
            with pytest.raises(ValueError, match=rf"^input {mlm.max_batch + 1} is 30\d tokens long"):
                local.fill_mask(texts)
            with pytest.raises(TritonRequestError, match=rf"^input {mlm.max_batch + 1} is 30\d tokens long"):
                mlm.fill_mask(texts)
            assert_same(mlm.fill_mask(MLM_TEXTS[1], top_k=np.int64(2)), local.fill_mask(MLM_TEXTS[1], top_k=2))
            with pytest.raises(TypeError, match="text must be a str or a list of str, got NoneType"):
                mlm.fill_mask(None)
            with pytest.raises(TypeError, match=r"option targets=\{'value'\}: a set cannot be sent to the server"):
                mlm.fill_mask(MLM_TEXTS[1], targets={"value"})
    with _client(python_server, "mlm", "grpc") as mlm:  # gRPC took no timeout at all before: a call could hang
        mlm.timeout = 1e-6  # a deadline gone before the request is sent
        with pytest.raises(TritonRequestError, match=r"no answer at .* from model 'mlm' within timeout=1e-06 s"):
            mlm.fill_mask(MLM_TEXTS[0])
    with _client(python_server, "multiple-choice", "grpc") as choose:  # refused as in-process, word for word
        local = runtimes["multiple-choice"]
        for choices in ("blue", {"a": 1}):
            with pytest.raises(Exception) as here:
                local.multiple_choice("The sky is", choices)
            with pytest.raises(type(here.value), match=re.escape(str(here.value))):
                choose.multiple_choice("The sky is", choices)
    metrics = python_server.metrics_url.split("//")[-1].split("/")[0]
    with pytest.raises(TritonRequestError, match=f"no Triton HTTP endpoint answers at {metrics} .*is this its HTTP "
                                                 "port"):
        TritonMegatronBert(metrics, "mlm", timeout=10)


def test_python_server_stops_without_leftovers(python_server):
    from mbert_export.serving import TritonRequestError

    pid, group = python_server.pid, python_server.processes()
    assert pid in group and len(group) >= 5  # the server and one stub per model
    clients = [_client(python_server, "mlm", protocol) for protocol in ("http", "grpc")]
    python_server.stop()
    assert python_server.processes() == []
    assert not Path(f"/proc/{pid}").exists() or Path(f"/proc/{pid}/stat").read_text().split()[2] == "Z"
    for client in clients:  # a server that has gone: not ready, and its statistics a clear error
        assert client.ready() is False
        with pytest.raises(TritonRequestError, match="no Triton HTTP endpoint answers|failed to connect"):
            client.statistics()
        client.close()
        with pytest.raises(TritonRequestError, match="this client of model 'mlm' at .* was closed; make a new one"):
            client.ready()


# ---------------------------------------------------------------------------- ensemble layout
def test_ensemble_tokenize_and_postprocess_run_for_real(server_env, artifacts, runtimes, tmp_path):
    """Ensemble with the ONNX STAND-IN as its middle model (see the module docstring). Pretraining picks
    `next_sentence` by the request's `method` parameter, which Triton forwards to the ensemble's steps."""
    env = server_env
    from mbert_export.serving.repository import parse_config, write_repository
    from mbert_export.serving.server import start_server

    tasks = ["mlm", "sequence-classification", "token-classification", "pretraining"]
    repository = tmp_path / "repository"
    write_repository([artifacts[t] for t in tasks], repository, names=[_names(t) for t in tasks], layout="ensemble",
                     max_queue_delay_us=QUEUE_DELAY_US)
    for task in tasks:  # the stand-in: same config, python backend instead of onnxruntime_onnx
        folder = repository / f"{_names(task)}_model"
        text = (folder / "config.pbtxt").read_text()
        assert 'platform: "onnxruntime_onnx"' in text
        standin = text.replace('platform: "onnxruntime_onnx"', 'backend: "python"')
        original, swapped = parse_config(text), parse_config(standin)
        assert (original.input, original.output, original.max_batch_size) == (
            swapped.input, swapped.output, swapped.max_batch_size)
        (folder / "config.pbtxt").write_text(standin)
        shutil.copyfile(STANDIN, folder / "1" / "model.py")
    server = start_server(repository, python_env=env, timeout=180)
    try:
        for protocol in ("http", "grpc"):
            for task in tasks:
                with _client(server, task, protocol) as client:
                    for method, args, kwargs in _calls(task):
                        want = getattr(runtimes[task], method)(*args, **kwargs)
                        assert_same(getattr(client, method)(*args, **kwargs), want, f"ensemble {task} {method}")
        from mbert_export.serving import TritonMegatronBert, TritonRequestError

        with pytest.raises(TritonRequestError, match=r"'mlm_tokenize' at .* is a step of an ensemble .*'mlm'"):
            TritonMegatronBert(server.http_url, "mlm_tokenize")
        with _client(server, "mlm", "http") as mlm:
            with pytest.raises(ValueError, match="has no \\[MASK\\] token"):
                mlm.fill_mask("There is no mask here.")
            assert mlm.ready()
            assert_same(mlm.fill_mask(MLM_TEXTS[:2], top_k=2), runtimes["mlm"].fill_mask(MLM_TEXTS[:2], top_k=2))
        group = server.processes()
        assert len(group) >= 1 + 3 * len(tasks)
    finally:
        server.stop()
    assert server.processes() == []


# ---------------------------------------------------------------------------- command line
def test_a_model_that_fails_to_load_is_named_first(server_env, artifacts, tmp_path, monkeypatch):
    """The server's reason for a model it could not load leads the error, not 40 lines of log (with a
    relative workdir too: the server runs inside it)."""
    from mbert_export.serving.repository import write_repository
    from mbert_export.serving.server import ServerError, start_server

    repository = tmp_path / "repository"
    write_repository([artifacts["mlm"]], repository, names=["mlm"], instances=1, threads=1)
    graph = repository / "mlm" / "1" / "artifact" / "model.onnx"
    graph.unlink()  # it may be a hard link to the shared artifact: replace it, never truncate it
    graph.write_bytes(b"")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ServerError) as caught:
        start_server(repository, python_env=server_env, timeout=120, workdir="relative-work")
    first = str(caught.value).splitlines()[0]
    assert first.startswith("tritonserver exited with status 1: model 'mlm' (version 1) failed to load: ")
    assert "model.onnx is not an ONNX model" in first
    assert _processes_mentioning(str(repository)) == []



def test_an_ensemble_triton_refuses_is_named_with_its_reason(server_env, artifacts, tmp_path):
    """Triton refuses an ensemble whose steps disagree in a log line, not in its model table: that line
    leads the error. The mismatch is planted in a config the writer made (the stand-in as middle model)."""
    from mbert_export.serving.repository import write_repository
    from mbert_export.serving.server import ServerError, start_server

    repository = tmp_path / "repository"
    write_repository([artifacts["mlm"]], repository, names=["mlm"], layout="ensemble", instances=1)
    model = repository / "mlm_model"
    (model / "config.pbtxt").write_text((model / "config.pbtxt").read_text().replace(
        'platform: "onnxruntime_onnx"', 'backend: "python"'))
    shutil.copyfile(STANDIN, model / "1" / "model.py")
    tokenize = repository / "mlm_tokenize" / "config.pbtxt"
    tokenize.write_text(tokenize.read_text().replace('name: "input_ids" data_type: TYPE_INT64',
                                                     'name: "input_ids" data_type: TYPE_INT32', 1))
    with pytest.raises(ServerError) as caught:
        start_server(repository, python_env=server_env, timeout=120)
    assert str(caught.value).splitlines()[0] == (
        "tritonserver exited with status 1: ensemble 'mlm' failed to load: in ensemble mlm, ensemble tensor "
        "input_ids: inconsistent data type: TYPE_INT32 is inferred from model mlm_tokenize while TYPE_INT64 is "
        "inferred from model mlm_model")
    assert _processes_mentioning(str(repository)) == []


def test_a_reason_over_several_lines_is_reported_whole(server_env, tmp_path):
    """Triton's model table puts each line of a multi-line reason in a row of its own; all of them are
    reported, the python backend's traceback ("At: ...") is not."""
    from mbert_export.serving.server import ServerError, start_server

    model = tmp_path / "repository" / "broken"
    (model / "1").mkdir(parents=True)
    (model / "config.pbtxt").write_text('name: "broken"\nbackend: "python"\nmax_batch_size: 2\n'
                                        'input [{ name: "TEXT" data_type: TYPE_STRING dims: [1] }]\n'
                                        'output [{ name: "RESULT" data_type: TYPE_STRING dims: [1] }]\n')
    (model / "1" / "model.py").write_text(
        "class TritonPythonModel:\n"
        "    def initialize(self, args):\n"
        "        raise RuntimeError('the first line of the reason\\nand the second, which says what to do')\n")
    with pytest.raises(ServerError) as caught:
        start_server(model.parent, python_env=server_env, timeout=120)
    first = str(caught.value).splitlines()[0]
    assert first.endswith("model 'broken' (version 1) failed to load: Internal: RuntimeError: "
                          "the first line of the reason and the second, which says what to do")
    assert _processes_mentioning(str(model.parent)) == []

def test_serve_refuses_bad_ports_before_starting(capsys):
    from mbert_export.cli import main
    from mbert_export.serving.server import ServerError, start_server

    for port in ("-1", "70000", "http"):
        with pytest.raises(SystemExit) as exit_:
            main(["serve", "artifact", "--http-port", port])
        assert exit_.value.code == 2 and "a port is a number from 0 (any free port) to 65535" in capsys.readouterr().err
    with pytest.raises(ServerError, match=r"ports are numbers from 0 \(any free port\) to 65535, got \[70000\]"):
        start_server("repository", grpc_port=70000)
    with pytest.raises(ServerError, match="the HTTP, gRPC and metrics ports must differ, got 8000, 8000 and 0"):
        start_server("repository", http_port=8000, grpc_port=8000)


def test_client_arguments_are_checked_before_connecting():
    _tritonclient()
    from mbert_export.serving import TritonMegatronBert

    for url, error, message in (("http://127.0.0.1:8000", ValueError, "give host:port without a scheme, e.g. "
                                                                      "'127.0.0.1:8000'"),
                                (None, TypeError, "url must be a 'host:port' string"),
                                ("", TypeError, "url must be a 'host:port' string")):
        with pytest.raises(error, match=message):
            TritonMegatronBert(url, "mlm")
    with pytest.raises(TypeError, match="name must be the model's name"):
        TritonMegatronBert("127.0.0.1:8000", None)
    for timeout in (0, -1, "5", True, float("nan")):
        with pytest.raises(ValueError, match="timeout must be a positive number of seconds"):
            TritonMegatronBert("127.0.0.1:8000", "mlm", timeout=timeout)


def test_triton_command_writes_a_repository_and_reports_errors(artifacts, tmp_path, capsys):
    from mbert_export.cli import main

    assert main(["triton", str(artifacts["mlm"]), "--repository", str(tmp_path / "repo"), "--name", "mlm",
                 "--layout", "ensemble", "--instances", "2", "--preferred-batch", "4", "8"]) == 0
    out = capsys.readouterr().out
    assert "mlm_model: onnxruntime_onnx (model.onnx)" in out and (tmp_path / "repo" / "mlm" / "config.pbtxt").is_file()
    assert main(["triton", str(artifacts["question-answering"]), "--repository", str(tmp_path / "qa"),
                 "--layout", "ensemble"]) == 2
    assert "use --layout python" in capsys.readouterr().err and not (tmp_path / "qa").exists()
    assert main(["triton", str(artifacts["mlm"]), "--repository", str(tmp_path / "py"), "--name", "mlm"]) == 0
    assert "py/mlm: python running onnxruntime (model.onnx, " in capsys.readouterr().out


# ---------------------------------------------------------------------------- OpenVINO build, python layout
def test_openvino_build_is_served_on_openvino(server_env, tmp_path):
    """An artifact built with `--backend openvino` is served by OvMegatronBert (auto follows build.json):
    answers equal the in-process OvMegatronBert's, and the server's model compiled its own blob."""
    pytest.importorskip("openvino")
    from mbert_export.build import DEFAULT_CHECKPOINT, build_artifact
    from mbert_export.runtime import OvMegatronBert
    from mbert_export.serving import TritonMegatronBert
    from mbert_export.serving.repository import parse_config, write_repository
    from mbert_export.serving.server import _python_model_imports, start_server

    built = build_artifact("mlm", "fp32", checkpoint=DEFAULT_CHECKPOINT, output_dir=tmp_path / "ov-mlm",
                           backend="openvino", seq=["1,64,128"], batch=["1,4,8"], progress=lambda _: None).folder
    repository = tmp_path / "repository"
    entry = write_repository([built], repository, names=["mlm"], threads=1, instances=1)[0]
    assert parse_config(entry.config).parameters["backend"].string_value == "openvino"
    assert entry.describe() == "python running openvino"
    assert sorted(_python_model_imports(repository)) == ["openvino", "tokenizers"]
    with pytest.raises(ValueError, match="for OpenVINO use --layout python"):
        write_repository([built], tmp_path / "ensemble", layout="ensemble", backend="openvino")
    with OvMegatronBert(built) as oracle, start_server(repository, python_env=server_env, timeout=180) as server:
        with TritonMegatronBert(server.http_url, "mlm", timeout=60) as client:
            assert_same(client.fill_mask(MLM_TEXTS, top_k=3), oracle.fill_mask(MLM_TEXTS, top_k=3))
            assert_same(client.fill_mask(MLM_TEXTS[0]), oracle.fill_mask(MLM_TEXTS[0]))
        assert list((repository / "mlm" / "1" / "artifact" / "openvino-cache").rglob("*.blob"))
    assert server.processes() == []


def _processes_mentioning(text: str) -> list[str]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if text in (entry / "cmdline").read_bytes().decode(errors="replace"):
                    found.append(entry.name)
            except OSError:
                pass
    return found


def _serve_banner(process, timeout: float = 120) -> list[str]:
    """What a `mbert-export serve` subprocess prints up to "Ctrl-C stops." (its URLs), read for at most `timeout` s."""
    lines: list[str] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and not any("Ctrl-C stops" in line for line in lines):
        line = process.stdout.readline()
        if not line:
            break
        lines.append(line)
    return lines


@pytest.mark.parametrize("stop", ["SIGTERM", "SIGKILL"])
def test_serve_command_serves_until_stopped(server_env, artifacts, runtimes, stop):
    """`mbert-export serve` in a subprocess: prints its URLs and answers. SIGTERM stops it with its
    models; SIGKILL (no cleanup possible) still takes the server and its models down with it."""
    import signal

    env = server_env
    command = [sys.executable, "-m", "mbert_export", "serve", str(artifacts["mlm"]), "--name", "mlm",
               "--http-port", "0", "--grpc-port", "0", "--metrics-port", "0", "--python-env", env]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    repository = None
    try:
        lines = _serve_banner(process)
        url = next(line.split("'")[1] for line in lines if "TritonMegatronBert(" in line)
        assert url.startswith("127.0.0.1:")
        from mbert_export.serving import TritonMegatronBert

        with TritonMegatronBert(url, "mlm") as client:
            assert_same(client.fill_mask(MLM_TEXTS[0]), runtimes["mlm"].fill_mask(MLM_TEXTS[0]))
        process.send_signal(getattr(signal, stop))
        status = process.wait(60)
        stderr = process.stderr.read()
        repository = next(line.split(" on ", 1)[1].strip() for line in stderr.splitlines() if "starting tritonserver" in line)
        deadline = time.monotonic() + 40
        while _processes_mentioning(repository) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert _processes_mentioning(repository) == []
        work = Path(repository).parent  # serve's temp folder: the repository and the server's work folder
        if stop == "SIGTERM":
            assert status == 0 and "tritonserver stopped (status 0)" in stderr and not work.exists()
        else:  # nothing could clean up; the next start removes the folder of a process that is gone
            assert status == -signal.SIGKILL and (work / "server" / "tritonserver.log").is_file()
            from mbert_export.serving.server import make_workdir

            shutil.rmtree(make_workdir("mbert-serve-"))
            assert not work.exists()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(30)
        if repository:
            shutil.rmtree(Path(repository).parent, ignore_errors=True)


def test_serve_command_serves_a_repository_as_it_is(server_env, artifacts, runtimes, tmp_path, capsys):
    """`serve REPO` on what `mbert-export triton` wrote: every model it holds, under its own name; the
    options that shape a repository are refused there."""
    import signal

    from mbert_export.cli import main
    from mbert_export.serving import TritonMegatronBert
    from mbert_export.serving.repository import write_repository

    repository = tmp_path / "repo"
    write_repository([artifacts["mlm"], artifacts["token-classification"]], repository, names=["mlm", "ner"],
                     instances=1, threads=1)
    assert main(["serve", str(repository), "--name", "x", "--instances", "2", "--python-env", server_env]) == 2
    assert "repo is a model repository, served as it is: --name, --instances shape" in capsys.readouterr().err
    write_repository([artifacts["mlm"]], tmp_path / "ensemble", layout="ensemble")
    assert main(["serve", str(tmp_path / "ensemble"), "--python-env", server_env]) == 2
    assert "holds onnxruntime_onnx models, and the tritonserver of nvidia-pytriton" in capsys.readouterr().err
    command = [sys.executable, "-m", "mbert_export", "serve", str(repository), "--http-port", "0", "--grpc-port",
               "0", "--metrics-port", "0", "--python-env", server_env]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        lines = _serve_banner(process)
        clients = [line.split("TritonMegatronBert(", 1)[1] for line in lines if "TritonMegatronBert(" in line]
        assert [c.split("'")[3] for c in clients] == ["mlm", "ner"], lines
        url = clients[0].split("'")[1]
        with TritonMegatronBert(url, "mlm") as mlm, TritonMegatronBert(url, "ner") as ner:
            assert_same(mlm.fill_mask(MLM_TEXTS[0]), runtimes["mlm"].fill_mask(MLM_TEXTS[0]))
            assert_same(ner.classify_tokens(TEXTS[0]), runtimes["token-classification"].classify_tokens(TEXTS[0]))
        process.send_signal(signal.SIGTERM)
        assert process.wait(60) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(30)
    assert sorted(p.name for p in repository.iterdir()) == ["mlm", "ner"]  # served in place, left as it was
    assert _processes_mentioning(str(repository)) == []


# ---------------------------------------------------------------------------- the python model, in-process
class _FakeTensor:
    def __init__(self, name, array):
        self.name, self.array = name, array

    def as_numpy(self):
        return self.array


class _FakeRequest:
    def __init__(self, texts, parameters=None):
        self.inputs = {"TEXT": _FakeTensor("TEXT", np.array([[t.encode()] for t in texts], dtype=np.object_))}
        self._parameters = json.dumps(parameters or {})

    def parameters(self):
        return self._parameters


def _fake_pb_utils():
    import types

    class Response:
        def __init__(self, output_tensors=(), error=None):
            self.output_tensors, self.error = list(output_tensors), error

    class Error:
        def __init__(self, message):
            self.text = message

        def message(self):
            return self.text

    return types.SimpleNamespace(Tensor=_FakeTensor, InferenceResponse=Response, TritonError=Error,
                                 get_input_tensor_by_name=lambda request, name: request.inputs.get(name))


def test_runtime_model_runs_a_dynamic_batch_as_one_call(artifacts, runtimes, tmp_path, monkeypatch):
    """RuntimeModel.execute with Triton's python-backend API faked: one pipeline call per batch; a bad
    request is answered with its own error and the rest of the batch still in one call each."""
    _tritonclient()
    from google.protobuf import json_format

    from mbert_export.serving.repository import parse_config, write_repository
    from mbert_export.serving.triton_models import RuntimeModel

    entry = write_repository([artifacts["mlm"]], tmp_path / "repo", names=["mlm"])[0]
    monkeypatch.setitem(__import__("sys").modules, "triton_python_backend_utils", _fake_pb_utils())
    config = json_format.MessageToJson(parse_config(entry.config), preserving_proto_field_name=True)
    model = RuntimeModel()
    model.initialize({"model_config": config, "model_repository": str(tmp_path / "repo" / "mlm"),
                      "model_version": "1"})
    calls = []
    original = model.pipeline.fill_mask
    monkeypatch.setattr(model.pipeline, "fill_mask", lambda text, **kw: calls.append(len(text)) or original(text, **kw))

    def answers(responses):
        return [r.error.message() if r.error else [json.loads(v[0]) for v in r.output_tensors[0].as_numpy()]
                for r in responses]

    good = [_FakeRequest(MLM_TEXTS[:2]), _FakeRequest([MLM_TEXTS[2]]), _FakeRequest([MLM_TEXTS[3]], {"top_k": "2"})]
    got = answers(model.execute(good))
    assert calls == [3, 1]  # the two default-option requests in one call, the top_k=2 one apart
    assert_same(got, [runtimes["mlm"].fill_mask(MLM_TEXTS[:2]), [runtimes["mlm"].fill_mask(MLM_TEXTS[2])],
                      [runtimes["mlm"].fill_mask(MLM_TEXTS[3], top_k=2)]])
    calls.clear()
    mixed = [_FakeRequest([MLM_TEXTS[0]]), _FakeRequest(["no mask at all"]), _FakeRequest([MLM_TEXTS[1]]),
             _FakeRequest([MLM_TEXTS[2]], {"method": "answer_question"})]
    got = answers(model.execute(mixed))
    assert "has no [MASK] token" in got[1] and "answer_question() needs an artifact" in got[3]
    assert_same([got[0], got[2]], [[runtimes["mlm"].fill_mask(MLM_TEXTS[0])], [runtimes["mlm"].fill_mask(MLM_TEXTS[1])]])
    assert calls == [3, 1, 1, 1]  # the failing joint call, then each of its requests alone
    model.finalize()


def test_server_environment_problems_are_named(tmp_path):
    from mbert_export.serving.server import ServerError, _check_model_env, find_tritonserver, start_server

    with pytest.raises(ServerError, match="not a Python environment"):
        find_tritonserver(tmp_path)
    with pytest.raises(ServerError, match="not a model repository"):
        start_server(tmp_path / "missing", python_env=SERVER_ENV or sys.prefix)
    import numpy

    if int(numpy.__version__.split(".")[0]) >= 2:  # this test env's numpy: refused as a model env
        with pytest.raises(ServerError, match="crashes on string inputs with numpy 2"):
            _check_model_env(Path(sys.prefix), {"tokenizers": "tokenizers"})
    if SERVER_ENV:  # a runtime the python models name but the env lacks (e.g. openvino): named, with the fix
        with pytest.raises(ServerError, match="lacks no_such_runtime, which the python models import: "
                                              r"\S+/bin/pip install 'no-such-runtime>=1,<2'"):
            _check_model_env(Path(SERVER_ENV), {"tokenizers": "tokenizers", "no_such_runtime": "no-such-runtime>=1,<2"})
        busy = socket.socket()
        try:  # a port another process holds: refused before the server starts, with the option to change
            busy.bind(("127.0.0.1", 0))
            busy.listen()
            port = busy.getsockname()[1]
            with pytest.raises(ServerError, match=f"port {port} on 127.0.0.1 is not free .*; choose another "
                                                  "--grpc-port, or 0 for a free one"):
                start_server(tmp_path, python_env=SERVER_ENV, grpc_port=port)
        finally:
            busy.close()
    bare = tmp_path / "bare-venv"  # no numpy, no tokenizers: both named at once, no traceback
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(bare)], check=True)
    with pytest.raises(ServerError, match=r"bare-venv lacks numpy, tokenizers, which the python models import: "
                                          r"\S+/bin/pip install 'numpy<2' tokenizers$"):
        _check_model_env(bare, {"tokenizers": "tokenizers"})


def test_work_folders_of_dead_processes_are_removed_and_no_other(tmp_path, monkeypatch):
    """make_workdir removes a folder of its prefix only when its owner, on this host and PID namespace,
    is gone; a live owner's, another host's, and a folder without a readable owner are kept."""
    import tempfile

    from mbert_export.serving.server import OWNER_FILE, _process_identity, make_workdir

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    finished = subprocess.Popen([sys.executable, "-c", "pass"])
    dead = _process_identity(finished.pid)
    finished.wait()
    me = _process_identity(os.getpid())
    owners = {"dead": dead, "reused-pid": me.rsplit(" ", 1)[0] + " 1", "live": me,
              "other-host": "elsewhere " + " ".join(me.split()[1:]), "garbage": "99999999999", "none": None}
    for name, owner in owners.items():
        (tmp_path / f"mbert-test-{name}").mkdir()
        if owner is not None:
            (tmp_path / f"mbert-test-{name}" / OWNER_FILE).write_text(owner + "\n")
    made = make_workdir("mbert-test-")
    assert sorted(p.name for p in tmp_path.iterdir() if p != made) == [
        "mbert-test-garbage", "mbert-test-live", "mbert-test-none", "mbert-test-other-host"]
    assert (made / OWNER_FILE).read_text().split() == me.split()


def test_client_names_an_unreachable_server():
    _tritonclient()
    from mbert_export.serving import TritonMegatronBert, TritonRequestError
    from mbert_export.serving.server import free_port

    url = f"127.0.0.1:{free_port()}"  # nothing listens there
    with pytest.raises(TritonRequestError, match=f"no Triton HTTP endpoint answers at {url} "
                                                 r"\(ConnectionRefusedError: .*\); is the server running"):
        TritonMegatronBert(url, "mlm", timeout=5)
    with pytest.raises(TritonRequestError, match=f"cannot read the config of model 'mlm' at {url}: failed to connect"):
        TritonMegatronBert(url, "mlm", "grpc", timeout=5)
    with socket.socket() as silent:  # takes connections and never answers: the timeout ends the wait
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        url = f"127.0.0.1:{silent.getsockname()[1]}"
        for protocol in ("http", "grpc"):
            start = time.monotonic()
            with pytest.raises(TritonRequestError, match=f"no answer at {url} for the config of model 'mlm' within "
                                                         r"timeout=0.5 s"):
                TritonMegatronBert(url, "mlm", protocol, timeout=0.5)
            assert time.monotonic() - start < 10, protocol


def test_stop_kills_a_server_that_ignores_sigterm_and_says_so(tmp_path):
    """stop(): SIGTERM, then SIGKILL to the group after the timeout; `killed` tells serve which it was."""
    from mbert_export.serving.server import TritonServer

    stubborn = subprocess.Popen([sys.executable, "-c", "import signal, time; signal.signal(signal.SIGTERM, "
                                 "signal.SIG_IGN); print('up', flush=True); time.sleep(60)"],
                                stdout=subprocess.PIPE, start_new_session=True)
    assert stubborn.stdout.readline() == b"up\n"  # its SIGTERM handler is set
    server = TritonServer(stubborn, 1, 2, 3, "127.0.0.1", tmp_path, tmp_path / "log", owns_workdir=False)
    start = time.monotonic()
    assert server.stop(timeout=1) == -9 and server.killed and time.monotonic() - start < 15
    assert server.processes() == []
    stubborn.stdout.close()


def test_ensemble_steps_pass_the_graphs_own_integer_type(artifacts, runtimes, tmp_path, monkeypatch):
    """A graph taking int32 ids (e.g. one re-exported for TensorRT): tokenize emits int32, as the middle
    model's config and postprocess expect (Triton refuses an ensemble whose steps disagree)."""
    _tritonclient()
    import onnx
    import onnxruntime
    from google.protobuf import json_format
    from onnx import TensorProto, helper

    from mbert_export.serving.repository import parse_config, write_repository
    from mbert_export.serving.triton_models import TokenizeModel

    folder = tmp_path / "mlm32"
    shutil.copytree(artifacts["mlm"], folder)
    graph = onnx.load(str(folder / "model.onnx"))
    names = [value.name for value in graph.graph.input]  # int32 inputs, cast to the int64 it computes with
    for node in graph.graph.node:
        node.input[:] = [f"{i}_int64" if i in names else i for i in node.input]
    for name in names:
        graph.graph.node.insert(0, helper.make_node("Cast", [name], [f"{name}_int64"], to=TensorProto.INT64))
    for value in graph.graph.input:
        value.type.tensor_type.elem_type = TensorProto.INT32
    onnx.save(graph, str(folder / "model.onnx"))
    (folder / "build.json").unlink(missing_ok=True)
    entries = {e.name: e for e in write_repository([folder], tmp_path / "repo", names=["m"], layout="ensemble")}
    configs = {name: parse_config(e.config) for name, e in entries.items()}
    int32 = configs["m_model"].input[0].data_type
    assert {t.name: t.data_type for t in configs["m_tokenize"].output} == {t.name: t.data_type
                                                                          for t in configs["m_model"].input}
    assert next(t.data_type for t in configs["m_postprocess"].input if t.name == "input_ids") == int32
    monkeypatch.setitem(__import__("sys").modules, "triton_python_backend_utils", _fake_pb_utils())
    tokenize = TokenizeModel()
    tokenize.initialize({"model_config": json_format.MessageToJson(configs["m_tokenize"],
                                                                   preserving_proto_field_name=True),
                         "model_repository": str(tmp_path / "repo" / "m_tokenize"), "model_version": "1"})
    [response] = tokenize.execute([_FakeRequest([MLM_TEXTS[0]])])
    feeds = {t.name: t.as_numpy() for t in response.output_tensors}
    assert all(v.dtype == np.int32 for v in feeds.values())
    session = onnxruntime.InferenceSession(str(folder / "model.onnx"))
    logits = session.run(["logits"], feeds)[0]
    reference = runtimes["mlm"].run({k: v.astype(np.int64) for k, v in feeds.items()})["logits"]
    np.testing.assert_allclose(logits, reference, atol=1e-5)
