"""Compile an artifact graph with OpenVINO on the CPU: precision, threads, hint, blob cache, diagnosis.

OpenVINO reads `model.onnx` (FP32, FP16 or INT8 Q/DQ) directly. Its CPU plugin picks bf16 by itself
on CPUs that have it, which costs the FP32 graph its 99.9% bar (issue 13: 99.12% on the demo
model), so the inference precision is always set explicitly: "f32" (default), or "bf16" only
where OpenVINO reports the capability.

Compiled blobs are cached with OpenVINO's own `CACHE_DIR`, inside a folder keyed on the OpenVINO
version, the sha256 of the graph files and the inference precision
(`<cache>/<version>-<sha256[:16]>-<precision>`), so a blob of another graph, another OpenVINO or another
precision is never loaded. OpenVINO's own key follows the file path, not only the content, and leaves
the precision out: on an AMX CPU (Intel Xeon, OpenVINO 2026.4) a bf16 load of a blob written at f32
crashed the process in its first inference, so each precision gets its own folder. A read-only
cache folder still serves the blobs it holds; one that cannot be created, or a miss in a read-only
one, compiles without the cache, and `Compiled.cache` says which.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..artifact import external_data_locations, positive_int

#: Inference precisions accepted -> OpenVINO's names; the CPU capability each needs.
INFERENCE_PRECISIONS = {"f32": "f32", "fp32": "f32", "bf16": "bf16"}
NEEDS_CAPABILITY = {"bf16": "BF16"}
PERFORMANCE_HINTS = {"latency": "LATENCY", "throughput": "THROUGHPUT", "cumulative_throughput":
                     "CUMULATIVE_THROUGHPUT"}
DEFAULT_CACHE_FOLDER = "openvino-cache"


class OpenVinoCompileError(ValueError):
    """OpenVINO cannot read or compile the graph; the message names the node and the reason."""


class InferencePrecisionError(ValueError):
    """An inference precision OpenVINO does not know, or this CPU cannot run."""


def import_openvino():
    try:
        import openvino
    except ImportError:
        raise ImportError("OvMegatronBert needs OpenVINO: pip install 'mbert-export[openvino]' "
                          "(or pip install openvino)") from None
    return openvino


def openvino_version() -> str:
    """E.g. "2026.4.1" (None-safe: "" when OpenVINO is not installed)."""
    try:
        import openvino
    except ImportError:
        return ""
    return openvino.__version__.split("-")[0]


def cpu_capabilities(core: Any = None) -> list[str]:
    """OpenVINO's OPTIMIZATION_CAPABILITIES of the CPU, e.g. ['FP32', 'INT8', 'BIN', 'EXPORT_IMPORT', 'BF16']."""
    core = core or import_openvino().Core()
    return list(core.get_property("CPU", "OPTIMIZATION_CAPABILITIES"))


def resolve_inference_precision(requested: str | None, capabilities: list[str]) -> str:
    """'f32' / 'bf16' (None -> 'f32'); a precision this CPU lacks is an error saying what it has."""
    name = INFERENCE_PRECISIONS.get(str(requested or "f32").lower())
    if name is None:
        raise InferencePrecisionError(f"unknown OpenVINO inference precision {requested!r}; choose f32 or bf16")
    needed = NEEDS_CAPABILITY.get(name)
    if needed and needed not in capabilities:
        raise InferencePrecisionError(f"inference precision {name} needs a CPU with {needed} support (AVX512-BF16 "
                                      f"or AMX); this CPU offers {', '.join(capabilities)} to OpenVINO; use f32")
    return name


#: Words of the CPU plugin's errors about a compile setting (unknown key, wrong value).
_OPTION_ERROR = re.compile(r"Unsupported property|for property key|Could not read .* from str")


def graph_sha256(onnx_path: Path) -> str:
    """sha256 over the graph file and every external-data file it names (their names included)."""
    digest = hashlib.sha256()
    external = [onnx_path.parent / name for name in external_data_locations(onnx_path)]
    for path in (onnx_path, *sorted(p for p in external if p.is_file())):
        digest.update(path.name.encode() + b"\0")
        with open(path, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 22), b""):
                digest.update(block)
    return digest.hexdigest()


