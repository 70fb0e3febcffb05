"""FP32 ONNX export of one task head, with dynamic axes, graph hygiene and built-in verification.

`export_onnx(model, task, output)` traces the reference model, checks and annotates the graph, writes
it atomically (plus one external-data file when the weights exceed the protobuf limit), copies the
tokenizer next to it, runs ONNX Runtime against the reference at shapes unlike the export sample,
and runs the TensorRT readiness check.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import onnx
import torch

from . import __version__
from .check import check_graph
from .checkpoints import CheckpointError
from .config import MegatronBertConfig
from .fileio import EXTERNAL_DATA_THRESHOLD, atomic_path, make_writable_dir, publish_onnx, staging_dir
from .modeling import MODEL_CLASSES, MegatronBertPreTrainedModel
from .reference import model_tokenizer, reference_outputs, write_reference_vectors
from .runtime.artifact import TOKENIZER_FILES, TOKENIZER_MAIN_FILES
from .tasks import BATCH, NUM_CHOICES, SEQUENCE, Task, get_task, sample_inputs  # noqa: F401 (re-exported)

MIN_OPSET = 17  # first opset with a native LayerNormalization (TensorRT keeps its accumulation in FP32)
DEFAULT_OPSET = 18  # the dynamo exporter's own minimum; TensorRT 10/11 parse opsets 9..24
#: The newest opset the exporter's version converter takes these graphs to (torch 2.13, onnxscript 0.7:
#: 26 and up fail converting Gelu); measured by exporting the demo model at 17..26.
MAX_OPSET = 25
VERIFY_TOLERANCE = 1e-4

Progress = Callable[[str], None]


class ExportError(ValueError):
    """Bad export arguments or a graph that fails its checks; the message says what to do."""


@dataclass
class ExportResult:
    """What `export_onnx` wrote and measured."""

    path: Path
    task: str
    opset: int
    external_data: Path | None
    seconds: float
    max_abs_diff: dict[str, float] = field(default_factory=dict)

    def summary(self) -> str:
        worst = max(self.max_abs_diff.values()) if self.max_abs_diff else float("nan")
        extra = f" + {self.external_data.name}" if self.external_data else ""
        return (f"{self.path}{extra}: task {self.task}, opset {self.opset}, {self.seconds:.1f} s, "
                f"max |onnx - torch| = {worst:.2e}")


class _OnnxSignature(torch.nn.Module):
    """Fixes the graph signature: three named inputs in, the task's outputs as a tuple out."""

    def __init__(self, model: MegatronBertPreTrainedModel, task: Task):
        super().__init__()
        self.model, self.output_names = model, task.output_names

    def forward(self, input_ids, attention_mask, token_type_ids):
        outputs = self.model(input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids)
        return tuple(outputs[name] for name in self.output_names)


