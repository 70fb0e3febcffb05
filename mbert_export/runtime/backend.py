"""The backend interface the task pipeline runs on (Polygraphy's "runner" idea, reduced to one call).

A backend executes the graph or engine: named int64 inputs in, named outputs out. It knows its own
limits (`max_batch`, `max_seq`, None when it has none) and nothing about tokens, labels or tasks.
"""

from __future__ import annotations

import abc

import numpy as np


class Backend(abc.ABC):
    """One loaded model on one execution engine (ONNX Runtime session, TensorRT engine, ...)."""

    #: Graph input and output names, in graph order.
    input_names: tuple[str, ...] = ()
    output_names: tuple[str, ...] = ()
    #: Largest batch / sequence one `infer` call accepts (None: no limit of its own).
    max_batch: int | None = None
    max_seq: int | None = None

    @abc.abstractmethod
    def infer(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run once on `feeds` (every input name, same leading shape); outputs by name, on the host."""

    def describe(self) -> str:
        """One line naming the engine, e.g. "onnxruntime 1.20 (CPUExecutionProvider)"."""
        return type(self).__name__

    def close(self) -> None:
        """Release sessions, device memory and streams. Idempotent."""

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()
