"""The machine a build or benchmark ran on: CPU model, cores, ISA flags that decide speed, versions.

A speed ratio is a property of a CPU (int8 and bf16 kernels depend on AVX-512 VNNI, AVX512-BF16 and
AMX), so `build.json` and every benchmark result record this. Standard library only (torch-free).
"""

from __future__ import annotations

import os
import platform
from functools import lru_cache

#: CPU flags that change which kernels ONNX Runtime, OpenVINO and PyTorch pick (Linux names).
ISA_FLAGS = ("avx2", "fma", "avx512f", "avx512bw", "avx512_vnni", "avx_vnni", "avx512_bf16", "avx512_fp16",
             "amx_tile", "amx_int8", "amx_bf16", "amx_fp16")


@lru_cache(maxsize=1)
def _cpuinfo() -> tuple[str, frozenset[str]]:
    """(model name, flags) from /proc/cpuinfo; ("", empty) elsewhere."""
    model, flags = "", frozenset()
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                key, _, value = line.partition(":")
                key = key.strip()
                if key == "model name" and not model:
                    model = value.strip()
                elif key == "flags" and not flags:
                    flags = frozenset(value.split())
                if model and flags:
                    break
    except OSError:
        pass
    return model, flags


def cpu_flags() -> list[str]:
    """The `ISA_FLAGS` this CPU has, in that order."""
    flags = _cpuinfo()[1]
    return [f for f in ISA_FLAGS if f in flags]


#: CPU flags of int8 dot-product instructions (VNNI, AMX): where int8 GEMMs run fast and exact.
INT8_DOT_PRODUCT_FLAGS = ("avx512_vnni", "avx_vnni", "amx_int8")


def has_int8_dot_product() -> bool:
    return any(f in INT8_DOT_PRODUCT_FLAGS for f in cpu_flags())


def cpu_model() -> str:
    return _cpuinfo()[0] or platform.processor() or platform.machine()


def library_versions(modules=("numpy", "torch", "onnx", "onnxruntime", "openvino", "tokenizers")) -> dict[str, str]:
    """Versions of the modules that import (without importing torch when it is not loaded already)."""
    import importlib.metadata as metadata

    versions = {"python": platform.python_version()}
    for module in modules:
        try:
            versions[module] = metadata.version(module)
        except metadata.PackageNotFoundError:
            pass
    return versions


def machine_info(threads: int | None = None) -> dict:
    """CPU model, usable cores, threads used, ISA flags and library versions, for result files."""
    return {"cpu": cpu_model(), "cores": len(os.sched_getaffinity(0)), "threads": threads,
            "isa": cpu_flags(), "versions": library_versions()}


def machine_line(info: dict) -> str:
    """One line for table headers, e.g. "AMD EPYC, 2 cores, 2 threads, avx2 fma; onnxruntime 1.24, ..."."""
    versions = ", ".join(f"{k} {v}" for k, v in info.get("versions", {}).items() if k != "python")
    threads = f", {info['threads']} threads" if info.get("threads") else ""
    isa = " ".join(info.get("isa") or []) or "no AVX2"
    return f"{info['cpu']}, {info['cores']} cores{threads}, ISA: {isa}; {versions}"
