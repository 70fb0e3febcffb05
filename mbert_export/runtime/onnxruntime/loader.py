"""Create an ONNX Runtime session for an artifact graph, with the execution providers asked for."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

#: Short names accepted for the usual providers.
PROVIDER_ALIASES = {
    "cpu": "CPUExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "tensorrt": "TensorrtExecutionProvider",
    "trt": "TensorrtExecutionProvider",
}
DEFAULT_PROVIDERS = ("CPUExecutionProvider",)


def _import_ort():
    try:
        import onnxruntime
    except ImportError:
        raise ImportError("OrtMegatronBert needs onnxruntime: pip install onnxruntime "
                          "(or onnxruntime-gpu for the CUDA / TensorRT execution providers)") from None
    return onnxruntime


def resolve_providers(providers: Sequence[Any] | str | None, available: Sequence[str]) -> list[Any]:
    """Provider list for `InferenceSession`: names (or aliases) or (name, options) pairs, all available.

    None means the CPU provider. A provider that this onnxruntime build lacks is an error naming the
    ones it has (onnxruntime-gpu brings CUDA and TensorRT).
    """
    if providers is None:
        return list(DEFAULT_PROVIDERS)
    if isinstance(providers, str):
        providers = [providers]
    if not isinstance(providers, (list, tuple)):
        raise TypeError(f"providers must be a name or a list of names like 'CPUExecutionProvider' or 'cuda', "
                        f"got {providers!r}")
    resolved: list[Any] = []
    for item in providers:
        options = None
        if isinstance(item, (tuple, list)) and len(item) == 2 and isinstance(item[0], str):
            item, options = item
        if not isinstance(item, str):
            raise TypeError(f"providers must be names like 'CPUExecutionProvider' or 'cuda', got {item!r}")
        name = PROVIDER_ALIASES.get(item.lower(), item)
        if name not in available:
            raise ValueError(f"execution provider {name} is not available in this onnxruntime "
                             f"(available: {', '.join(available)}); install onnxruntime-gpu for CUDA/TensorRT")
        resolved.append((name, options) if options is not None else name)
    if not resolved:
        raise ValueError("providers is empty; pass None for the CPU provider")
    return resolved


def create_session(path: str | Path, providers: Sequence[Any] | str | None = None, session_options: Any = None):
    """`onnxruntime.InferenceSession` for `path`; refuses a silent fallback from the provider asked for."""
    ort = _import_ort()
    wanted = resolve_providers(providers, ort.get_available_providers())
    if session_options is not None and not isinstance(session_options, ort.SessionOptions):
        raise TypeError(f"session_options must be an onnxruntime.SessionOptions, got {type(session_options).__name__}")
    try:
        session = ort.InferenceSession(str(path), sess_options=session_options, providers=wanted)
    except Exception as exc:  # onnxruntime raises its own exception types (Fail, InvalidGraph, ...)
        raise ValueError(f"onnxruntime cannot load {path}: {exc}") from None
    first = wanted[0][0] if isinstance(wanted[0], tuple) else wanted[0]
    if first not in session.get_providers():
        raise RuntimeError(f"{first} was requested but onnxruntime fell back to {session.get_providers()} "
                           "(are the CUDA / TensorRT libraries on the library path?)")
    return session
