"""Load a TensorRT engine: imports, the running GPU, the build.json compatibility check, engine I/O.

`tensorrt` and `cuda-python` are imported only inside functions, so this module (and the pure checks
in it) import on a machine without either. TensorRT names used here and in runner.py are limited to
the API common to TensorRT 10.x and 11.x (checked by ../shared/tools/trt_api_check.py).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .profiles import Profile

__all__ = ["EngineMismatchError", "check_engine_compatibility", "import_tensorrt", "import_cudart",
           "running_environment", "tensorrt_version", "deserialize_engine", "read_io", "read_profiles", "TensorInfo", "cuda_check"]

#: TensorRT DataType names -> numpy dtypes (BF16/FP8/FP4 I/O has no numpy type and is refused).
NUMPY_DTYPES = {
    "FLOAT": np.float32, "HALF": np.float16, "INT32": np.int32, "INT64": np.int64,
    "INT8": np.int8, "UINT8": np.uint8, "BOOL": np.bool_,
}
SIDECAR_FIELDS = ("tensorrt_version", "gpu_name", "compute_capability")


class EngineMismatchError(RuntimeError):
    """The engine was built by another TensorRT version or for another GPU: it must be rebuilt here."""


# ---------------------------------------------------------------------------- imports
def import_tensorrt():
    try:
        import tensorrt
    except ImportError as exc:
        raise ImportError(f"TRTMegatronBert needs TensorRT (pip install tensorrt, or the project's [gpu] extra) "
                          f"and an NVIDIA GPU; it cannot be imported here ({exc}). On a CPU machine use "
                          "OrtMegatronBert on the same folder.") from None
    return tensorrt


def import_cudart():
    try:
        from cuda.bindings import runtime as cudart  # cuda-python >= 12.6
    except ImportError:
        try:
            from cuda import cudart  # older cuda-python
        except ImportError:
            raise ImportError("TRTMegatronBert needs cuda-python for device memory and streams: "
                              "pip install cuda-python (part of the [gpu] extra)") from None
    return cudart


def cuda_check(result: Any, cudart: Any, what: str) -> Any:
    """Unwrap a cuda-python `(err, value...)` tuple; raise RuntimeError naming `what` on an error."""
    if isinstance(result, tuple):
        err, values = result[0], result[1:]
    else:
        err, values = result, ()
    if err != cudart.cudaError_t.cudaSuccess:
        try:
            message = cudart.cudaGetErrorString(err)[1]
            message = message.decode() if isinstance(message, bytes) else str(message)
        except Exception:  # the error string itself is best effort
            message = str(err)
        raise RuntimeError(f"CUDA error in {what}: {message}")
    if not values:
        return None
    return values[0] if len(values) == 1 else values


# ---------------------------------------------------------------------------- compatibility
def _version_key(version: Any) -> tuple[int, ...]:
    """"10.16.0.72" -> (10, 16, 0): engines are tied to major.minor.patch."""
    numbers = re.findall(r"\d+", str(version))
    return tuple(int(n) for n in numbers[:3])


def normalize_compute_capability(value: Any) -> str:
    """"8.6", [8, 6], (8, 6), "sm_86", 86 -> "8.6"."""
    if isinstance(value, (list, tuple)) and len(value) == 2:
        return f"{int(value[0])}.{int(value[1])}"
    text = str(value).strip().lower()
    match = re.fullmatch(r"(?:sm_?)?(\d+)\.(\d+)", text)
    if match:
        return f"{int(match.group(1))}.{int(match.group(2))}"
    match = re.fullmatch(r"(?:sm_?)?(\d)(\d)", text) or re.fullmatch(r"(?:sm_?)?(\d\d)(\d)", text)
    if match:
        return f"{int(match.group(1))}.{int(match.group(2))}"
    raise ValueError(f"cannot read compute capability {value!r}")


def check_engine_compatibility(sidecar: dict[str, Any], running: dict[str, Any], engine: str | Path = "the engine") -> None:
    """Refuse an engine built by another TensorRT version or for another GPU.

    `sidecar` is the engine's build.json; `running` has the same three fields for this process
    (`running_environment()`). A TensorRT engine is tied to the TensorRT release and the GPU it was
    built with; loading it elsewhere fails or silently runs unoptimized tactics.
    """
    missing = [k for k in SIDECAR_FIELDS if sidecar.get(k) in (None, "")]
    if missing:
        raise EngineMismatchError(
            f"{engine}: build.json does not record {', '.join(missing)}, so it cannot be checked against this "
            "machine; rebuild the engine here with the engine builder (it records them)")
    problems = []
    built_v, here_v = _version_key(sidecar["tensorrt_version"]), _version_key(running["tensorrt_version"])
    if built_v != here_v:
        problems.append(f"it was built with TensorRT {sidecar['tensorrt_version']} but this is TensorRT "
                        f"{running['tensorrt_version']}")
    try:
        built_cc = normalize_compute_capability(sidecar["compute_capability"])
    except ValueError:
        raise EngineMismatchError(f"{engine}: build.json has an unreadable compute_capability "
                                  f"{sidecar['compute_capability']!r}; rebuild the engine here") from None
    here_cc = normalize_compute_capability(running["compute_capability"])
    if built_cc != here_cc:
        problems.append(f"it was built for compute capability {built_cc} ({sidecar['gpu_name']}) but this GPU is "
                        f"{here_cc} ({running['gpu_name']})")
    elif str(sidecar["gpu_name"]).strip() != str(running["gpu_name"]).strip():
        problems.append(f"it was built on a {sidecar['gpu_name']} but this GPU is a {running['gpu_name']}")
    if problems:
        raise EngineMismatchError(f"{engine} cannot run here: {'; '.join(problems)}. TensorRT engines only run "
                                  "with the TensorRT version and on the GPU model they were built for: rebuild "
                                  "the engine on this machine from the folder's model.onnx")


def tensorrt_version(trt: Any = None) -> str:
    """Version of the installed TensorRT: the wheel's metadata (11.x bindings carry no __version__)."""
    from importlib import metadata

    for dist in ("tensorrt", "tensorrt-cu13", "tensorrt-cu12", "tensorrt-cu13-bindings", "tensorrt-cu12-bindings"):
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
    return str(getattr(trt, "__version__", "unknown"))


