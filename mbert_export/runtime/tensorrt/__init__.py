"""TensorRT backend: loader (imports, build.json checks, engine I/O), profiles (pure shape logic), runner.

Importing this package does not import tensorrt or cuda-python; `TensorRTBackend(...)` does.
"""

from .loader import EngineMismatchError, check_engine_compatibility, normalize_compute_capability
from .profiles import EngineShapeError, Profile, bucket_shape, plan_chunks, select_profile
from .runner import TensorRTBackend

__all__ = ["TensorRTBackend", "EngineMismatchError", "EngineShapeError", "Profile", "bucket_shape",
           "check_engine_compatibility", "normalize_compute_capability", "plan_chunks", "select_profile"]
