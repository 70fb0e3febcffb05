"""ONNX Runtime backend: `create_session` (loader) and `OnnxRuntimeBackend` (runner)."""

from .loader import create_session, resolve_providers
from .runner import OnnxRuntimeBackend

__all__ = ["OnnxRuntimeBackend", "create_session", "resolve_providers"]
