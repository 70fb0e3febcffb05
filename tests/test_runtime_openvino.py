"""`OvMegatronBert`: the OpenVINO CPU backend against ONNX Runtime on the same graph, its blob cache,
inference precision, threads, bad input. Every task x precision against the PyTorch reference is in
test_parity_suite.py; here the tiny masked-LM model of test_runtime.py (exported once).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("onnxruntime")
openvino = pytest.importorskip("openvino")

from helpers import run_in_threads, run_without_modules  # noqa: E402
from test_runtime import TEXTS, build, tokenizer  # noqa: E402,F401 (module-scoped fixtures)

from mbert_export.runtime import OpenVinoCompileError, OrtMegatronBert, OvMegatronBert  # noqa: E402
from mbert_export.runtime.openvino.loader import cpu_capabilities, openvino_version  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
HAS_BF16 = "BF16" in cpu_capabilities()


@pytest.fixture(scope="module")
def mlm(build, tmp_path_factory):
    """A copy of the exported masked-LM folder (its blob cache must not leak into other tests)."""
    folder = tmp_path_factory.mktemp("ov-mlm")
    shutil.copytree(build("mlm").folder, folder, dirs_exist_ok=True)
    return folder


def _feeds(batch: int, seq: int, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    ids = rng.integers(5, 60, size=(batch, seq), dtype=np.int64)
    mask = np.ones_like(ids)
    mask[0, seq // 2:] = 0 if seq > 2 else 1
    return {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)}


def test_openvino_matches_onnxruntime_at_every_shape_and_passes_verify(mlm):
    with OvMegatronBert(mlm, cache_dir=False, threads=1) as ov, OrtMegatronBert(mlm) as ort:
        assert ov.inference_precision == "f32" and "f32, 1 threads" in ov.backend.describe()
        assert ov.precision == "fp32"
        for batch, seq in [(1, 1), (3, 17), (2, 64), (5, 9)]:  # dynamic batch and sequence, one compile
            feeds = _feeds(batch, seq, seed=seq)
            np.testing.assert_allclose(ov.run(feeds)["logits"], ort.run(feeds)["logits"], atol=1e-4)
        assert ov.verify().passed
        text = TEXTS[0].replace("capital", "[MASK]")
        assert [p["token"] for p in ov.fill_mask(text, top_k=3)] == [p["token"] for p in ort.fill_mask(text, top_k=3)]


def test_blob_cache_is_keyed_on_version_and_graph_and_never_stale(mlm, tmp_path):
    folder = tmp_path / "artifact"
    shutil.copytree(mlm, folder)
    first = OvMegatronBert(folder, threads=1)
    assert first.cache.startswith("written to")
    key = Path(first.cache.split("written to ")[1])
    assert key.parent == folder / "openvino-cache" and key.name.startswith(openvino_version() + "-")
    assert key.name.endswith("-f32")  # keyed on the precision too: see the bf16 test
    expected = first.run(_feeds(2, 11))["logits"]
    first.close()
    again = OvMegatronBert(folder, threads=1)
    assert again.cache == f"loaded from {key}"
    np.testing.assert_array_equal(again.run(_feeds(2, 11))["logits"], expected)
    again.close()
    # Other weights at the same path (what a re-export leaves): a new key, never the old blob.
    onnx = pytest.importorskip("onnx")
    graph = onnx.load(str(folder / "model.onnx"))
    weight = max(graph.graph.initializer, key=lambda t: len(t.raw_data))
    values = onnx.numpy_helper.to_array(weight) * 1.5
    weight.CopyFrom(onnx.numpy_helper.from_array(values, weight.name))
    onnx.save(graph, str(folder / "model.onnx"))
    swapped = OvMegatronBert(folder, threads=1)
    assert swapped.cache.startswith("written to") and key.name not in swapped.cache
    got = swapped.run(_feeds(2, 11))["logits"]
    assert np.abs(got - expected).max() > 1e-2
    with OrtMegatronBert(folder) as ort:
        np.testing.assert_allclose(got, ort.run(_feeds(2, 11))["logits"], atol=1e-4)
    swapped.close()
    # Weights in an external file of any name: a change there is a new key too (OpenVINO's own key misses it).
    onnx.save_model(graph, str(folder / "model.onnx"), save_as_external_data=True, location="weights.bin",
                    size_threshold=1024)
    with OvMegatronBert(folder, threads=1) as external:
        assert external.cache.startswith("written to")
        before = external.run(_feeds(2, 11))["logits"]
    graph = onnx.load(str(folder / "model.onnx"))  # the same graph file; only weights.bin changes
    weight = max(graph.graph.initializer, key=lambda t: int(np.prod(t.dims)))
    values = onnx.numpy_helper.to_array(weight, base_dir=str(folder)) * 0.5
    weight.CopyFrom(onnx.numpy_helper.from_array(values, weight.name))
    onnx.save_model(graph, str(tmp_path / "rewritten.onnx"), save_as_external_data=True, location="weights.bin",
                    size_threshold=1024)
    shutil.copyfile(tmp_path / "weights.bin", folder / "weights.bin")
    with OvMegatronBert(folder, threads=1) as reweighted, OrtMegatronBert(folder) as ort:
        assert reweighted.cache.startswith("written to"), reweighted.cache
        got = reweighted.run(_feeds(2, 11))["logits"]
        np.testing.assert_allclose(got, ort.run(_feeds(2, 11))["logits"], atol=1e-4)
        assert np.abs(got - before).max() > 1e-2


def test_unwritable_cache_folder_still_runs_and_says_so(mlm, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    with OvMegatronBert(mlm, cache_dir=blocker / "cache", threads=1) as ov:
        assert ov.cache.startswith("not used:") and "not writable" in ov.cache
        assert ov.verify().passed


def _without_root_file_access():
    """preexec_fn: drop CAP_DAC_OVERRIDE and CAP_DAC_READ_SEARCH, so that root obeys file modes."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    for capability in (1, 2):  # PR_CAPBSET_DROP = 24
        if libc.prctl(24, capability, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP)")


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() != 0,
                    reason="as a normal user a read-only folder is simply chmod 555; this covers root too")
