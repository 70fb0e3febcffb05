"""`OpenVinoBackend`: the `Backend` interface over an OpenVINO compiled model (CPU)."""

from __future__ import annotations

import queue
import threading
from pathlib import Path
from typing import Any

import numpy as np

from ..backend import Backend
from .loader import compile_graph


class OpenVinoBackend(Backend):
    """Runs a graph with OpenVINO on the CPU. Thread-safe: each call borrows an infer request from a pool
    (an infer request serves one call at a time; the compiled model is shared)."""

    def __init__(self, path: str | Path, *, inference_precision: str | None = None, threads: int | None = None,
                 performance_hint: str = "latency", num_streams: int | None = None,
                 cache_dir: Any = None, config: dict | None = None, max_batch: int | None = None):
        self.path = Path(path)
        compiled = compile_graph(self.path, inference_precision=inference_precision, threads=threads,
                                 performance_hint=performance_hint, num_streams=num_streams, cache_dir=cache_dir,
                                 config=config)
        self._model = compiled.model
        self.inference_precision = compiled.inference_precision
        self.cache = compiled.cache
        self.version = compiled.version
        self.performance_hint = str(self._model.get_property("PERFORMANCE_HINT"))
        self.threads = int(self._model.get_property("INFERENCE_NUM_THREADS"))
        self.input_names = tuple(i.get_any_name() for i in self._model.inputs)
        # An output can carry several tensor names (FP16 graphs: the cast's and the graph output's).
        self._outputs = []
        for output in self._model.outputs:
            names = output.get_names()
            self._outputs.append(next((n for n in sorted(names) if not n.startswith("graph_output_cast")),
                                      output.get_any_name()))
        self.output_names = tuple(self._outputs)
        self.max_batch = max_batch
        self.max_seq = None
        self._requests: queue.SimpleQueue = queue.SimpleQueue()
        self._lock = threading.Lock()

    def describe(self) -> str:
        return (f"openvino {self.version} (CPU, {self.inference_precision}, {self.threads} threads, "
                f"{self.performance_hint.split('.')[-1]}; cache {self.cache.split(':')[0]})")

    def infer(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        with self._lock:
            if self._model is None:
                raise RuntimeError("this runtime was closed")
            try:
                request = self._requests.get_nowait()
            except queue.Empty:
                request = self._model.create_infer_request()
        try:
            inputs = {n: np.ascontiguousarray(feeds[n], dtype=np.int64) for n in self.input_names}
            results = request.infer(inputs, share_outputs=False)
            return {name: np.asarray(results[i]) for i, name in enumerate(self._outputs)}
        finally:
            self._requests.put(request)

    def close(self) -> None:
        with self._lock:
            self._model = None
            while not self._requests.empty():
                self._requests.get_nowait()
