"""Benchmarks: every backend in one run, interleaved, so every ratio in the table comes from one run.

`mbert-export bench` / `scripts/bench.py`. Backends: the PyTorch reference (eager FP32, and BF16
autocast), ONNX Runtime on the FP32 / FP16 / INT8 Q/DQ graphs (the ones TensorRT builds) and on a
CPU-only dynamic-INT8 graph (MatMulInteger; ONNX Runtime CPU's fast integer path), and TensorRT
engines when TensorRT and a GPU are present. Each shape: warm-up, then `repeats` rounds in which
every backend runs once (interleaved), with a fixed thread count. Writes
`benchmarks/results/<name>.json`, `.md` and `.png`; prints progress and the table.

OpenVINO (CPU) runs the FP32 graph at f32 (`ov-f32`) and bf16 (`ov-bf16`, CPUs with AVX512-BF16/AMX
only) and the INT8 Q/DQ graph (`ov-int8` at f32 outside its int8 layers, `ov-int8-bf16` at bf16). Every result file and table names the machine (CPU
model, cores, threads, the ISA flags that decide int8/bf16 speed, library versions): ratios differ
between CPUs.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import re
import shutil
import statistics
import sys
import time
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np

from .build import DEFAULT_CHECKPOINT, REPO_ROOT

Progress = Callable[[str], None]
RESULTS_DIR = REPO_ROOT / "benchmarks" / "results"
ARTIFACTS_DIR = REPO_ROOT / "benchmarks" / "artifacts"
ALL_BACKENDS = ("pytorch-fp32", "pytorch-bf16", "ort-fp32", "ort-fp16", "ort-int8-qdq", "ort-int8-dynamic",
                "ov-f32", "ov-bf16", "ov-int8", "ov-int8-bf16", "trt-fp16", "trt-int8")
#: OpenVINO backends -> (the ONNX Runtime backend whose graph they run, inference precision).
OPENVINO_BACKENDS = {"ov-f32": ("ort-fp32", "f32"), "ov-bf16": ("ort-fp32", "bf16"), "ov-int8": ("ort-int8-qdq", "f32"),
                     "ov-int8-bf16": ("ort-int8-qdq", "bf16")}
REFERENCE = "pytorch-fp32"
#: Untimed pause before each timed call: the previous backend's threads spin-wait for a while
#: after its call (OpenMP in torch, ONNX Runtime's pool) and would take cores from the next one;
#: measured at 345M x 1 x 128, an ONNX Runtime call right after a PyTorch call took 98 ms, 90 ms
#: after a 50 ms pause (as after another ONNX Runtime call).
PAUSE_S = 0.05
#: Inputs of this many tokens or more run with ONNX Runtime arena shrinkage (see make_runners).
SHRINK_ARENA_TOKENS = 8192
#: Timed rounds every shape runs even when they take longer than --budget (a median needs a few).
MIN_ROUNDS = 3
#: Beside a model's graphs under ARTIFACTS_DIR: what they were built from (see prepare_graphs).
SOURCE_FILE = "source.json"


def _percentile(values: Sequence[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q))


def check_model(model: str) -> None:
    """Refuse a --model that is neither 'demo', a preset nor an existing folder (before any work)."""
    from .config import PRESETS

    if model != "demo" and model not in PRESETS and not Path(model).is_dir():
        raise ValueError(f"--model {model!r} is neither 'demo', a preset ({', '.join(PRESETS)}) nor an existing "
                         "Hugging Face folder")


def load_model(model: str, progress: Progress):
    """'demo' (the trained demo model), a preset name (random weights: speed only), or a folder."""
    import torch

    from .config import PRESETS, preset_config
    from .modeling import MegatronBertForMaskedLM

    check_model(model)
    if model == "demo":
        return MegatronBertForMaskedLM.from_pretrained(DEFAULT_CHECKPOINT), DEFAULT_CHECKPOINT
    if model in PRESETS:
        torch.manual_seed(0)
        progress(f"bench: {model} with random weights (speed only)")
        return MegatronBertForMaskedLM(preset_config(model)).eval(), None
    return MegatronBertForMaskedLM.from_pretrained(model), Path(model)


def check_name(name: str, option: str = "--name") -> str:
    """A result name: a plain file name, so its files stay in RESULTS_DIR (every script's --name)."""
    if not name.strip() or Path(name).name != name or name in (".", "..") or "\\" in name:
        raise ValueError(f"{option} {name!r} must be a plain file name (the results go to {RESULTS_DIR})")
    return name


def check_results_writable(name: str, option: str = "--name", suffixes: Sequence[str] = (".json", ".md", ".png")) -> Path:
    """Before any measuring: `name` is a plain file name, RESULTS_DIR is writable and no NAME.json/.md/.png
    is a folder. Returns RESULTS_DIR / name (the base of the result files)."""
    from .fileio import make_writable_dir

    check_name(name, option)
    make_writable_dir(RESULTS_DIR, "results folder (benchmarks/results)")
    base = RESULTS_DIR / name
    for suffix in suffixes:
        path = base.with_name(name + suffix)
        if path.is_dir():
            raise FileExistsError(f"{path} is a folder, so the results cannot be written there; remove it or "
                                  f"choose another {option}")
    return base


def model_label(model: str) -> str:
    """'demo' or a preset name as it is; for a checkpoint folder its folder name, made file-name safe."""
    from .config import PRESETS

    if model == "demo" or model in PRESETS:
        return model
    return re.sub(r"[^A-Za-z0-9._-]+", "-", Path(model).resolve().name).strip(".-") or "model"


def parse_ints(text: str, option: str) -> list[int]:
    """'1,8,32' -> [1, 8, 32]; a ValueError naming `option` otherwise."""
    try:
        return [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise ValueError(f"{option} {text!r}: expected comma-separated integers such as 1,8,32") from None


def parse_shapes(text: str, option: str = "--shapes") -> list[tuple[int, int]]:
    """'1x128,8x128' -> [(1, 128), (8, 128)]; a ValueError naming `option` otherwise."""
    try:
        shapes = [tuple(int(v) for v in item.lower().split("x")) for item in text.split(",") if item.strip()]
    except ValueError:
        raise ValueError(f"{option} {text!r}: expected BATCHxSEQ items such as 1x128,8x128") from None
    if not shapes or any(len(shape) != 2 or min(shape) < 1 for shape in shapes):
        raise ValueError(f"{option} {text!r}: expected positive BATCHxSEQ items such as 1x128,8x128")
    return shapes  # type: ignore[return-value]


def clip_shapes(shapes: Sequence[tuple[int, int]], max_pos: int, say: Progress, prefix: str = "bench") -> list:
    """Sequence lengths above the model's positions are timed at `max_pos` (said once); duplicates dropped."""
    longer = sorted({seq for _, seq in shapes if seq > max_pos})
    if longer:
        say(f"{prefix}: sequence lengths {longer} exceed the model's {max_pos} positions; timed at {max_pos} instead")
    return list(dict.fromkeys((batch, min(seq, max_pos)) for batch, seq in shapes))


def check_arguments(backends: Sequence[str], batches: Sequence[int], seqs: Sequence[int],
                    shapes: Sequence[tuple[int, int]] | None, threads: int, warmup: int, repeats: int,
                    budget_s: float, name: str | None) -> list[str]:
    """Refuse what would crash or measure nothing, before any work; returns the backends to run, with the
    PyTorch FP32 reference every ratio is measured against first."""
    unknown = [b for b in backends if b not in ALL_BACKENDS]
    if unknown or not backends:
        raise ValueError(f"unknown or no backends {unknown or list(backends)}; choose from {', '.join(ALL_BACKENDS)}")
    sizes = list(batches) + list(seqs) + [n for shape in shapes or () for n in shape]
    if not sizes or min(sizes) < 1:
        raise ValueError("batch sizes and sequence lengths must be positive integers")
    for value, low, option in ((threads, 1, "--threads"), (warmup, 0, "--warmup"), (repeats, 1, "--repeats")):
        if value < low:
            raise ValueError(f"{option} must be >= {low}, got {value}")
    if not budget_s > 0:
        raise ValueError(f"--budget must be a positive number of seconds, got {budget_s}")
    if name is not None:
        check_name(name)
    return [REFERENCE] + [b for b in dict.fromkeys(backends) if b != REFERENCE]


def artifact_folder(model: str, checkpoint: Path | None) -> Path:
    """Where a model's graphs are cached: always inside ARTIFACTS_DIR. 'demo' and presets by name; a
    checkpoint folder by its name and a hash of its resolved path (two folders of one name differ)."""
    if checkpoint is None or model == "demo":
        return ARTIFACTS_DIR / model_label(model)
    digest = hashlib.sha256(str(Path(checkpoint).resolve()).encode()).hexdigest()[:10]
    return ARTIFACTS_DIR / f"{model_label(model)}-{digest}"


def weights_source(model, checkpoint: Path | None) -> dict:
    """What a model's graphs are built from, so that graphs built from anything else are rebuilt: the
    config; the checkpoint's files (size, mtime) or, for a preset's random weights (which follow torch's
    generator and the model code), a sha256 of the weights; the INT8 recipe; the exporting libraries."""
    import onnx
    import onnxruntime
    import torch

    from .build import DEFAULT_CALIBRATION_METHOD, DEFAULT_INT8_KEEP_FLOAT, DEFAULT_INT8_RESCORE

    files, weights = {}, None
    if checkpoint is not None:
        for path in sorted(Path(checkpoint).iterdir()):
            if path.is_file() and path.suffix != ".md":
                stat = path.stat()
                files[path.name] = [stat.st_size, stat.st_mtime_ns]
    else:
        digest = hashlib.sha256()
        for tensor in model.state_dict().values():
            digest.update(memoryview(tensor.detach().contiguous().numpy()).cast("B"))
        weights = digest.hexdigest()
    recipe = {"calibration": DEFAULT_CALIBRATION_METHOD, "keep_float": list(DEFAULT_INT8_KEEP_FLOAT),
              "rescore": list(DEFAULT_INT8_RESCORE)}
    versions = {"torch": torch.__version__, "onnx": onnx.__version__, "onnxruntime": onnxruntime.__version__}
    return json.loads(json.dumps({"checkpoint": str(Path(checkpoint).resolve()) if checkpoint else None,
                                  "config": model.config.to_dict(), "files": files, "weights_sha256": weights,
                                  "int8_recipe": recipe, "versions": versions}, default=str))


def prepare_graphs(model, name: str, checkpoint: Path | None, backends: Sequence[str], progress: Progress) -> dict:
    """FP32 / FP16 / INT8 graphs for the ONNX Runtime backends, cached under benchmarks/artifacts/ (see
    artifact_folder) and rebuilt when the weights they came from changed (see weights_source)."""
    from .build import DEFAULT_CALIBRATION_METHOD, DEFAULT_INT8_KEEP_FLOAT, DEFAULT_INT8_RESCORE
    from .export import export_onnx, sample_inputs
    from .fileio import atomic_write_text
    from .precision import convert_fp16, quantize_int8, quantize_int8_dynamic
    from .tasks import get_task

    folder = artifact_folder(name, checkpoint)
    graphs = {"ort-fp32": folder / "fp32" / "model.onnx", "ort-fp16": folder / "fp16" / "model.onnx",
              "ort-int8-qdq": folder / "int8-qdq" / "model.onnx",
              "ort-int8-dynamic": folder / "int8-dynamic" / "model.onnx"}
    wanted = {b for b in backends if b.startswith("ort-")} | {OPENVINO_BACKENDS[b][0] for b in backends
                                                              if b in OPENVINO_BACKENDS}
    if not wanted:
        return {}
    source, record = weights_source(model, checkpoint), folder / SOURCE_FILE
    try:
        stored = json.loads(record.read_text())
    except (OSError, ValueError):
        stored = None
    cached = sorted(k for k in wanted if graphs[k].exists())
    if stored != source:
        if folder.exists() and any(folder.iterdir()):
            progress(f"bench: the graphs in {folder} were not built from these weights"
                     f"{' (or their record is missing)' if stored is None else ''}; rebuilding them")
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True, exist_ok=True)
        atomic_write_text(record, json.dumps(source, indent=1) + "\n")
    elif cached:
        progress(f"bench: reusing the {', '.join(cached)} graph(s) in {folder} (built from the same weights; "
                 "delete the folder to rebuild)")
    if not graphs["ort-fp32"].exists():
        export_onnx(model, "mlm", graphs["ort-fp32"], verify=False, tokenizer_dir=checkpoint, progress=progress)
    if "ort-fp16" in wanted and not graphs["ort-fp16"].exists():
        convert_fp16(graphs["ort-fp32"], graphs["ort-fp16"], progress=progress)
    # Both INT8 graphs follow the build's recipe (same keep-float list, same calibration method).
    if "ort-int8-qdq" in wanted and not graphs["ort-int8-qdq"].exists():
        # Calibration lengths the model's position table holds (a tiny preset has 64 positions).
        lengths = [n for n in (32, 64, 128, 256) if n <= model.config.max_position_embeddings] or [16]
        if checkpoint is not None:
            from . import calibration
            from .tokenization import Tokenizer

            batches = calibration.calibration_batches(Tokenizer.from_pretrained(checkpoint), num_samples=128,
                                                      seq_lengths=lengths)
        else:
            batches = [sample_inputs(model.config, get_task("mlm"), 8, n, seed=i)
                       for i, n in enumerate(lengths * (16 // len(lengths)))]
        quantize_int8(graphs["ort-fp32"], graphs["ort-int8-qdq"], batches, method=DEFAULT_CALIBRATION_METHOD,
                      keep_float=DEFAULT_INT8_KEEP_FLOAT, strict=False, progress=progress)
    if "ort-int8-dynamic" in wanted and not graphs["ort-int8-dynamic"].exists():
        quantize_int8_dynamic(graphs["ort-fp32"], graphs["ort-int8-dynamic"], keep_float=DEFAULT_INT8_KEEP_FLOAT,
                              rescore=DEFAULT_INT8_RESCORE, strict=False, progress=progress)
    return {k: v for k, v in graphs.items() if k in wanted}


def make_runners(model, graphs: dict, backends: Sequence[str], threads: int, progress: Progress) -> dict:
    """Backend name -> callable(feeds) -> logits (numpy). Unavailable backends are skipped with a note."""
    import onnxruntime as ort
    import torch

    torch.set_num_threads(threads)
    runners: dict[str, Callable] = {}
    # Each session's memory arena would keep its peak (several GB per backend at 345M x 32 x 384,
    # more than 24 GB for all of them): on big inputs, shrink it back after every call. Not on small
    # ones: re-faulting the freed pages made an INT8 call at 345M x 1 x 128 ~13% slower.
    shrink = ort.RunOptions()
    shrink.add_run_config_entry("memory.enable_memory_arena_shrinkage", "cpu:0")

    def run_options(feeds):
        return shrink if feeds["input_ids"].size >= SHRINK_ARENA_TOKENS else None

    def torch_runner(bf16: bool):
        def run(feeds):
            tensors = {k: torch.from_numpy(v) for k, v in feeds.items()}
            with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                return model(**tensors)["logits"].float().numpy()
        return run

    for backend in backends:
        if backend == "pytorch-fp32":
            runners[backend] = torch_runner(False)
        elif backend == "pytorch-bf16":
            runners[backend] = torch_runner(True)
        elif backend in OPENVINO_BACKENDS:
            runner = _openvino_runner(graphs[OPENVINO_BACKENDS[backend][0]], OPENVINO_BACKENDS[backend][1], threads,
                                      backend, progress)
            if runner is not None:
                runners[backend] = runner
        elif backend in graphs:
            options = ort.SessionOptions()
            options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
            session = ort.InferenceSession(str(graphs[backend]), options, providers=["CPUExecutionProvider"])
            runners[backend] = lambda feeds, s=session: s.run(["logits"], feeds, run_options(feeds))[0]
        elif backend.startswith("trt-"):
            engine = ARTIFACTS_DIR / "engines" / backend
            if not (engine / "engine.plan").exists():
                progress(f"bench: {backend} skipped (no engine at {engine}; build one with "
                         f"scripts/build_engine.py --output-dir {engine} on a GPU machine)")
                continue
            from .runtime import TRTMegatronBert

            runtime = TRTMegatronBert(engine)
            runners[backend] = lambda feeds, r=runtime: r.run(feeds)["logits"]
    return runners


def _openvino_runner(graph: Path, precision: str, threads: int, name: str, progress: Progress):
    """callable(feeds) -> logits on OpenVINO, or None (with a note) when OpenVINO or the precision is missing."""
    from .runtime.openvino import OpenVinoBackend

    try:
        backend = OpenVinoBackend(graph, inference_precision=precision, threads=threads)
    except (ImportError, ValueError) as exc:
        progress(f"bench: {name} skipped ({exc})")
        return None
    progress(f"bench: {name} = {backend.describe()}")
    return lambda feeds: backend.infer(feeds)["logits"]


def bench_shape(runners: dict, feeds: dict, warmup: int, repeats: int, budget_s: float,
                progress: Progress) -> dict:
    """Interleaved timing of every runner on one input; top-1 agreement with the reference."""
    # Predictions only: the logits of six backends at 345M x 32 x 384 (1.4 GB each) ran out of RAM.
    # With warmup 0 they come from the first timed round (taken after its timing).
    outputs = {}
    for name, run in runners.items():
        for _ in range(warmup):
            outputs[name] = run(feeds).argmax(-1)
    times: dict[str, list[float]] = {name: [] for name in runners}
    start = time.perf_counter()
    for round_index in range(repeats):
        for name, run in runners.items():
            time.sleep(PAUSE_S)
            t0 = time.perf_counter()
            logits = run(feeds)
            times[name].append(time.perf_counter() - t0)
            if name not in outputs:
                outputs[name] = logits.argmax(-1)
            del logits
        elapsed = time.perf_counter() - start
        if elapsed > budget_s and round_index + 1 >= MIN_ROUNDS and round_index + 1 < repeats:
            minimum = f" (at least {MIN_ROUNDS} rounds always run)" if round_index + 1 == MIN_ROUNDS else ""
            progress(f"bench:   time budget of {budget_s:g} s reached after {round_index + 1} rounds, "
                     f"{elapsed:.1f} s{minimum}")
            break
    reference = outputs.get(REFERENCE)
    rows = {}
    batch = feeds["input_ids"].shape[0]
    for name, values in times.items():
        median = statistics.median(values)
        row = {"median_ms": median * 1e3, "p90_ms": _percentile(values, 90) * 1e3,
               "p99_ms": _percentile(values, 99) * 1e3, "sequences_per_s": batch / median, "rounds": len(values)}
        if reference is not None:
            row["top1_agreement"] = float((outputs[name] == reference).mean())
        rows[name] = row
    if REFERENCE in rows:
        for row in rows.values():
            row["speedup_vs_pytorch_fp32"] = rows[REFERENCE]["median_ms"] / row["median_ms"]
    return rows


def held_out_agreement(runners: dict, checkpoint: Path, real_vocab_size: int, max_seq: int,
                       progress: Progress) -> dict:
    """Top-1 agreement of every backend with PyTorch FP32 at masked positions of held-out text (the
    precision bars' measure), and MLM accuracy. Only for checkpoints with a tokenizer (trained weights)."""
    from . import calibration
    from .tokenization import Tokenizer

    examples = calibration.masked_lm_examples(Tokenizer.from_pretrained(checkpoint), num_samples=256,
                                              seq_len=min(128, max_seq), real_vocab_size=real_vocab_size)
    progress(f"bench: agreement on {len(examples)} batches of masked held-out text")
    predictions = {name: [] for name in runners}
    for batch in examples:
        feeds = {k: batch[k] for k in ("input_ids", "attention_mask", "token_type_ids")}
        for name, run in runners.items():
            predictions[name].append(run(feeds)[..., :real_vocab_size].argmax(-1))
    masks = [batch["labels"] != -100 for batch in examples]
    labels = np.concatenate([batch["labels"][m] for batch, m in zip(examples, masks)])
    picked = {name: np.concatenate([p[m] for p, m in zip(preds, masks)]) for name, preds in predictions.items()}
    rows = {name: {"mlm_accuracy": float((p == labels).mean()), "positions": int(labels.size)}
            for name, p in picked.items()}
    if REFERENCE in picked:
        for name, p in picked.items():
            rows[name]["top1_agreement"] = float((p == picked[REFERENCE]).mean())
    return rows


def run_benchmark(model_name: str = "demo", *, backends: Sequence[str] = ALL_BACKENDS,
                  batches: Sequence[int] = (1, 8, 32), seqs: Sequence[int] = (128, 384),
                  shapes: Sequence[tuple[int, int]] | None = None, threads: int = 2,
                  warmup: int = 2, repeats: int = 20, budget_s: float = 60.0, name: str | None = None,
                  progress: Progress | None = None) -> dict:
    """Benchmark every backend on every (batch, sequence) shape (`shapes`, else batches x seqs) and write
    the result files."""
    import torch

    from .machine import machine_info, machine_line

    say = progress or (lambda message: None)
    wanted = check_arguments(backends, batches, seqs, shapes, threads, warmup, repeats, budget_s, name)
    check_model(model_name)
    if name is None:
        name = f"bench-{model_label(model_name)}"
        check_name(name, "the result name derived from --model (pass --name)")
    check_results_writable(name)
    if REFERENCE not in backends:
        say(f"bench: adding {REFERENCE}, the reference every speedup and agreement is measured against")
    backends = wanted
    model, checkpoint = load_model(model_name, say)
    max_pos = model.config.max_position_embeddings
    shapes = clip_shapes(shapes or [(batch, seq) for batch in batches for seq in seqs], max_pos, say)
    report = {"name": name, "model": model_name, "threads": threads, "warmup": warmup, "repeats": repeats,
              "machine": {**machine_info(threads), "cpu_capability": torch.backends.cpu.get_cpu_capability()},
              "complete": False, "results": [], "held_out_agreement": None}
    with stop_on_interrupt(name, report, len(shapes)):
        graphs = prepare_graphs(model, model_name, checkpoint, backends, say)
        runners = make_runners(model, graphs, backends, threads, say)
        say(f"bench: {machine_line(report['machine'])}")
        time_shapes(runners, shapes, model.config.real_vocab_size, report, lambda r: write_report(r, say, quiet=True),
                    warmup, repeats, budget_s, say)
        if checkpoint is not None and ((checkpoint / "vocab.txt").exists() or
                                       (checkpoint / "tokenizer.json").exists()):
            report["held_out_agreement"] = held_out_agreement(runners, checkpoint, model.config.real_vocab_size,
                                                              max_pos, say)
    report["complete"] = True
    write_report(report, say)
    return report


def time_shapes(runners: dict, shapes: Sequence[tuple[int, int]], vocab_size: int, report: dict,
                save: Callable[[dict], object], warmup: int, repeats: int, budget_s: float, say: Progress,
                prefix: str = "bench") -> None:
    """bench_shape on random ids of every shape in turn, each appended to report["results"] and saved
    with `save(report)` (the report is still "complete": False: partial results survive an interrupted run)."""
    rng = np.random.default_rng(0)
    for index, (batch, seq) in enumerate(shapes, 1):
        say(f"{prefix}: batch {batch} x seq {seq} ({len(runners)} rows, interleaved; shape {index} of {len(shapes)})")
        ids = rng.integers(5, vocab_size, size=(batch, seq), dtype=np.int64)
        feeds = {"input_ids": ids, "attention_mask": np.ones_like(ids), "token_type_ids": np.zeros_like(ids)}
        rows = bench_shape(runners, feeds, warmup, repeats, budget_s, say)
        report["results"].append({"batch": batch, "sequence": seq, "backends": rows})
        save(report)


@contextlib.contextmanager
def stop_on_interrupt(name: str, report: dict, shapes: int) -> Iterator[None]:
    """Ctrl-C inside the block says what was saved (one line on stderr), then goes on as KeyboardInterrupt
    (the command line ends with status 130, no traceback; callers' own handlers still see it)."""
    try:
        yield
    except KeyboardInterrupt:
        done = len(report["results"])
        saved = (f"{done} of {shapes} shapes are saved in {RESULTS_DIR / name}.json and .md, marked partial "
                 '("complete": false)') if done else "nothing was saved"
        print(f"interrupted: {saved}", file=sys.stderr, flush=True)
        raise


def markdown_table(report: dict) -> str:
    from .machine import machine_line

    lines = [f"Model `{report['model']}` on {machine_line(report['machine'])} (torch CPU capability "
             f"{report['machine'].get('cpu_capability')}); speedup = PyTorch eager FP32 median / backend median, "
             "measured in the same interleaved run.", "",
             "| batch x seq | backend | median ms | p90 ms | p99 ms | seq/s | speedup | top-1 vs PyTorch FP32, all positions |",
             "|---|---|---|---|---|---|---|---|"]
    for shape in report["results"]:
        for backend, row in shape["backends"].items():
            lines.append(f"| {shape['batch']} x {shape['sequence']} | {backend} | {row['median_ms']:.1f} | "
                         f"{row['p90_ms']:.1f} | {row['p99_ms']:.1f} | {row['sequences_per_s']:.1f} | "
                         f"{row.get('speedup_vs_pytorch_fp32', float('nan')):.2f}x | "
                         f"{row.get('top1_agreement', float('nan')):.2%} |")
    agreement = report.get("held_out_agreement")
    if agreement:
        positions = next(iter(agreement.values()))["positions"]
        lines += ["", f"Masked held-out text ({positions} masked positions, seq 128): top-1 agreement with "
                  "PyTorch FP32 (the precision bars' measure) and MLM accuracy.", "",
                  "| backend | top-1 agreement | MLM accuracy |", "|---|---|---|"]
        for backend, row in agreement.items():
            lines.append(f"| {backend} | {row.get('top1_agreement', float('nan')):.2%} | {row['mlm_accuracy']:.2%} |")
    return "\n".join(lines) + "\n"


#: First line of the .md of a report saved mid-run (its JSON has "complete": false).
PARTIAL_NOTE = ("**Partial results**: saved while the run was still measuring; it was interrupted or has not "
                "finished (JSON `\"complete\": false`).")


def save_results(name: str, report: dict, table: str) -> Path:
    """benchmarks/results/<name>.json (the report) and .md (its table), each written atomically; the base path.
    A report with "complete": False is saved mid-run: its table starts with PARTIAL_NOTE."""
    from .fileio import write_report

    check_name(name)
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    base = RESULTS_DIR / name
    if report.get("complete") is False:
        table = f"{PARTIAL_NOTE}\n\n{table}"
    write_report(base.with_name(name + ".json"), report, table)
    return base


def write_report(report: dict, say: Progress, quiet: bool = False) -> None:
    """benchmarks/results/<name>.json, .md and .png (speedup per backend and shape); `quiet`: no table."""
    table = markdown_table(report)
    base = save_results(report["name"], report, table)
    if not quiet:
        say(table)
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        if not quiet:  # said once, at the end, not after every shape
            say("bench: matplotlib not installed; no PNG chart (pip install matplotlib)")
        return
    shapes = [f"{s['batch']}x{s['sequence']}" for s in report["results"]]
    backends = list(report["results"][0]["backends"]) if report["results"] else []
    fig, ax = plt.subplots(figsize=(max(6, 1.4 * len(shapes) * max(1, len(backends)) / 3), 4))
    width = 0.8 / max(1, len(backends))
    for i, backend in enumerate(backends):
        values = [s["backends"].get(backend, {}).get("speedup_vs_pytorch_fp32", 0) for s in report["results"]]
        ax.bar([x + i * width for x in range(len(shapes))], values, width, label=backend)
    ax.axhline(1.0, color="black", linewidth=0.8)
    ax.set_xticks([x + width * (len(backends) - 1) / 2 for x in range(len(shapes))], shapes)
    ax.set_xlabel("batch x sequence")
    ax.set_ylabel("speedup vs PyTorch FP32 (same run)")
    ax.set_title(f"{report['model']}: {report['threads']} threads")
    ax.legend(fontsize=7)
    fig.tight_layout()
    from .fileio import atomic_path

    with atomic_path(base.with_name(base.name + ".png")) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)
