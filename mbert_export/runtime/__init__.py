"""Deployment runtime: task methods over ONNX Runtime, OpenVINO or TensorRT, without torch or transformers.

    from mbert_export.runtime import OrtMegatronBert, OvMegatronBert, TRTMegatronBert

    mlm = OrtMegatronBert("onnx/mlm")                 # folder with model.onnx + tokenizer files
    mlm.fill_mask("Paris is the [MASK] of France.")   # HF fill-mask format
    print(mlm.verify())                               # self-check against reference.npz

Layout (after Polygraphy's backends): `artifact` reads an artifact folder, `pipeline` holds the task
API over the abstract `backend.Backend`, `onnxruntime/`, `openvino/` and `tensorrt/` each have a
loader and a runner, `postprocess` produces the Hugging Face result formats, `verify` the reference self-check.
Only numpy, tokenizers and onnxruntime, openvino or tensorrt (+ cuda-python) are needed; openvino
is imported when an OvMegatronBert is created, tensorrt and cuda-python when a TRTMegatronBert is.
"""

from .api import OrtMegatronBert, OvMegatronBert, TRTMegatronBert, compare
from .artifact import Artifact, ArtifactError, open_artifact, read_onnx_metadata
from .backend import Backend
from .openvino import OpenVinoCompileError
from .pipeline import MegatronBertPipeline
from .tensorrt import EngineMismatchError, EngineShapeError
from .verify import THRESHOLDS, Thresholds, VerifyReport

__all__ = ["OrtMegatronBert", "OvMegatronBert", "TRTMegatronBert", "OpenVinoCompileError", "MegatronBertPipeline", "Backend", "Artifact", "ArtifactError",
           "open_artifact", "read_onnx_metadata", "compare", "EngineMismatchError", "EngineShapeError",
           "Thresholds", "THRESHOLDS", "VerifyReport"]
