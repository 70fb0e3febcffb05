"""OpenVINO backend (CPU): `compile_graph` (loader: precision, threads, hint, blob cache) and
`OpenVinoBackend` (runner). Importing this package does not import openvino."""

from .loader import OpenVinoCompileError, compile_graph, cpu_capabilities, openvino_version
from .runner import OpenVinoBackend

__all__ = ["OpenVinoBackend", "OpenVinoCompileError", "compile_graph", "cpu_capabilities", "openvino_version"]