def running_environment(trt: Any, cudart: Any, device: int | None = None) -> dict[str, Any]:
    """TensorRT version, GPU name and compute capability of this process (device `device` or current)."""
    count = cuda_check(cudart.cudaGetDeviceCount(), cudart, "cudaGetDeviceCount")
    if not count:
        raise RuntimeError("no CUDA device is visible (check nvidia-smi and CUDA_VISIBLE_DEVICES); "
                           "on a CPU machine use OrtMegatronBert")
    if device is None:
        device = cuda_check(cudart.cudaGetDevice(), cudart, "cudaGetDevice")
    props = cuda_check(cudart.cudaGetDeviceProperties(device), cudart, "cudaGetDeviceProperties")
    name = props.name
    if isinstance(name, bytes):
        name = name.split(b"\0", 1)[0].decode(errors="replace")
    return {"tensorrt_version": tensorrt_version(trt), "gpu_name": str(name),
            "compute_capability": f"{props.major}.{props.minor}", "device": device}


# ---------------------------------------------------------------------------- engine
@dataclass(frozen=True)
class TensorInfo:
    name: str
    is_input: bool
    dtype: Any  # numpy dtype


def deserialize_engine(trt: Any, path: str | Path, logger: Any = None):
    """`Runtime.deserialize_cuda_engine` of the file at `path`; returns (runtime, engine)."""
    path = Path(path)
    logger = logger or trt.Logger(trt.Logger.WARNING)
    runtime = trt.Runtime(logger)
    engine = runtime.deserialize_cuda_engine(path.read_bytes())
    if engine is None:
        raise EngineMismatchError(f"TensorRT {tensorrt_version(trt)} could not deserialize {path} (see the TensorRT "
                                  "log above); it was probably built by another TensorRT version: rebuild it here")
    return runtime, engine


def read_io(trt: Any, engine: Any) -> list[TensorInfo]:
    """Name, direction and numpy dtype of every I/O tensor."""
    infos = []
    for i in range(engine.num_io_tensors):
        name = engine.get_tensor_name(i)
        dtype = engine.get_tensor_dtype(name)
        dtype_name = getattr(dtype, "name", str(dtype).rsplit(".", 1)[-1])
        if dtype_name not in NUMPY_DTYPES:
            raise TypeError(f"engine tensor {name!r} has type {dtype_name}, which this runtime cannot exchange "
                            "with numpy; build the engine with FP32/FP16 outputs")
        is_input = engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT
        infos.append(TensorInfo(name, is_input, np.dtype(NUMPY_DTYPES[dtype_name])))
    return infos


def read_profiles(engine: Any, input_names: list[str]) -> list[Profile]:
    """Every optimization profile's (min, opt, max) shape per input."""
    profiles = []
    for index in range(engine.num_optimization_profiles):
        shapes = {}
        for name in input_names:
            low, opt, high = engine.get_tensor_profile_shape(name, index)
            shapes[name] = (tuple(int(d) for d in low), tuple(int(d) for d in opt), tuple(int(d) for d in high))
        profiles.append(Profile(index, shapes))
    return profiles
