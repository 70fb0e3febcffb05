"""The two runtimes users construct, and `compare` (one runtime's outputs against another's)."""

from __future__ import annotations

import os
from typing import Any, Sequence

import numpy as np

from .artifact import open_artifact
from .onnxruntime import OnnxRuntimeBackend
from .openvino import OpenVinoBackend
from .openvino.loader import InferencePrecisionError
from .pipeline import MegatronBertPipeline
from .tensorrt import TensorRTBackend
from .verify import (EXACTNESS, Thresholds, VerifyReport, compare_outputs, load_reference, thresholds_for,
                     with_overrides)

__all__ = ["OrtMegatronBert", "OvMegatronBert", "TRTMegatronBert", "compare"]


def _start(pipeline: MegatronBertPipeline, backend, artifact, tokenizer, max_batch) -> None:
    """The pipeline's __init__ over a freshly opened backend, which is closed if that fails."""
    try:
        MegatronBertPipeline.__init__(pipeline, backend, artifact, tokenizer, max_batch)
    except BaseException:
        backend.close()
        raise


class OrtMegatronBert(MegatronBertPipeline):
    """An exported graph on ONNX Runtime: `OrtMegatronBert("onnx/mlm")` or `(".../model.onnx")`.

    providers: None (CPU), or names / aliases in priority order, e.g. ["cuda", "cpu"] or
    ["TensorrtExecutionProvider", "CUDAExecutionProvider"] (needs onnxruntime-gpu).
    tokenizer: a `Tokenizer` or a folder, when the artifact has none (or another one) next to it.
    max_batch: split larger batches (default: the artifact's, else 32).
    """

    def __init__(self, path: str | os.PathLike, providers: Sequence[Any] | str | None = None, *,
                 tokenizer: Any = None, max_batch: int | None = None, session_options: Any = None):
        artifact = open_artifact(path, "onnx")
        backend = OnnxRuntimeBackend(artifact.onnx_path, providers, session_options)
        _start(self, backend, artifact, tokenizer, max_batch)


class OvMegatronBert(MegatronBertPipeline):
    """An exported graph (FP32, FP16 or INT8 Q/DQ `model.onnx`) on OpenVINO, CPU: `OvMegatronBert("onnx/mlm")`.

    inference_precision: "f32" or "bf16" (bf16 only on CPUs with AVX512-BF16/AMX; elsewhere an error).
    Default: the build's (`build.json` "openvino.inference_precision"), else "f32" - always set
    explicitly, since OpenVINO would pick bf16 by itself on such CPUs. `self.inference_precision`
    says what runs; an FP32/FP16 graph at bf16 is judged by the bf16 bars in `verify()`.
    threads / performance_hint ("latency", "throughput") / num_streams: OpenVINO CPU settings.
    cache_dir: compiled blobs (default `openvino-cache/` beside the graph, keyed on the OpenVINO
    version, the graph's sha256 and the inference precision; False: no cache). `self.cache` says whether it was used.
    """

    def __init__(self, path: str | os.PathLike, *, inference_precision: str | None = None,
                 threads: int | None = None, performance_hint: str = "latency", num_streams: int | None = None,
                 cache_dir: str | os.PathLike | bool | None = None, tokenizer: Any = None,
                 max_batch: int | None = None, config: dict | None = None):
        artifact = open_artifact(path, "onnx")
        recorded = None if inference_precision is not None else \
            (artifact.sidecar.get("openvino") or {}).get("inference_precision")
        try:
            backend = OpenVinoBackend(artifact.onnx_path, inference_precision=inference_precision or recorded,
                                      threads=threads, performance_hint=performance_hint, num_streams=num_streams,
                                      cache_dir=cache_dir, config=config)
        except InferencePrecisionError as exc:
            if not recorded:
                raise
            # the build's choice: say where it came from and how to run at another
            raise InferencePrecisionError(f"{artifact.folder / 'build.json'} records OpenVINO inference precision "
                                          f"{recorded!r}: {exc}. To run this artifact at f32 anyway, pass "
                                          "inference_precision='f32' (CLI: --inference-precision f32)") from None
        _start(self, backend, artifact, tokenizer, max_batch)

    @property
    def inference_precision(self) -> str:
        return self.backend.inference_precision

    @property
    def cache(self) -> str:
        return self.backend.cache

    @property
    def precision(self) -> str:
        """The artifact's precision, or "bf16" for a float graph that OpenVINO computes in bf16."""
        if self.backend.inference_precision == "bf16" and self.artifact.precision in ("fp32", "fp16"):
            return "bf16"
        return self.artifact.precision


