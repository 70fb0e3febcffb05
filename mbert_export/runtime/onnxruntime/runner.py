"""`OnnxRuntimeBackend`: the `Backend` interface over an ONNX Runtime session."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..backend import Backend
from .loader import create_session

#: ONNX Runtime type strings of the inputs/outputs these graphs use.
_ORT_TYPES = {
    "tensor(int64)": np.int64, "tensor(int32)": np.int32, "tensor(float)": np.float32,
    "tensor(float16)": np.float16, "tensor(bool)": np.bool_,
}


class OnnxRuntimeBackend(Backend):
    """Runs a graph with ONNX Runtime. `session.run` is thread-safe, so no lock is taken here."""

    def __init__(self, path: str | Path, providers: Sequence[Any] | str | None = None,
                 session_options: Any = None, max_batch: int | None = None):
        self.path = Path(path)
        self._session = create_session(self.path, providers, session_options)
        inputs = self._session.get_inputs()
        self.input_names = tuple(i.name for i in inputs)
        self.output_names = tuple(o.name for o in self._session.get_outputs())
        self._input_dtypes = {i.name: _ORT_TYPES.get(i.type) for i in inputs}
        self.max_batch = max_batch
        self.max_seq = None

    @property
    def providers(self) -> list[str]:
        return self._session.get_providers() if self._session is not None else []

    def describe(self) -> str:
        import onnxruntime

        return f"onnxruntime {onnxruntime.__version__} ({', '.join(self.providers)})"

    def infer(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if self._session is None:
            raise RuntimeError("this runtime was closed")
        cast = {}
        for name in self.input_names:
            dtype = self._input_dtypes.get(name)
            value = feeds[name]
            cast[name] = np.ascontiguousarray(value, dtype=dtype) if dtype is not None else value
        outputs = self._session.run(list(self.output_names), cast)
        return dict(zip(self.output_names, outputs))

    def close(self) -> None:
        self._session = None