def test_read_only_cache_folder(mlm, tmp_path):
    """A cache folder the process may only read (mode 555, root without DAC override): it loads an
    existing blob, and compiles without writing when there is none."""
    folder = tmp_path / "ro"
    shutil.copytree(mlm, folder)
    with OvMegatronBert(folder, threads=1) as ov:  # fills the cache
        assert ov.cache.startswith("written to")
    cache = folder / "openvino-cache"
    for path in [*cache.rglob("*"), cache, folder]:
        path.chmod(0o555 if path.is_dir() else 0o444)
    code = f"""
from mbert_export.runtime import OvMegatronBert
with OvMegatronBert({str(folder)!r}, threads=1) as ov:
    print(ov.cache.split(':')[0].split(' from')[0], ov.cache.endswith('(read-only)'), ov.verify().passed)
"""

    def run() -> str:
        try:
            proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                                  preexec_fn=_without_root_file_access,
                                  env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})
        finally:
            for path in [folder, cache, *cache.rglob("*")]:
                path.chmod(0o755 if path.is_dir() else 0o644)
        assert proc.returncode == 0, proc.stderr
        return proc.stdout.strip()

    assert run() == "loaded True True"
    for blob in cache.rglob("*.blob"):
        blob.unlink()
    for path in [*cache.rglob("*"), cache, folder]:
        path.chmod(0o555)
    assert run() == "not used False True"  # a miss: compiled, nothing written
    assert not list(cache.rglob("*.blob"))


def test_bf16_is_refused_on_cpus_without_it_and_runs_where_present(mlm, tmp_path):
    if not HAS_BF16:
        with pytest.raises(ValueError, match="bf16 needs a CPU with BF16 support"):
            OvMegatronBert(mlm, inference_precision="bf16", cache_dir=False)
        # A build that recorded bf16 (made on another CPU): the error names build.json and the way out.
        import json

        from mbert_export.cli import main as cli_main

        folder = tmp_path / "bf16-build"
        shutil.copytree(mlm, folder)
        (folder / "build.json").write_text(json.dumps({"task": "mlm", "precision": "fp32", "backend": "openvino",
                                                       "openvino": {"inference_precision": "bf16"}}))
        with pytest.raises(ValueError, match=r"build.json records OpenVINO inference precision 'bf16': .*"
                                             r"--inference-precision f32"):
            OvMegatronBert(folder, cache_dir=False)
        with OvMegatronBert(folder, inference_precision="f32", cache_dir=False) as ov:
            assert ov.inference_precision == "f32" and ov.verify().passed
        assert cli_main(["verify", str(folder)]) == 2
        assert cli_main(["verify", str(folder), "--inference-precision", "f32"]) == 0
        assert cli_main(["verify", str(mlm), "--backend", "onnxruntime", "--inference-precision", "f32"]) == 2
        return
    with OvMegatronBert(mlm, inference_precision="bf16", cache_dir=False) as ov:
        assert ov.inference_precision == "bf16" and ov.precision == "bf16"
        assert ov.verify().passed
    # Each precision has its own blob folder: OpenVINO's cache key leaves the precision out, and on an
    # AMX CPU a bf16 load of a blob written at f32 crashed the process in its first inference.
    from mbert_export.runtime.openvino import OpenVinoBackend

    graph = mlm / "model.onnx"
    rng = np.random.default_rng(0)
    feeds = {"input_ids": rng.integers(5, 1000, (2, 16)).astype(np.int64),
             "attention_mask": np.ones((2, 16), np.int64), "token_type_ids": np.zeros((2, 16), np.int64)}

    def logits(precision, cache):
        backend = OpenVinoBackend(graph, inference_precision=precision, cache_dir=cache)
        return backend.cache, backend.infer(feeds)["logits"]

    _, bf16_alone = logits("bf16", False)
    said_f32, f32_cached = logits("f32", tmp_path / "cache")
    said_bf16, bf16_written = logits("bf16", tmp_path / "cache")
    said_again, bf16_loaded = logits("bf16", tmp_path / "cache")
    assert said_f32.startswith("written to") and said_f32.endswith("-f32")
    assert said_bf16.startswith("written to") and said_bf16.endswith("-bf16")
    assert said_again == said_bf16.replace("written to", "loaded from")
    np.testing.assert_array_equal(bf16_written, bf16_alone)
    np.testing.assert_array_equal(bf16_loaded, bf16_alone)
    assert np.abs(bf16_loaded - f32_cached).max() > 1e-3