class TRTMegatronBert(MegatronBertPipeline):
    """A TensorRT engine: `TRTMegatronBert("engines/mlm-fp16")` (folder with engine.plan + build.json).

    The engine must have been built by this TensorRT version on this GPU model (build.json says which;
    anything else is refused with a request to rebuild). cuda_graph=True replays each input shape
    from a captured CUDA graph. Use as a context manager, or call close(), to free GPU memory.
    """

    def __init__(self, engine_or_folder: str | os.PathLike, *, tokenizer: Any = None, max_batch: int | None = None,
                 cuda_graph: bool = False, device: int | None = None, check_compatibility: bool = True):
        artifact = open_artifact(engine_or_folder, "engine")
        backend = TensorRTBackend(artifact.engine_path, artifact.sidecar, check_compatibility=check_compatibility,
                                  cuda_graph=cuda_graph, device=device)
        _start(self, backend, artifact, tokenizer, max_batch)


def compare(reference: MegatronBertPipeline, candidate: MegatronBertPipeline,
            feeds: dict[str, np.ndarray] | None = None,
            thresholds: Thresholds | dict[str, Any] | None = None) -> VerifyReport:
    """Run both runtimes on the same inputs and judge `candidate` against `reference`.

    E.g. an FP16 TensorRT engine against the FP32 graph on ONNX Runtime. `feeds` default to the
    reference artifact's reference.npz inputs; thresholds follow the candidate's precision.
    """
    if not all(isinstance(r, MegatronBertPipeline) for r in (reference, candidate)):
        raise TypeError("compare() takes two opened runtimes, e.g. compare(OrtMegatronBert(fp32_folder), "
                        "OvMegatronBert(int8_folder))")
    if reference.task.name != candidate.task.name:
        raise ValueError(f"cannot compare task {reference.task.name!r} with task {candidate.task.name!r}")
    source = "given inputs"
    if feeds is None:
        path = reference.artifact.reference_path
        if not path.is_file():
            path = candidate.artifact.reference_path
        feeds, _, _ = load_reference(path)
        source = f"inputs of {path}"
    feeds = {n: np.asarray(feeds[n]) for n in reference.task.inputs if n in feeds}
    limits = with_overrides(thresholds_for(candidate.precision) if thresholds is None or isinstance(thresholds, dict)
                            else Thresholds(), thresholds)
    report = VerifyReport(str(candidate.artifact.path), candidate.backend.describe(), candidate.task.name,
                          candidate.precision, limits, samples=int(feeds["input_ids"].shape[0]),
                          reference=f"{reference.artifact.path} on {reference.backend.describe()} ({source})",
                          command="compare")
    ranks = {p: i for i, p in enumerate(EXACTNESS)}
    if ranks.get(reference.precision, 0) > ranks.get(candidate.precision, 0):
        report.hint = (f"the reference is {reference.precision}, less exact than the {candidate.precision} artifact "
                       "it judges: were the two swapped? (CLI: --reference-artifact is the one to trust)")
    try:
        expected = reference.run(feeds)
        got = candidate.run(feeds)
    except (ValueError, RuntimeError) as exc:
        report.error = f"running the inputs failed: {exc}"
        return report
    full = dict(feeds)
    full.setdefault("attention_mask", np.ones_like(feeds["input_ids"]))
    report.outputs = compare_outputs(candidate.task, full, expected, got, limits,
                                     min(reference.artifact.real_vocab_size, candidate.artifact.real_vocab_size))
    return report
