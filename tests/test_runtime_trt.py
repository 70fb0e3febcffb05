"""`TRTMegatronBert`: the TensorRT backend.

Without a GPU, the TensorRT and cuda-python calls run against fakes that keep "device memory" in host
buffers and execute the engine's graph with ONNX Runtime, so profile selection, batch splitting,
buffer buckets, CUDA-graph replay, locking and close() are exercised for real; the build.json checks
and profile arithmetic are pure functions. Tests marked `gpu` run a real engine and skip when
TensorRT or a CUDA device is missing.
"""

from __future__ import annotations

import ctypes
import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

torch = pytest.importorskip("torch")
ort = pytest.importorskip("onnxruntime")

from helpers import run_in_threads  # noqa: E402
from mbert_export.config import preset_config  # noqa: E402
from mbert_export.export import export_onnx  # noqa: E402
from mbert_export.modeling import MegatronBertForSequenceClassification  # noqa: E402
from mbert_export.parity import write_reference_vectors  # noqa: E402
from mbert_export.runtime import (ArtifactError, EngineMismatchError, EngineShapeError,  # noqa: E402
                                  OrtMegatronBert, TRTMegatronBert)
from mbert_export.runtime.tensorrt import loader as trt_loader  # noqa: E402
from mbert_export.runtime.tensorrt import runner as trt_runner  # noqa: E402
from mbert_export.runtime.tensorrt.loader import check_engine_compatibility, normalize_compute_capability  # noqa: E402
from mbert_export.runtime.tensorrt.profiles import Profile, bucket_shape, plan_chunks, select_profile  # noqa: E402
from mbert_export.tokenization import Tokenizer  # noqa: E402

VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + list("abcdefghijklmnopqrstuvwxyz.,!?") + \
        ["##" + c for c in "abcdefghijklmnopqrstuvwxyz"] + "the a of is in paris france river city".split()
TEXTS = ["paris is the city of france.", "the river is in paris", "a b c", "france!",
         "the city of paris is in france, the river is the seine.", "is it?", "the the the the the the"]
GPU = {"tensorrt_version": "10.16.0.72", "gpu_name": "NVIDIA A100-SXM4-40GB", "compute_capability": "8.0"}
IO = ("input_ids", "attention_mask", "token_type_ids")


# ---------------------------------------------------------------------------- fakes
class FakeCudart:
    """cuda-python's runtime module, with host buffers as device memory and stream capture recorded."""

    class cudaError_t:
        cudaSuccess = 0
        cudaErrorInvalidValue = 1

    class cudaMemcpyKind:
        cudaMemcpyHostToDevice = 1
        cudaMemcpyDeviceToHost = 2

    class cudaStreamCaptureMode:
        cudaStreamCaptureModeGlobal = 0
        cudaStreamCaptureModeThreadLocal = 1

    def __init__(self, gpu_name: str = GPU["gpu_name"], cc: tuple[int, int] = (8, 0)):
        self.props = SimpleNamespace(name=gpu_name.encode() + b"\0\0", major=cc[0], minor=cc[1])
        self.buffers: dict[int, ctypes.Array] = {}
        self.mallocs = self.launches = self.graphs = 0
        self.capturing: list | None = None
        self.streams: set[int] = set()

    def cudaGetDeviceCount(self):
        return 0, 1

    def cudaGetDevice(self):
        return 0, 0

    def cudaSetDevice(self, device):
        return (0,)

    def cudaGetDeviceProperties(self, device):
        return 0, self.props

    def cudaGetErrorString(self, err):
        return 0, b"fake CUDA error"

    def cudaMalloc(self, size):
        buffer = ctypes.create_string_buffer(size)
        self.buffers[ctypes.addressof(buffer)] = buffer
        self.mallocs += 1
        return 0, ctypes.addressof(buffer)

    def cudaFree(self, pointer):
        if pointer not in self.buffers:
            return (self.cudaError_t.cudaErrorInvalidValue,)
        del self.buffers[pointer]
        return (0,)

    def check(self, pointer, nbytes):
        assert pointer in self.buffers, "not a device pointer"
        assert nbytes <= len(self.buffers[pointer]), f"{nbytes} bytes overflow a {len(self.buffers[pointer])}-byte buffer"

    def cudaMemcpyAsync(self, dst, src, count, kind, stream):
        assert self.capturing is None, "copies are not captured"
        self.check(dst if kind == self.cudaMemcpyKind.cudaMemcpyHostToDevice else src, count)
        ctypes.memmove(dst, src, count)
        return (0,)

    def cudaStreamCreate(self):
        self.streams.add(7)
        return 0, 7

    def cudaStreamSynchronize(self, stream):
        return (0,)

    def cudaStreamDestroy(self, stream):
        self.streams.discard(stream)
        return (0,)

    def cudaStreamBeginCapture(self, stream, mode):
        self.capturing = []
        return (0,)

    def cudaStreamEndCapture(self, stream):
        graph, self.capturing = self.capturing, None
        return 0, graph

    def cudaGraphInstantiate(self, graph, flags):
        self.graphs += 1
        return 0, list(graph)

    def cudaGraphLaunch(self, graph_exec, stream):
        for work in graph_exec:
            work()
        self.launches += 1
        return (0,)

    def cudaGraphDestroy(self, graph):
        return (0,)

    def cudaGraphExecDestroy(self, graph_exec):
        return (0,)


