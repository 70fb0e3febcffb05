"""`TensorRTBackend`: the `Backend` interface over a TensorRT engine (TensorRT 10.x and 11.x).

Kept thin: one execution context and one CUDA stream per backend, calls serialized by a lock (a
context is not thread-safe). Per call: pick the optimization profile that holds the shapes (a batch no
profile holds is split), set the input shapes, copy the inputs into device buffers, execute, copy the
outputs back. Device buffers are allocated per shape bucket (batch rounded to a power of two,
sequence to a multiple of 64, per profile) and reused by every call that falls into the bucket; the
least recently used buckets are freed beyond `max_buckets`. With `cuda_graph=True` the
`execute_async_v3` launch of each exact shape is captured once into a CUDA graph and replayed.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np

from ..backend import Backend
from .loader import (check_engine_compatibility, cuda_check, deserialize_engine, import_cudart,
                     import_tensorrt, read_io, read_profiles, running_environment)
from .profiles import EngineShapeError, Profile, bucket_shape, limits, plan_chunks

MAX_BUCKETS = 8
MAX_GRAPHS = 32


class _Bucket:
    """Device buffers sized for one (profile, bucket shape); freed together."""

    def __init__(self, pointers: dict[str, int], nbytes: dict[str, int]):
        self.pointers, self.nbytes = pointers, nbytes
        self.graphs: OrderedDict[tuple, Any] = OrderedDict()


class TensorRTBackend(Backend):
    """Runs a serialized TensorRT engine; `sidecar` is its build.json (checked against this machine)."""

    def __init__(self, engine_path: str | Path, sidecar: dict[str, Any], *, check_compatibility: bool = True,
                 cuda_graph: bool = False, device: int | None = None, max_buckets: int = MAX_BUCKETS):
        self.path = Path(engine_path)
        self._closed = True
        trt = self._trt = import_tensorrt()
        cudart = self._cudart = import_cudart()
        if device is not None:
            cuda_check(cudart.cudaSetDevice(device), cudart, "cudaSetDevice")
        self.environment = running_environment(trt, cudart, device)
        if check_compatibility:
            check_engine_compatibility(sidecar, self.environment, self.path)
        self._runtime, self._engine = deserialize_engine(trt, self.path)
        io = read_io(trt, self._engine)
        self._inputs = [t for t in io if t.is_input]
        self._outputs = [t for t in io if not t.is_input]
        self.input_names = tuple(t.name for t in self._inputs)
        self.output_names = tuple(t.name for t in self._outputs)
        self.profiles: list[Profile] = read_profiles(self._engine, list(self.input_names))
        self.max_batch, self.max_seq = limits(
            self.profiles, "input_ids" if "input_ids" in self.input_names else self.input_names[0])
        self._context = self._engine.create_execution_context()
        if self._context is None:
            raise RuntimeError(f"TensorRT could not create an execution context for {self.path} "
                               "(out of GPU memory?)")
        self._stream = cuda_check(cudart.cudaStreamCreate(), cudart, "cudaStreamCreate")
        self._active_profile: int | None = None
        self._buckets: OrderedDict[tuple, _Bucket] = OrderedDict()
        self._max_buckets = max(1, int(max_buckets))
        self._cuda_graph = cuda_graph
        self._lock = threading.Lock()
        self._closed = False

    # ------------------------------------------------------------------ Backend
    def describe(self) -> str:
        env = self.environment
        return (f"TensorRT {env['tensorrt_version']} on {env['gpu_name']} (sm {env['compute_capability']}), "
                f"{len(self.profiles)} profile(s)")

    def infer(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        arrays = {}
        for info in self._inputs:
            value = np.asarray(feeds[info.name])
            if info.dtype == np.int32 and value.dtype == np.int64 and value.size and (
                    value.max() > np.iinfo(np.int32).max or value.min() < np.iinfo(np.int32).min):
                raise ValueError(f"input {info.name} has values outside int32, which the engine takes")
            arrays[info.name] = np.ascontiguousarray(value, dtype=info.dtype)
        shapes = {name: a.shape for name, a in arrays.items()}
        chunks = plan_chunks(self.profiles, shapes)
        pieces = []
        with self._lock:
            if self._closed:
                raise RuntimeError("this runtime was closed")
            for profile, start, stop in chunks:
                part = {n: (a if (start, stop) == (0, a.shape[0]) else np.ascontiguousarray(a[start:stop]))
                        for n, a in arrays.items()}
                pieces.append(self._execute(profile, part))
        if len(pieces) == 1:
            return pieces[0]
        return {name: np.concatenate([p[name] for p in pieces], axis=0) for name in self.output_names}

    def close(self) -> None:
        lock = getattr(self, "_lock", None)
        if lock is None:
            return
        with lock:
            if self._closed:
                return
            self._closed = True
            cudart = self._cudart
            try:
                cuda_check(cudart.cudaStreamSynchronize(self._stream), cudart, "cudaStreamSynchronize")
            finally:
                for bucket in self._buckets.values():
                    self._free_bucket(bucket)
                self._buckets.clear()
                cudart.cudaStreamDestroy(self._stream)
                self._context = None
                self._engine = None
                self._runtime = None

    def __del__(self):  # best effort; explicit close() or `with` is the way
        try:
            self.close()
        except Exception:
            pass

    # ------------------------------------------------------------------ internals
    def _set_shapes(self, shapes: dict[str, tuple[int, ...]]) -> None:
        for name, shape in shapes.items():
            if not self._context.set_input_shape(name, tuple(int(d) for d in shape)):
                raise EngineShapeError(f"TensorRT refused shape {list(shape)} for input {name!r}")

    def _bucket(self, profile: int, shapes: dict[str, tuple[int, ...]]) -> tuple[tuple, _Bucket]:
        prof = self.profiles[profile]
        bucket_shapes = {n: bucket_shape(s, prof.max_shape(n)) for n, s in shapes.items()}
        key = (profile,) + tuple(bucket_shapes[n] for n in self.input_names)
        bucket = self._buckets.get(key)
        if bucket is not None:
            self._buckets.move_to_end(key)
            return key, bucket
        while len(self._buckets) >= self._max_buckets:
            _, old = self._buckets.popitem(last=False)
            self._free_bucket(old)
        # Output sizes at the bucket's (largest) shapes.
        self._set_shapes(bucket_shapes)
        nbytes = {}
        for info in self._inputs:
            nbytes[info.name] = int(np.prod(bucket_shapes[info.name])) * info.dtype.itemsize
        for info in self._outputs:
            shape = tuple(self._context.get_tensor_shape(info.name))
            if any(d < 0 for d in shape):
                raise RuntimeError(f"TensorRT could not infer the shape of output {info.name!r} ({shape})")
            nbytes[info.name] = int(np.prod(shape)) * info.dtype.itemsize
        cudart = self._cudart
        pointers: dict[str, int] = {}
        try:
            for name, size in nbytes.items():
                pointers[name] = cuda_check(cudart.cudaMalloc(max(size, 1)), cudart, f"cudaMalloc({size}) for {name}")
        except Exception:
            self._free_bucket(_Bucket(pointers, nbytes))
            raise
        bucket = _Bucket(pointers, nbytes)
        self._buckets[key] = bucket
        return key, bucket

    def _free_bucket(self, bucket: _Bucket) -> None:
        cudart = self._cudart
        for graph_exec in bucket.graphs.values():
            cudart.cudaGraphExecDestroy(graph_exec)
        bucket.graphs.clear()
        for pointer in bucket.pointers.values():
            cudart.cudaFree(pointer)
        bucket.pointers = {}

    def _execute(self, profile: int, arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        cudart, context, stream = self._cudart, self._context, self._stream
        shapes = {n: a.shape for n, a in arrays.items()}
        if profile != self._active_profile:
            if not context.set_optimization_profile_async(profile, int(stream)):
                raise RuntimeError(f"TensorRT could not switch to optimization profile {profile}")
            self._active_profile = profile
        key, bucket = self._bucket(profile, shapes)
        self._set_shapes(shapes)
        h2d = cudart.cudaMemcpyKind.cudaMemcpyHostToDevice
        d2h = cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost
        for info in self._inputs:
            array = arrays[info.name]
            cuda_check(cudart.cudaMemcpyAsync(bucket.pointers[info.name], array.ctypes.data, array.nbytes, h2d, stream),
                       cudart, f"copying input {info.name} to the GPU")
        results = {}
        for info in self._outputs:
            shape = tuple(int(d) for d in context.get_tensor_shape(info.name))
            results[info.name] = np.empty(shape, dtype=info.dtype)
            if results[info.name].nbytes > bucket.nbytes[info.name]:
                raise RuntimeError(f"output {info.name} needs {results[info.name].nbytes} bytes but its buffer "
                                   f"holds {bucket.nbytes[info.name]}")
        for name, pointer in bucket.pointers.items():
            context.set_tensor_address(name, pointer)
        self._launch(bucket, key + tuple(shapes[n] for n in self.input_names))
        for info in self._outputs:
            host = results[info.name]
            cuda_check(cudart.cudaMemcpyAsync(host.ctypes.data, bucket.pointers[info.name], host.nbytes, d2h, stream),
                       cudart, f"copying output {info.name} from the GPU")
        cuda_check(cudart.cudaStreamSynchronize(stream), cudart, "cudaStreamSynchronize")
        return results

    def _launch(self, bucket: _Bucket, shape_key: tuple) -> None:
        cudart, context, stream = self._cudart, self._context, self._stream
        if not self._cuda_graph:
            if not context.execute_async_v3(int(stream)):
                raise RuntimeError("TensorRT execute_async_v3 failed (see the TensorRT log)")
            return
        graph_exec = bucket.graphs.get(shape_key)
        if graph_exec is None:
            # One plain launch first: TensorRT may allocate or re-plan after a shape change, which
            # must not happen inside a capture.
            if not context.execute_async_v3(int(stream)):
                raise RuntimeError("TensorRT execute_async_v3 failed (see the TensorRT log)")
            capture_mode = cudart.cudaStreamCaptureMode.cudaStreamCaptureModeThreadLocal
            cuda_check(cudart.cudaStreamBeginCapture(stream, capture_mode), cudart, "cudaStreamBeginCapture")
            ok = context.execute_async_v3(int(stream))
            graph = cuda_check(cudart.cudaStreamEndCapture(stream), cudart, "cudaStreamEndCapture")
            if not ok:
                cudart.cudaGraphDestroy(graph)
                raise RuntimeError("TensorRT execute_async_v3 failed while capturing a CUDA graph; "
                                   "pass cuda_graph=False")
            graph_exec = cuda_check(cudart.cudaGraphInstantiate(graph, 0), cudart, "cudaGraphInstantiate")
            cudart.cudaGraphDestroy(graph)
            if len(bucket.graphs) >= MAX_GRAPHS:
                _, old = bucket.graphs.popitem(last=False)
                cudart.cudaGraphExecDestroy(old)
            bucket.graphs[shape_key] = graph_exec
        else:
            bucket.graphs.move_to_end(shape_key)
        cuda_check(cudart.cudaGraphLaunch(graph_exec, stream), cudart, "cudaGraphLaunch")