def _writable(folder: Path) -> str | None:
    """None when `folder` can be created and written, else why not."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".write-test-"):
            pass
    except OSError as exc:
        return f"{folder} is not writable ({exc.strerror or exc})"
    return None


@dataclass
class Compiled:
    """A compiled model and how it was made."""

    model: Any
    inference_precision: str
    cache: str  # "loaded from <dir>[ (read-only)]", "written to <dir>", "off", or "not used: <why>"
    version: str


def diagnose(onnx_path: Path, message: str) -> str:
    """Name the node(s) OpenVINO could not take, from a partial conversion and its error text."""
    problems = []
    try:
        from openvino.frontend import FrontEndManager

        # The manager and the input model must outlive the nodes (attributes read from freed memory).
        manager = FrontEndManager()
        frontend = manager.load_by_framework("onnx")
        source = frontend.load(str(onnx_path))
        partial = frontend.convert_partially(source)
        for op in partial.get_ordered_ops():
            if "FrameworkNode" in op.get_type_name():
                attributes = op.get_attributes()
                kind = ".".join(filter(None, (attributes.get("ONNX_META_domain"), attributes.get("ONNX_META_type"))))
                problems.append(f"node {op.get_friendly_name()!r} ({kind or op.get_type_name()}): "
                                "OpenVINO has no conversion rule for this operator")
    except Exception:  # the diagnosis is best effort; the original message follows anyway
        pass
    for match in re.finditer(r"While validating ONNX node '<Node\((\w+)\): ([^>]*)>'", message):
        block = message[match.end():].split("\n\n")[0].split("Summary:")[0]
        lines = [line.strip(" :") for line in block.splitlines()]
        lines = [line for line in lines if line and not line.startswith(("While validating", "Check '"))]
        problems.append(f"the {match.group(1)} node producing {match.group(2)!r}: "
                        f"{lines[-1] if lines else 'failed validation'}")
    if problems:
        return "; ".join(problems)
    tail = [line for line in message.splitlines() if line.strip() and not line.startswith(("Exception from",
                                                                                             "Check '"))]
    return " / ".join(tail[-3:]) or message


def compile_graph(onnx_path: str | os.PathLike, *, inference_precision: str | None = None, threads: int | None = None,
                  performance_hint: str = "latency", num_streams: int | None = None,
                  cache_dir: str | os.PathLike | bool | None = None, config: dict | None = None) -> Compiled:
    """Compile `onnx_path` for the CPU. cache_dir: None -> `openvino-cache` beside the graph, False -> off."""
    openvino = import_openvino()
    onnx_path = Path(onnx_path)
    core = openvino.Core()
    precision = resolve_inference_precision(inference_precision, cpu_capabilities(core))
    hint = PERFORMANCE_HINTS.get(str(performance_hint).lower())
    if hint is None:
        raise ValueError(f"unknown performance hint {performance_hint!r}; choose {', '.join(PERFORMANCE_HINTS)}")
    options: dict[str, Any] = {"INFERENCE_PRECISION_HINT": precision, "PERFORMANCE_HINT": hint}
    if threads is not None:
        options["INFERENCE_NUM_THREADS"] = positive_int(threads, "threads")
    if num_streams is not None:  # a count, or OpenVINO's own choice
        auto = isinstance(num_streams, str) and num_streams.upper() == "AUTO"
        options["NUM_STREAMS"] = "AUTO" if auto else positive_int(num_streams, "num_streams (or 'auto')")
    if config is not None and not isinstance(config, dict):
        raise TypeError(f"config must be a dict of OpenVINO properties, e.g. {{'PERFORMANCE_HINT': 'LATENCY'}}, "
                        f"got {type(config).__name__}")
    if config and "CACHE_DIR" in config:
        raise ValueError("pass the blob cache folder as cache_dir=..., not config['CACHE_DIR']: the runtime keys it "
                         "by OpenVINO version and graph, so a stale blob is never loaded")
    if not any(cache_dir is v for v in (None, True, False)) and (not isinstance(cache_dir, (str, os.PathLike))
                                                                  or not str(cache_dir)):
        raise TypeError(f"cache_dir must be a folder path, None (default: openvino-cache beside the graph) or False "
                        f"(no cache), got {cache_dir!r}")
    options.update(config or {})

    cache, folder, read_only = "off", None, False
    if cache_dir is not False:
        root = Path(cache_dir) if cache_dir not in (None, True) else onnx_path.parent / DEFAULT_CACHE_FOLDER
        folder = root / f"{openvino_version()}-{graph_sha256(onnx_path)[:16]}-{precision}"
        problem = _writable(folder)
        if problem is None or folder.is_dir():  # a read-only folder still serves the blobs it holds
            options["CACHE_DIR"], read_only = str(folder), problem is not None
        else:
            cache = f"not used: {problem}; compiled without a cache"
    try:
        model, error = core.compile_model(str(onnx_path), "CPU", options), None
    except RuntimeError as exc:
        model, error = None, exc
    if error is not None and "CACHE_DIR" in options:
        del options["CACHE_DIR"]  # a cache OpenVINO failed to use: the graph compiles without it
        try:
            model = core.compile_model(str(onnx_path), "CPU", options)
            cache = f"not used: OpenVINO failed on {folder} ({str(error).strip().splitlines()[-1]})"
            error = None
        except RuntimeError as exc:
            error = exc
    if error is not None:
        if folder is not None:  # leave no empty cache folder behind for a graph that does not compile
            made = [folder] + ([folder.parent] if cache_dir in (None, True) else [])
            for empty in made:
                with contextlib.suppress(OSError):
                    empty.rmdir()  # only removes an empty folder
        if _OPTION_ERROR.search(str(error)):  # the plugin refused a setting, not the graph
            reason = str(error).strip().splitlines()[-1].strip()
            raise ValueError(f"OpenVINO {openvino_version()} refused a compile setting ({reason}); the settings "
                             f"were {options}: fix num_streams/threads/config") from None
        raise OpenVinoCompileError(f"OpenVINO {openvino_version()} cannot compile {onnx_path}: "
                                   f"{diagnose(onnx_path, str(error))}") from None
    if "CACHE_DIR" in options:
        if model.get_property("LOADED_FROM_CACHE"):
            cache = f"loaded from {folder}" + (" (read-only)" if read_only else "")
        elif read_only:
            cache = f"not used: {folder} is read-only and holds no blob for these options; compiled without it"
        else:
            cache = f"written to {folder}"
    got = model.get_property("INFERENCE_PRECISION_HINT")
    got = got.to_string() if hasattr(got, "to_string") else str(got)
    if got != precision:
        raise RuntimeError(f"OpenVINO compiled {onnx_path} at inference precision {got}, not the {precision} asked for")
    return Compiled(model, precision, cache, openvino_version())