class FakeEngine:
    """An ICudaEngine whose "plan" is JSON naming an ONNX graph and the optimization profiles."""

    def __init__(self, spec: dict, cudart: FakeCudart):
        self.session = ort.InferenceSession(spec["onnx"], providers=["CPUExecutionProvider"])
        self.cudart = cudart
        self.inputs = [i.name for i in self.session.get_inputs()]
        self.outputs = [o.name for o in self.session.get_outputs()]
        self.profiles = spec["profiles"]
        self.names = self.inputs + self.outputs
        self.num_io_tensors = len(self.names)
        self.num_optimization_profiles = len(self.profiles)

    def get_tensor_name(self, index):
        return self.names[index]

    def get_tensor_mode(self, name):
        return "INPUT" if name in self.inputs else "OUTPUT"

    def get_tensor_dtype(self, name):
        return SimpleNamespace(name="INT64" if name in self.inputs else "FLOAT")

    def get_tensor_profile_shape(self, name, index):
        p = self.profiles[index]
        return [p["min"], p["opt"], p["max"]]

    def create_execution_context(self):
        return FakeContext(self)


class FakeContext:
    def __init__(self, engine: FakeEngine):
        self.engine, self.profile, self.shapes, self.addresses = engine, 0, {}, {}
        self.executions = 0

    def set_optimization_profile_async(self, index, stream):
        self.profile, self.shapes = index, {}
        return True

    def set_input_shape(self, name, shape):
        p = self.engine.profiles[self.profile]
        if not all(lo <= d <= hi for d, lo, hi in zip(shape, p["min"], p["max"])):
            return False
        self.shapes[name] = tuple(shape)
        return True

    def get_tensor_shape(self, name):
        if name in self.engine.inputs:
            return self.shapes[name]
        batch, seq = self.shapes["input_ids"]
        return {"logits": (batch, 3)}[name]

    def set_tensor_address(self, name, pointer):
        self.addresses[name] = pointer

    def execute_async_v3(self, stream):
        assert set(self.shapes) == set(self.engine.inputs), "every input shape must be set"
        shapes, addresses = dict(self.shapes), dict(self.addresses)
        out_shapes = {n: self.get_tensor_shape(n) for n in self.engine.outputs}
        cudart = self.engine.cudart

        def work():
            feeds = {}
            for name in self.engine.inputs:
                nbytes = int(np.prod(shapes[name])) * 8
                cudart.check(addresses[name], nbytes)
                feeds[name] = np.frombuffer(ctypes.string_at(addresses[name], nbytes), dtype=np.int64).reshape(shapes[name])
            for name, value in zip(self.engine.outputs, self.engine.session.run(None, feeds)):
                value = np.ascontiguousarray(value, dtype=np.float32)
                assert value.shape == out_shapes[name]
                cudart.check(addresses[name], value.nbytes)
                ctypes.memmove(addresses[name], value.ctypes.data, value.nbytes)
            self.executions += 1

        if cudart.capturing is not None:
            cudart.capturing.append(work)
        else:
            work()
        return True


def fake_tensorrt(cudart: FakeCudart, version: str = GPU["tensorrt_version"]):
    def deserialize(data):
        try:
            return FakeEngine(json.loads(data), cudart)
        except (ValueError, KeyError):
            return None

    logger = SimpleNamespace(WARNING=2)
    return SimpleNamespace(
        __version__=version,
        Logger=type("Logger", (), {"WARNING": 2, "__init__": lambda self, severity=None: None}),
        Runtime=lambda log: SimpleNamespace(deserialize_cuda_engine=deserialize),
        TensorIOMode=SimpleNamespace(INPUT="INPUT", OUTPUT="OUTPUT"),
        logger=logger,
    )