# ---------------------------------------------------------------------------- inputs
def verification_shapes(max_seq_len: int) -> list[tuple[int, int]]:
    """Shapes unlike the export sample (2 x 16): batch 1 and > 1; sequence 1, mid and maximum."""
    mid = max(2, max_seq_len // 2 + 1)
    return [(1, 1), (3, mid), (2, max_seq_len), (1, max_seq_len)]


# ---------------------------------------------------------------------------- checks of arguments
def _check_arguments(model, task: Task, output: Path, opset: int, max_seq_len: int) -> None:
    config = model.config
    if opset < MIN_OPSET:
        raise ExportError(f"opset {opset} is too old: LayerNormalization needs opset >= {MIN_OPSET} "
                          f"(use --opset {DEFAULT_OPSET})")
    if opset > MAX_OPSET:
        raise ExportError(f"opset {opset} is newer than the exporter can write ({MIN_OPSET}..{MAX_OPSET}; "
                          f"TensorRT parses up to 24); use --opset {DEFAULT_OPSET}")
    if not 1 <= max_seq_len <= config.max_position_embeddings:
        raise ExportError(f"max sequence length {max_seq_len} is outside 1..{config.max_position_embeddings} "
                          "(the model's max_position_embeddings); choose a --max-seq-len in that range")
    if type(model).__name__ != task.model_class:
        raise ExportError(f"task {task.name!r} exports a {task.model_class}, got a {type(model).__name__}")
    if task.is_decoder and not config.is_decoder:
        raise ExportError("causal-lm needs a config with is_decoder=True (load the model for this task "
                          "with load_model_for_task, which sets it)")
    if output.suffix != ".onnx":
        raise ExportError(f"output {output} should end in .onnx")
    if output.is_dir():
        raise ExportError(f"output {output} is a folder; name the graph file to write, e.g. {output / 'model.onnx'}")
    try:
        make_writable_dir(output.parent, "--output")
    except PermissionError as exc:
        raise ExportError(str(exc)) from None


def load_model_for_task(checkpoint: str | Path, task: str | Task, allow_random_head: bool = False,
                        progress: Progress | None = None) -> MegatronBertPreTrainedModel:
    """The reference model of `task` from a Hugging Face folder (or a Megatron-LM checkpoint).

    A Megatron-LM source (zip, .pt, or a folder without config.json) is converted into a temporary
    Hugging Face folder first.
    """
    task = get_task(task) if isinstance(task, str) else task
    path = Path(checkpoint)
    if not path.exists():
        raise CheckpointError(f"checkpoint {path} does not exist")
    model_class = MODEL_CLASSES[task.model_class]
    overrides = {"is_decoder": True} if task.is_decoder else {}
    if path.is_dir() and (path / "config.json").exists():
        return model_class.from_pretrained(path, allow_random_head=allow_random_head, **overrides)
    import tempfile

    from .checkpoints import convert_megatron

    with tempfile.TemporaryDirectory(prefix="mbert-convert-") as tmp:
        hf_folder = convert_megatron(path, Path(tmp) / "hf", progress=progress)
        return model_class.from_pretrained(hf_folder, allow_random_head=allow_random_head, **overrides)


# ---------------------------------------------------------------------------- export
def graph_metadata(model: MegatronBertPreTrainedModel, task: Task, source: str | None,
                   max_seq_len: int) -> dict[str, str]:
    """metadata_props: everything a runtime needs to serve the graph without the checkpoint."""
    return {
        "mbert_export.task": task.name,
        "mbert_export.precision": "fp32",
        "mbert_export.config": model.config.to_json_string(),
        "mbert_export.id2label": json.dumps({str(k): v for k, v in model.config.id2label.items()}),
        "mbert_export.real_vocab_size": str(model.config.real_vocab_size),
        "mbert_export.max_seq_len": str(max_seq_len),
        "mbert_export.version": __version__,
        "mbert_export.exporter": f"torch.onnx dynamo (torch {torch.__version__})",
        "mbert_export.onnx_version": onnx.__version__,
        "mbert_export.source": source or "",
    }


def _dynamic_shapes(task: Task, max_seq_len: int) -> dict[str, dict[int, "torch.export.Dim"]]:
    """torch.export Dims named like the task table's axes (the names reach the ONNX graph)."""
    limits = {BATCH: 1 << 16, NUM_CHOICES: 64, SEQUENCE: max_seq_len}
    dims = {name: torch.export.Dim(name, min=1, max=limits[name]) for name in set(task.input_axes.values())}
    return {name: {axis: dims[axis_name] for axis, axis_name in task.input_axes.items()} for name in task.inputs}


@contextlib.contextmanager
def heartbeat(say: Progress, what: str, every: float = 15.0):
    """Print `what ... N s` every `every` seconds while a long single call (trace, write) runs."""
    import threading

    done = threading.Event()
    start = time.perf_counter()

    def beat():
        while not done.wait(every):
            say(f"export: {what} ... {time.perf_counter() - start:.0f} s")

    thread = threading.Thread(target=beat, daemon=True)
    thread.start()
    try:
        yield
    finally:
        done.set()
        thread.join()


@contextlib.contextmanager
def _quiet(logger: logging.Logger):
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def _trace(model: MegatronBertPreTrainedModel, task: Task, path: Path, opset: int, max_seq_len: int,
           metadata: dict[str, str], external_data: bool) -> None:
    """torch.onnx.export(dynamo=True) -> `path` (plus `<name>.data` when `external_data`).

    Chosen over the TorchScript exporter by measurement (benchmarks/exporter_choice.py, README
    "Exporter choice"): on the 345M preset the dynamo exporter peaks at 1.35x the weight bytes
    (TorchScript: 4.6x, so a 1.3B model would not export on a 24 GiB machine), writes 919 nodes
    instead of 2540, and is as exact (6e-6). It references the torch tensors without copying them
    and streams them into one external-data file. Its optimizer does the constant folding.
    """
    # The sample must have every dynamic axis >= 2, or torch.export specialises it to a constant.
    sample = sample_inputs(model.config, task, 2, min(16, max_seq_len) if max_seq_len >= 2 else 2)
    args = tuple(torch.from_numpy(sample[name]) for name in task.inputs)
    # The exporter's notes (axis renaming, deprecations, "torchvision is not installed") are noise here.
    registration_log = logging.getLogger("torch.onnx._internal.exporter._registration")
    with torch.no_grad(), warnings.catch_warnings(), _quiet(registration_log):
        warnings.simplefilter("ignore")
        program = torch.onnx.export(
            _OnnxSignature(model, task).eval(), args, None, dynamo=True, opset_version=opset,
            input_names=list(task.inputs), output_names=list(task.output_names),
            dynamic_shapes=_dynamic_shapes(task, max(2, max_seq_len)), optimize=True, verbose=False)
    program.model.metadata_props.update(metadata)
    program.model.producer_name, program.model.producer_version = "mbert-export", __version__
    program.save(str(path), external_data=external_data)


def copy_tokenizer(source: Path | None, folder: Path, progress: Progress | None = None) -> list[str]:
    """Copy the tokenizer files of a model folder next to the graph (atomically, file by file).

    With none to copy, `progress` hears what the artifact then cannot do (take text, be served)."""
    copied = []
    if source is not None and source.is_dir():
        for name in TOKENIZER_FILES:
            if (source / name).is_file() and (source / name).resolve() != (folder / name).resolve():
                with atomic_path(folder / name) as tmp:
                    shutil.copyfile(source / name, tmp)
                copied.append(name)
    if progress and not any((folder / name).is_file() for name in TOKENIZER_MAIN_FILES):
        if source is None:
            fix = "pass tokenizer_dir=<folder with vocab.txt>"
        elif source.is_dir():
            fix = f"put the tokenizer's vocab.txt in {source}"
        else:  # a Megatron-LM file: its converted folder carries the vocab
            fix = "convert the checkpoint with `mbert-export convert SRC DST --vocab vocab.txt`, use DST,"
        progress(f"note: no tokenizer files (vocab.txt or tokenizer.json) in {source or 'the export'}, so the "
                 "artifact runs on token ids (run(), verify) but not on text (fill_mask(), ...), and `mbert-export "
                 f"triton` cannot serve it; {fix} and run this again")
    return copied


def export_onnx(model: MegatronBertPreTrainedModel, task: str | Task, output: str | Path, *,
                opset: int = DEFAULT_OPSET, max_seq_len: int | None = None, verify: bool = True,
                tokenizer_dir: str | Path | None = None, source: str | None = None,
                external_data_threshold: int = EXTERNAL_DATA_THRESHOLD,
                progress: Progress | None = None) -> ExportResult:
    """Export `model` as the FP32 ONNX graph of `task` at `output` (a .onnx path).

    The graph is staged in a temp folder beside `output`, checked (onnx full check, TensorRT
    readiness) and verified against the reference, and only then renamed into place.
    """
    say = progress or (lambda message: None)
    task = get_task(task) if isinstance(task, str) else task
    output = Path(output)
    max_seq_len = model.config.max_position_embeddings if max_seq_len is None else max_seq_len
    # The tokenizer is read and checked before any work (or folder), so a bad one fails here, named by
    # its own path, and not after the graph is published.
    tokenizer_folder = Path(tokenizer_dir) if tokenizer_dir else None
    tokenizer = model_tokenizer(None, model.config, tokenizer_folder)  # None without tokenizer files
    _check_arguments(model, task, output, opset, max_seq_len)
    model.eval()
    start = time.perf_counter()
    weight_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    say(f"export: tracing {task.model_class} ({weight_bytes / 1e6:.0f} MB of weights), opset {opset}")
    stage = staging_dir(output.parent)
    try:
        staged = stage / output.name
        with heartbeat(say, "tracing and writing the graph"):
            _trace(model, task, staged, opset, max_seq_len, graph_metadata(model, task, source, max_seq_len),
                   external_data=weight_bytes > external_data_threshold)
        say(f"export: traced and written in {time.perf_counter() - start:.1f} s; checking the graph")
        onnx.checker.check_model(str(staged), full_check=True)
        problems = check_graph(staged)
        if problems:
            raise ExportError("the exported graph is not TensorRT-ready:\n  " + "\n  ".join(problems))
        max_abs_diff = {}
        if verify:
            say("export: verifying against the reference on ONNX Runtime")
            with heartbeat(say, "verifying"):
                max_abs_diff = verify_against_reference(model, task, staged, max_seq_len)
        external = publish_onnx(staged, output)
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    copy_tokenizer(tokenizer_folder, output.parent, say)
    # Reference vectors: a few real inputs and the PyTorch outputs, so that the deployed artifact can
    # prove itself without torch (runtime.verify / mbert-export verify).
    write_reference_vectors(model, task, output.parent, tokenizer=tokenizer, max_seq_len=max_seq_len)
    result = ExportResult(output, task.name, opset, external, time.perf_counter() - start, max_abs_diff)
    say(f"export: done in {result.seconds:.1f} s")  # the caller reports result.summary()
    return result


# ---------------------------------------------------------------------------- verification
def verify_against_reference(model: MegatronBertPreTrainedModel, task: Task, path: Path,
                             max_seq_len: int, tolerance: float = VERIFY_TOLERANCE) -> dict[str, float]:
    """Run the graph on ONNX Runtime CPU and the reference on the same inputs; fail above `tolerance`."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    worst: dict[str, float] = {name: 0.0 for name in task.output_names}
    for seed, (batch, seq) in enumerate(verification_shapes(max_seq_len)):
        feeds = sample_inputs(model.config, task, batch, seq, seed=seed + 1)
        expected = reference_outputs(model, task, feeds)
        got = dict(zip(task.output_names, session.run(list(task.output_names), feeds)))
        for name in task.output_names:
            diff = float(np.abs(got[name] - expected[name]).max())
            worst[name] = max(worst[name], diff)
            if not diff <= tolerance:
                raise ExportError(f"{path}: output {name!r} differs from the reference by {diff:.2e} "
                                  f"(> {tolerance:.0e}) at batch {batch}, sequence {seq}")
    return worst