def test_bad_settings_are_clear_errors(mlm):
    with pytest.raises(ValueError, match="unknown OpenVINO inference precision"):
        OvMegatronBert(mlm, inference_precision="int4", cache_dir=False)
    with pytest.raises(ValueError, match="unknown performance hint"):
        OvMegatronBert(mlm, performance_hint="fastest", cache_dir=False)
    with pytest.raises(ValueError, match="threads must be a positive integer"):
        OvMegatronBert(mlm, threads=0, cache_dir=False)
    with pytest.raises(TypeError, match="config must be a dict of OpenVINO properties"):
        OvMegatronBert(mlm, config=["x"], cache_dir=False)
    for streams in (-3, "abc", True, 2.5):
        with pytest.raises(ValueError, match=r"num_streams \(or .auto.\) must be a positive integer"):
            OvMegatronBert(mlm, num_streams=streams, cache_dir=False)
    for config, said in (({"NOT_A_KEY": 1}, "Unsupported property NOT_A_KEY"),
                         ({"PERFORMANCE_HINT": "X"}, "for property key PERFORMANCE_HINT")):
        with pytest.raises(ValueError, match=f"refused a compile setting .*{said}"):  # the setting, not the graph
            OvMegatronBert(mlm, config=config, cache_dir=False)
    with pytest.raises(ValueError, match=r"as cache_dir=\.\.\., not config\['CACHE_DIR'\]"):
        OvMegatronBert(mlm, config={"CACHE_DIR": str(mlm)})
    for folder in ("", 0, 1.5):
        with pytest.raises(TypeError, match="cache_dir must be a folder path, None"):
            OvMegatronBert(mlm, cache_dir=folder)
    with OvMegatronBert(mlm, threads=np.int64(1), num_streams=np.int64(1), cache_dir=False) as numpy_ints:
        assert "1 threads" in numpy_ints.backend.describe()
    with OvMegatronBert(mlm, num_streams="auto", cache_dir=False) as auto:  # OpenVINO's own choice
        assert auto.run(_feeds(1, 5))["logits"].shape[:2] == (1, 5)


def test_a_graph_openvino_cannot_compile_names_the_node(mlm, tmp_path):
    onnx = pytest.importorskip("onnx")
    model = onnx.load(str(mlm / "model.onnx"))
    node = next(n for n in model.graph.node if n.op_type == "Erf")
    node.op_type, node.domain = "FancyGelu", "com.example"
    model.opset_import.append(onnx.helper.make_opsetid("com.example", 1))
    onnx.save(model, str(tmp_path / "model.onnx"))
    with pytest.raises(OpenVinoCompileError) as error:
        OvMegatronBert(tmp_path / "model.onnx", cache_dir=False)
    message = str(error.value)
    assert node.name in message and "com.example.FancyGelu" in message and "no conversion rule" in message
    with pytest.raises(OpenVinoCompileError):  # with the default cache: no empty cache folder is left behind
        OvMegatronBert(tmp_path / "model.onnx")
    assert not (tmp_path / "openvino-cache").exists()


def test_threads_give_the_serial_results_and_close_is_final(mlm):
    ov = OvMegatronBert(mlm, cache_dir=False, threads=1)
    work = [_feeds(1 + i % 3, 5 + 7 * i, seed=i) for i in range(6)]
    serial = [ov.run(f)["logits"] for f in work]
    for outputs in run_in_threads(lambda: [ov.run(f)["logits"] for f in work], threads=4, repeats=2):
        for value, expected in zip(outputs, serial):
            np.testing.assert_array_equal(value, expected)
    ov.close()
    ov.close()
    with pytest.raises(RuntimeError, match="closed"):
        ov.run(work[0])


def test_openvino_runtime_needs_neither_torch_nor_onnxruntime(mlm):
    proc = run_without_modules(f"""
from mbert_export.runtime import OvMegatronBert
rt = OvMegatronBert({str(mlm)!r}, cache_dir=False)
print(rt.fill_mask('paris is the [MASK] of france.', top_k=2)[0]['token_str'])
print(rt.verify().passed)
""", blocked=("torch", "transformers", "tensorrt", "onnx", "onnxruntime"))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split()[-1] == "True"