@pytest.fixture
def fakes(monkeypatch):
    """Install fake tensorrt + cuda-python into the TensorRT backend; returns the fake cudart."""
    cudart = FakeCudart()
    trt = fake_tensorrt(cudart)
    monkeypatch.setattr(trt_runner, "import_tensorrt", lambda: trt)
    monkeypatch.setattr(trt_runner, "import_cudart", lambda: cudart)
    return cudart


PROFILES = [  # (batch, sequence) per profile: small batches of short texts, and a wide one
    {"min": [1, 1], "opt": [1, 16], "max": [2, 32]},
    {"min": [1, 1], "opt": [4, 48], "max": [4, 64]},
]


@pytest.fixture(scope="module")
def artifact(tmp_path_factory) -> Path:
    """A sequence-classification build folder: model.onnx, tokenizer, reference.npz, build.json, engine.plan."""
    folder = tmp_path_factory.mktemp("trt-build")
    (folder / "vocab.txt").write_text("\n".join(VOCAB) + "\n")
    tokenizer = Tokenizer.from_vocab(folder / "vocab.txt", lowercase=True, model_max_length=64)
    tokenizer.save_pretrained(folder)
    torch.manual_seed(0)
    config = preset_config("tiny", vocab_size=len(VOCAB), max_position_embeddings=64, initializer_range=0.1)
    config.num_labels = 3
    model = MegatronBertForSequenceClassification(config).eval()
    export_onnx(model, "sequence-classification", folder / "model.onnx", tokenizer_dir=folder)
    write_reference_vectors(model, "sequence-classification", folder)
    _write_engine(folder, PROFILES)
    return folder


def _write_engine(folder: Path, profiles, sidecar: dict | None = None) -> None:
    (folder / "engine.plan").write_text(json.dumps({"onnx": str(folder / "model.onnx"), "profiles": profiles}))
    info = {"task": "sequence-classification", "precision": "fp32", **GPU,
            "profiles": [{name: [p["min"], p["opt"], p["max"]] for name in IO} for p in profiles]}
    info.update(sidecar or {})
    (folder / "build.json").write_text(json.dumps(info))


def _copy(artifact: Path, tmp_path: Path, **sidecar) -> Path:
    folder = tmp_path / "copy"
    shutil.copytree(artifact, folder)
    _write_engine(folder, PROFILES, sidecar)
    return folder


# ---------------------------------------------------------------------------- fake-backed runs
def test_fake_engine_gives_the_onnxruntime_results(fakes, artifact):
    reference = OrtMegatronBert(artifact)
    with TRTMegatronBert(artifact) as rt:
        assert rt.max_batch == 4 and rt.max_seq_len == 64 and "A100" in rt.backend.describe()
        ours, theirs = rt.classify(TEXTS, top_k=None), reference.classify(TEXTS, top_k=None)
        for a, b in zip(ours, theirs):
            assert [x["label"] for x in a] == [x["label"] for x in b]
            assert np.allclose([x["score"] for x in a], [x["score"] for x in b], atol=1e-6)
        # A batch of 7 long rows: split into profile-1 pieces of 4 and 3.
        rng = np.random.default_rng(0)
        feeds = {"input_ids": rng.integers(5, len(VOCAB), (7, 50))}
        assert np.abs(rt.run(feeds)["logits"] - reference.run(feeds)["logits"]).max() <= 1e-5
        report = rt.verify()
        assert report.passed, report.summary()
        # Repeated calls reuse the bucket buffers instead of allocating.
        rt.classify(TEXTS[:2])
        before = fakes.mallocs
        for texts in (TEXTS[:2], TEXTS[1:3], ["a b", "c d e"], TEXTS[:2]):  # same (profile, bucket)
            rt.classify(texts)
        assert fakes.mallocs == before
        assert len(rt.backend._buckets) <= trt_runner.MAX_BUCKETS
    assert not fakes.buffers and not fakes.streams  # close() freed everything
    with pytest.raises(RuntimeError, match="closed"):
        rt.classify("paris")


def test_profiles_are_switched_and_batches_split(fakes, artifact):
    with TRTMegatronBert(artifact) as rt:
        backend = rt.backend
        seen = []
        execute = backend._execute
        backend._execute = lambda profile, arrays: seen.append((profile, arrays["input_ids"].shape)) or \
            execute(profile, arrays)
        backend.infer({n: np.ones((2, 10), np.int64) for n in IO})   # fits profile 0 (opt 1x16)
        backend.infer({n: np.ones((3, 10), np.int64) for n in IO})   # batch 3 needs profile 1
        backend.infer({n: np.ones((9, 40), np.int64) for n in IO})   # 4 + 4 + 1 on profile 1
        assert seen == [(0, (2, 10)), (1, (3, 10)), (1, (4, 40)), (1, (4, 40)), (1, (1, 40))]
        with pytest.raises(EngineShapeError, match="outside every optimization profile"):
            backend.infer({n: np.ones((1, 65), np.int64) for n in IO})


def test_cuda_graphs_replay_each_shape(fakes, artifact):
    reference = OrtMegatronBert(artifact)
    with TRTMegatronBert(artifact, cuda_graph=True) as rt:
        for _ in range(3):
            for texts in (TEXTS[:1], TEXTS[:3], TEXTS):
                got, want = rt.classify(texts, top_k=None), reference.classify(texts, top_k=None)
                for a, b in zip(got, want):
                    assert [x["label"] for x in a] == [x["label"] for x in b]
                    assert np.allclose([x["score"] for x in a], [x["score"] for x in b], atol=1e-6)
        assert fakes.graphs >= 3 and fakes.launches > fakes.graphs  # captured once, replayed after


def test_threads_share_one_engine_safely(fakes, artifact):
    with TRTMegatronBert(artifact) as rt:
        serial = [rt.classify(t, top_k=None) for t in TEXTS]
        results = run_in_threads(lambda: [rt.classify(t, top_k=None) for t in TEXTS], threads=8, repeats=3)
        assert len(results) == 24 and all(r == serial for r in results)


# ---------------------------------------------------------------------------- refusals
@pytest.mark.parametrize("sidecar, message", [
    ({"tensorrt_version": "10.15.1.29"}, r"built with TensorRT 10.15.1.29 but this is TensorRT 10.16.0.72"),
    ({"tensorrt_version": "11.4.0"}, r"built with TensorRT 11.4.0"),
    ({"compute_capability": "9.0", "gpu_name": "NVIDIA H100"}, r"compute capability 9.0 \(NVIDIA H100\)"),
    ({"gpu_name": "NVIDIA A100 80GB PCIe"}, r"built on a NVIDIA A100 80GB PCIe"),
    ({"gpu_name": None}, r"does not record gpu_name"),
])
def test_engine_from_another_tensorrt_or_gpu_is_refused(fakes, artifact, tmp_path, sidecar, message):
    folder = _copy(artifact, tmp_path, **sidecar)
    with pytest.raises(EngineMismatchError, match=message) as info:
        TRTMegatronBert(folder)
    assert "rebuild" in str(info.value)
    TRTMegatronBert(folder, check_compatibility=False).close()  # the expert override


def test_compatibility_check_as_a_pure_function():
    check_engine_compatibility(dict(GPU), dict(GPU, tensorrt_version="10.16.0.99"))  # build number ignored
    check_engine_compatibility(dict(GPU, compute_capability=[8, 0]), dict(GPU))
    with pytest.raises(EngineMismatchError, match="this GPU is 8.6"):
        check_engine_compatibility(dict(GPU), dict(GPU, compute_capability="8.6", gpu_name="NVIDIA A10"))
    with pytest.raises(EngineMismatchError, match="does not record tensorrt_version, gpu_name"):
        check_engine_compatibility({"compute_capability": "8.0"}, dict(GPU))
    assert [normalize_compute_capability(v) for v in ("8.6", (8, 6), "sm_86", 86, "sm_100", "12.0")] == \
        ["8.6", "8.6", "8.6", "8.6", "10.0", "12.0"]


def test_engine_folders_missing_files(fakes, artifact, tmp_path):
    no_sidecar = tmp_path / "no_sidecar"
    shutil.copytree(artifact, no_sidecar)
    (no_sidecar / "build.json").unlink()
    with pytest.raises(ArtifactError, match="has no build.json"):
        TRTMegatronBert(no_sidecar)
    no_engine = tmp_path / "no_engine"
    shutil.copytree(artifact, no_engine)
    (no_engine / "engine.plan").unlink()
    with pytest.raises(ArtifactError, match="has no TensorRT engine"):
        TRTMegatronBert(no_engine)
    corrupt = _copy(artifact, tmp_path)
    (corrupt / "engine.plan").write_text("not an engine")
    with pytest.raises(EngineMismatchError, match="could not deserialize"):
        TRTMegatronBert(corrupt)
    # The engine file itself can be given; the folder's build.json and model.onnx describe it.
    with TRTMegatronBert(artifact / "engine.plan") as rt:
        assert rt.task.name == "sequence-classification"


def test_without_tensorrt_the_error_points_to_onnxruntime(artifact):
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        pass
    else:
        pytest.skip("tensorrt is installed here")
    with pytest.raises(ImportError, match="needs TensorRT.*use OrtMegatronBert"):
        TRTMegatronBert(artifact)


# ---------------------------------------------------------------------------- pure profile logic
def _profiles(*ranges):
    return [Profile(i, {"input_ids": (tuple(lo), tuple(opt), tuple(hi))}) for i, (lo, opt, hi) in enumerate(ranges)]


def test_profile_selection_and_batch_splitting():
    small, wide = ((1, 1), (1, 16), (2, 32)), ((1, 1), (8, 64), (8, 128))
    profiles = _profiles(small, wide)
    assert select_profile(profiles, {"input_ids": (1, 16)}) == 0
    assert select_profile(profiles, {"input_ids": (2, 30)}) == 0
    assert select_profile(profiles, {"input_ids": (2, 60)}) == 1
    assert select_profile(profiles, {"input_ids": (9, 10)}) is None
    assert plan_chunks(profiles, {"input_ids": (2, 8)}) == [(0, 0, 2)]
    assert plan_chunks(profiles, {"input_ids": (19, 100)}) == [(1, 0, 8), (1, 8, 16), (1, 16, 19)]
    assert plan_chunks(profiles, {"input_ids": (3, 20)}) == [(1, 0, 3)]
    with pytest.raises(EngineShapeError, match=r"outside every optimization profile"):
        plan_chunks(profiles, {"input_ids": (1, 129)})
    only_big_batches = _profiles(((4, 1), (8, 16), (8, 32)))
    with pytest.raises(EngineShapeError, match="fits no optimization profile"):
        plan_chunks(only_big_batches, {"input_ids": (2, 8)})
    multiple_choice = _profiles(((1, 2, 1), (2, 4, 32), (4, 4, 64)))
    assert plan_chunks(multiple_choice, {"input_ids": (6, 3, 10)}) == [(0, 0, 4), (0, 4, 6)]
    assert bucket_shape((3, 17), (8, 128)) == (4, 64)
    assert bucket_shape((3, 100), (8, 128)) == (4, 128)
    assert bucket_shape((5, 17), (6, 40)) == (6, 40)
    assert bucket_shape((2, 3, 17), (4, 4, 64)) == (2, 4, 64)


# ---------------------------------------------------------------------------- real TensorRT
def _tensorrt_or_skip():
    try:
        import tensorrt as trt
    except ImportError as exc:
        pytest.skip(f"tensorrt cannot be imported ({exc})")
    try:
        cudart = trt_loader.import_cudart()
        count = trt_loader.cuda_check(cudart.cudaGetDeviceCount(), cudart, "cudaGetDeviceCount")
    except (ImportError, RuntimeError) as exc:
        pytest.skip(f"no CUDA device ({exc})")
    if not count:
        pytest.skip("no CUDA device")
    return trt, cudart


@pytest.mark.gpu
def test_real_engine_matches_onnxruntime(artifact, tmp_path):
    trt, cudart = _tensorrt_or_skip()
    folder = tmp_path / "engine"
    shutil.copytree(artifact, folder)
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED))
    parser = trt.OnnxParser(network, logger)
    assert parser.parse_from_file(str(folder / "model.onnx"))
    config = builder.create_builder_config()
    for p in PROFILES:
        profile = builder.create_optimization_profile()
        for name in IO:
            profile.set_shape(name, p["min"], p["opt"], p["max"])
        config.add_optimization_profile(profile)
    plan = builder.build_serialized_network(network, config)
    assert plan is not None
    (folder / "engine.plan").write_bytes(bytes(plan))
    env = trt_loader.running_environment(trt, cudart)
    (folder / "build.json").write_text(json.dumps({k: env[k] for k in GPU} | {"task": "sequence-classification"}))
    reference = OrtMegatronBert(artifact)
    for cuda_graph in (False, True):
        with TRTMegatronBert(folder, cuda_graph=cuda_graph) as rt:
            report = rt.verify()
            assert report.passed, report.summary()
            feeds = {"input_ids": np.random.default_rng(0).integers(5, len(VOCAB), (7, 50))}
            assert np.abs(rt.run(feeds)["logits"] - reference.run(feeds)["logits"]).max() <= 1e-3
            assert [r["label"] for r in rt.classify(TEXTS)] == [r["label"] for r in reference.classify(TEXTS)]
    bad = tmp_path / "other_version"
    shutil.copytree(folder, bad)
    (bad / "build.json").write_text(json.dumps({k: env[k] for k in GPU} | {"tensorrt_version": "9.0.0"}))
    with pytest.raises(EngineMismatchError, match="rebuild"):
        TRTMegatronBert(bad)
