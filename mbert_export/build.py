"""Build an artifact folder: FP32 export -> precision graph -> TensorRT engine (or ONNX Runtime) + sidecar.

`build_artifact(...)` is what `scripts/build_engine.py` and `mbert-export build` run. The folder it
writes holds `model.onnx` (the precision graph: the same file for both backends), `engine.plan` when
TensorRT built it, `build.json` (task, precision, profiles, versions, GPU, ONNX sha256, accuracy),
and the tokenizer files. It is staged beside its target and renamed into place only when complete.

The TensorRT part (`build_engine`) is deliberately thin and uses only APIs that exist in both
TensorRT 10.x and 11.x: a strongly typed network (precision comes from the graph's casts and Q/DQ;
TensorRT 11 has no FP16/INT8 builder flags), `OnnxParser.parse_from_file` (external data),
optimization profiles, the builder optimization level, a workspace limit and a timing cache.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Sequence

from .machine import machine_info
from .tasks import BATCH, NUM_CHOICES, SEQUENCE, Task, get_task

Progress = Callable[[str], None]
ENGINE_NAME, GRAPH_NAME, SIDECAR_NAME = "engine.plan", "model.onnx", "build.json"
REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_ENGINES_DIR = REPO_ROOT / "engines"
DEFAULT_CHECKPOINT = REPO_ROOT / "models" / "megatron-bert-demo"
BACKENDS = ("auto", "tensorrt", "onnxruntime", "openvino")
#: INT8 recipe: modules kept in float unless --keep-float says otherwise, and the calibration
#: method. Measured on the demo model (held-out masked text, top-1 agreement with the FP32 graph):
#: everything quantized 94.9% (max) / 94.8% (percentile); keeping layer 0 + the two attention
#: products + the LM head in float with percentile calibration: 99.5%, MLM accuracy -0.02 points.
#: The other task heads (pooler, classifiers, QA span head) are tiny and stay in float the same way.
#: Patterns that match nothing in a task's graph are skipped. README "Design decisions" has the table.
DEFAULT_INT8_KEEP_FLOAT: tuple[str, ...] = (
    "bert.encoder.layer.0.*", "*.attention.self.scores", "*.attention.self.context", "cls.*",
    "bert.pooler.*", "classifier", "qa_outputs")
DEFAULT_CALIBRATION_METHOD = "percentile"
#: Of the MatMuls the dynamic recipe leaves in float, these get int8 scores whose top 8 per token
#: are recomputed in FP32 (precision._rescored_int8): the tied LM-head decoder, 15-20% of the 345M
#: model's CPU time (1 x 128: ~23 ms in FP32, ~10 ms rescored). Demo model: 99.66% agreement either
#: way (plain int8 scores: 98.3%).
DEFAULT_INT8_RESCORE: tuple[str, ...] = ("cls.predictions.decoder",)
#: INT8 graph per backend: TensorRT builds the explicit Q/DQ graph; ONNX Runtime CPU runs its own
#: dynamic-quantization graph (the Q/DQ graph is slower than FP32 there; README "Benchmarks").
#: Same keep-float list: measured on the demo model, dynamic INT8 keeps 99.66% top-1 agreement
#: with it (97.5% with everything quantized).
INT8_RECIPES = ("qdq", "dynamic")
#: OpenVINO runs the calibrated Q/DQ graph on its int8 kernels (issue 13; README "Benchmarks").
INT8_RECIPE_FOR_BACKEND = {"tensorrt": "qdq", "onnxruntime": "dynamic", "openvino": "qdq"}


class BuildError(ValueError):
    """Bad build arguments or a build that cannot proceed; the message says what to do."""


# ---------------------------------------------------------------------------- int8 layers
def _check_keep_float_words(keep_float: Sequence[str] | None) -> None:
    others = [k for k in keep_float or () if k != "none"]
    if others and len(others) < len(keep_float):
        raise BuildError(f"--keep-float none keeps nothing in float; it cannot be combined with {others}")


def int8_layers(fp32_graph: Path, recipe: str, keep_float: Sequence[str] | None,
                int8_rescore: Sequence[str] | None, say: Progress) -> tuple[list[str], list[str]]:
    """(patterns kept in float, patterns rescored) from --keep-float and --int8-rescore.

    --keep-float: not given = the recipe's list; `none` = nothing; `default` = the recipe's list plus
    the other patterns given. The user's own patterns must match a MatMul (typos fail here, before
    any quantizing); the recipe's need not (its heads differ per task). On the dynamic recipe the
    default rescore gives way to an explicit --keep-float that names its module: the user asked for
    float there.
    """
    import fnmatch

    import onnx

    from .precision import matmul_scopes, resolve_keep_float

    _check_keep_float_words(keep_float)
    given = list(keep_float or ())
    own = [k for k in given if k not in ("none", "default")]
    keep = [*DEFAULT_INT8_KEEP_FLOAT, *own] if keep_float is None or "default" in given else own
    rescore = list(DEFAULT_INT8_RESCORE) if int8_rescore is None else [k for k in int8_rescore if k != "none"]
    graph = onnx.load(str(fp32_graph), load_external_data=False)
    resolve_keep_float(graph, own)
    if int8_rescore is not None:
        resolve_keep_float(graph, rescore, option="--int8-rescore")
    elif recipe == "dynamic":
        modules = set(matmul_scopes(graph).values())
        for module in [r for r in rescore if r in modules and any(fnmatch.fnmatchcase(r, k) for k in own)]:
            say(f"int8: {module} stays in float as --keep-float asks (--int8-rescore {module} would compute it "
                "in int8 with its top scores rescored)")
            rescore.remove(module)
    return keep, rescore


# ---------------------------------------------------------------------------- profiles
@dataclass(frozen=True)
class Profile:
    """One TensorRT optimization profile: (min, opt, max) per dynamic axis."""

    batch: tuple[int, int, int] = (1, 8, 32)
    sequence: tuple[int, int, int] = (1, 128, 512)
    num_choices: tuple[int, int, int] = (2, 4, 8)

    def shapes(self, task: Task) -> dict[str, tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]]:
        """Input name -> (min shape, opt shape, max shape) for `task`."""
        axes = {BATCH: self.batch, SEQUENCE: self.sequence, NUM_CHOICES: self.num_choices}
        order = [task.input_axes[i] for i in range(len(task.input_axes))]
        triple = tuple(tuple(axes[name][k] for name in order) for k in range(3))
        return {name: triple for name in task.inputs}  # type: ignore[misc]


def parse_triple(text: str, what: str) -> tuple[int, int, int]:
    """'MIN,OPT,MAX' -> a validated (min, opt, max)."""
    try:
        values = tuple(int(v) for v in text.split(","))
    except ValueError:
        raise BuildError(f"--{what} {text!r}: expected three integers MIN,OPT,MAX (e.g. 1,8,32)") from None
    if len(values) != 3:
        raise BuildError(f"--{what} {text!r}: expected exactly three values MIN,OPT,MAX")
    low, opt, high = values
    if not 1 <= low <= opt <= high:
        raise BuildError(f"--{what} {text!r}: need 1 <= min <= opt <= max")
    return values  # type: ignore[return-value]


def make_profiles(batches: Sequence[str], sequences: Sequence[str], max_positions: int,
                  choices: str | None = None) -> list[Profile]:
    """Every (--batch, --seq) combination becomes one profile; sequences may not exceed the model."""
    batch_triples = [parse_triple(b, "batch") for b in batches] or [Profile.batch]
    seq_triples = [parse_triple(s, "seq") for s in sequences] or [
        (1, min(128, max_positions), max_positions)]
    for seq in seq_triples:
        if seq[2] > max_positions:
            raise BuildError(f"--seq max {seq[2]} exceeds the model's max_position_embeddings "
                             f"({max_positions}); lower it")
    choice_triple = parse_triple(choices, "choices") if choices else Profile.num_choices
    return [Profile(b, s, choice_triple) for b in batch_triples for s in seq_triples]


# ---------------------------------------------------------------------------- TensorRT
def tensorrt_status() -> tuple[bool, str]:
    """(usable, reason): TensorRT and cuda-python import and a CUDA device is visible."""
    try:
        environment = tensorrt_environment()
    except ImportError as exc:
        return False, str(exc).split(";")[0]
    except Exception as exc:  # no driver, no device
        return False, f"no usable CUDA device ({type(exc).__name__}: {exc})"
    return True, (f"TensorRT {environment['tensorrt_version']} on {environment['gpu_name']} "
                  f"(sm {environment['compute_capability']})")


def tensorrt_environment() -> dict:
    """TensorRT version, GPU name and compute capability: the same probe the runtime checks engines with."""
    from .runtime.tensorrt.loader import import_cudart, import_tensorrt, running_environment

    return running_environment(import_tensorrt(), import_cudart())


def build_engine(onnx_path: Path, engine_path: Path, task: Task, profiles: Sequence[Profile], *,
                 optimization_level: int = 3, workspace_bytes: int = 4 << 30,
                 timing_cache: Path | None = None, progress: Progress | None = None) -> None:
    """Parse `onnx_path` into a strongly typed network and serialize an engine to `engine_path`."""
    import tensorrt as trt

    say = progress or (lambda message: None)
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    # Strongly typed: FP16/INT8 come from the graph. TensorRT 11 has only such networks; on 10.x
    # the flag must be set explicitly.
    network = builder.create_network(1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED))
    parser = trt.OnnxParser(network, logger)
    say(f"tensorrt: parsing {onnx_path}")
    if not parser.parse_from_file(str(onnx_path)):
        errors = "\n  ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise BuildError(f"TensorRT could not parse {onnx_path}:\n  {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_bytes)
    config.builder_optimization_level = optimization_level
    cache_bytes = timing_cache.read_bytes() if timing_cache and timing_cache.exists() else b""
    cache = config.create_timing_cache(cache_bytes)
    config.set_timing_cache(cache, False)
    for profile in profiles:
        trt_profile = builder.create_optimization_profile()
        for name, (low, opt, high) in profile.shapes(task).items():
            trt_profile.set_shape(name, low, opt, high)
        config.add_optimization_profile(trt_profile)
    say(f"tensorrt: building ({len(profiles)} profile(s), optimization level {optimization_level}); "
        "this takes minutes")
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise BuildError("TensorRT failed to build the engine; rerun with a TensorRT logger at VERBOSE "
                         "or check the workspace limit (--workspace-gb)")
    from .fileio import atomic_write_bytes

    atomic_write_bytes(engine_path, bytes(serialized))
    if timing_cache is not None:
        atomic_write_bytes(timing_cache, bytes(config.get_timing_cache().serialize()))


# ---------------------------------------------------------------------------- data for INT8 and accuracy
def calibration_data(tokenizer, calibration: str | Path | None, profiles: Sequence[Profile], task: Task,
                     config, say: Progress) -> tuple[list[dict], dict]:
    """INT8 calibration batches: the user's text file, else the bundled corpus (and say so)."""
    from . import calibration as corpus
    from .export import sample_inputs

    max_seq = max(p.sequence[2] for p in profiles)
    lengths = sorted({min(n, max_seq) for n in (32, 64, 128, 256, max_seq)})
    if not reads_text(tokenizer, task):
        say("int8: no tokenizer (or a multiple-choice graph): calibrating on random token ids")
        batches = [sample_inputs(config, task, 4, n, seed=i) for i, n in enumerate(lengths * 4)]
        return batches, {"source": "random token ids", "batches": len(batches)}
    if calibration is None:
        say(f"int8: no --calibration given; using the bundled corpus ({corpus.corpus_path('train')})")
        passages, source = None, "bundled corpus (calibration/corpus/train.txt)"
    else:
        passages, source = corpus.load_text_file(calibration), str(calibration)
    batches = corpus.calibration_batches(tokenizer, passages=passages, seq_lengths=lengths, num_samples=128,
                                         batch_size=8, on_unk="warn")
    return batches, {"source": source, "batches": len(batches), "seq_lengths": lengths}


def reads_text(tokenizer, task: Task) -> bool:
    """Whether calibration and the precision checks use corpus text (else random token ids): they
    need the tokenizer, and multiple-choice graphs take choices, not passages."""
    return tokenizer is not None and NUM_CHOICES not in task.input_axes.values()


def evaluation_sets(tokenizer, profiles: Sequence[Profile], task: Task, config) -> dict[str, list[dict]]:
    """Inputs the precision graph is checked on: held-out masked text, and every profile shape."""
    from . import calibration as corpus
    from .export import sample_inputs

    sets: dict[str, list[dict]] = {}
    text_ok = reads_text(tokenizer, task)
    if text_ok and task.vocab_output:
        sets["held-out masked text"] = corpus.masked_lm_examples(
            tokenizer, num_samples=256, seq_len=min(128, max(p.sequence[2] for p in profiles)),
            real_vocab_size=config.real_vocab_size)
    for profile in profiles:
        for point in range(3):
            batch, seq = profile.batch[point], profile.sequence[point]
            name = f"batch {batch} x seq {seq}"
            if text_ok and seq >= 2:
                sets[name] = corpus.calibration_batches(tokenizer, split="heldout", seq_lengths=(seq,),
                                                        num_samples=batch, batch_size=batch, seed=point,
                                                        use_cache=False, on_unk="warn")
            else:
                sets[name] = [sample_inputs(config, task, batch, seq, seed=point)]
    return sets


def evaluate_precision(reference: Path, candidate: Path, precision: str, sets: dict[str, list[dict]],
                       real_vocab_size: int, say: Progress, backend: str = "onnxruntime",
                       inference_precision: str | None = None) -> tuple[dict, list[str]]:
    """compare_graphs on every evaluation set (the candidate on `backend`); returns the reports and the
    bars they miss. An OpenVINO float graph at bf16 is judged by the bf16 bars."""
    from .precision import accuracy_problems, compare_graphs

    if inference_precision == "bf16" and precision in ("fp32", "fp16"):
        precision = "bf16"
    reports, problems = {}, []
    for name, batches in sets.items():
        report = compare_graphs(reference, candidate, batches, real_vocab_size=real_vocab_size,
                                backend="openvino" if backend == "openvino" else "onnxruntime",
                                inference_precision=inference_precision)
        reports[name] = report
        for output, entry in report.items():
            line = f"  {name:>24} {output}: max |diff| {entry['max_abs_diff']:.3g}"
            if "top1_agreement" in entry:
                line += f", top-1 agreement {entry['top1_agreement']:.4%}"
            if "mlm_accuracy" in entry:
                line += f", MLM accuracy {entry['mlm_accuracy']:.2%} (fp32 {entry['reference_mlm_accuracy']:.2%})"
            say(line)
        problems += [f"{name}: {p}" for p in accuracy_problems(report, precision)]
    return reports, problems


# ---------------------------------------------------------------------------- the whole build
def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def openvino_status() -> tuple[bool, str]:
    """(usable, reason): OpenVINO imports and sees the CPU."""
    try:
        from .runtime.openvino.loader import cpu_capabilities, openvino_version

        capabilities = cpu_capabilities()
    except ImportError as exc:
        return False, str(exc)
    except Exception as exc:
        return False, f"OpenVINO cannot use the CPU ({type(exc).__name__}: {exc})"
    return True, f"OpenVINO {openvino_version()} ({', '.join(capabilities)})"


#: OpenVINO's int8 kernels need int8 dot-product instructions (machine.INT8_DOT_PRODUCT_FLAGS) to beat
#: ONNX Runtime: on an AVX-512 VNNI/BF16 EPYC its Q/DQ graph at bf16 ran 1.14-1.23x the ONNX Runtime
#: CPU recipe's speed at 345M 1 x 128 (1.05-1.30x at 8 x 128; at f32 0.95-1.0x) and its f32 graph
#: 1.0-1.14x ONNX Runtime FP32; on AVX2 alone it ran its int8 layers no faster than f32, at 0.57-0.62x
#: of ONNX Runtime's dynamic INT8 (README "OpenVINO (CPU)").


def choose_backend(requested: str, say: Progress) -> str:
    """'auto' -> TensorRT when it imports and sees a GPU; else OpenVINO when it is installed and the CPU
    has int8 dot-product instructions (where it measured faster); else ONNX Runtime. Says why."""
    from .machine import INT8_DOT_PRODUCT_FLAGS, cpu_flags

    if requested not in BACKENDS:
        raise BuildError(f"unknown backend {requested!r}; choose one of {', '.join(BACKENDS)}")
    usable, reason = tensorrt_status()
    if requested == "tensorrt" and not usable:
        raise BuildError(f"--backend tensorrt needs TensorRT and an NVIDIA GPU: {reason}. "
                         "Use --backend onnxruntime or openvino (or auto) on this machine.")
    backend = requested
    if requested == "openvino" or (requested == "auto" and not usable):
        ov_usable, ov_reason = openvino_status()
        if requested == "openvino" and not ov_usable:
            raise BuildError(f"--backend openvino needs OpenVINO: {ov_reason}")
        dot = [f for f in cpu_flags() if f in INT8_DOT_PRODUCT_FLAGS]
        if requested == "openvino":
            reason = ov_reason
        elif ov_usable and dot:
            backend, reason = "openvino", f"{reason}; {ov_reason}, CPU has {', '.join(dot)}"
        elif ov_usable:
            reason = (f"{reason}; {ov_reason} is installed, but this CPU has no int8 dot-product instructions "
                      f"({', '.join(INT8_DOT_PRODUCT_FLAGS)}), where ONNX Runtime measured faster")
        else:
            reason = f"{reason}; {ov_reason}"
    if backend == "auto":
        backend = "tensorrt" if usable else "onnxruntime"
    say(f"build: backend {backend} ({reason})")
    return backend


def openvino_inference_precisions(requested: str | None, precision: str, capabilities: list[str]) -> list[str]:
    """The OpenVINO inference precisions a build checks, in order; it takes the first that keeps the
    precision's bars. Asked for: that one. Else INT8 on a CPU with bf16: bf16, then f32 (on an
    AVX-512 BF16 EPYC the 345M Q/DQ graph ran 1.2-1.3x faster with bf16 outside its int8 layers, at
    99.12% top-1 agreement on the demo model against the 99% INT8 bar; README "OpenVINO (CPU)"). Else f32: FP32 and FP16 graphs at
    bf16 cannot keep their own bars (max abs 1e-4; 99.9% top-1: the FP32 graph gave 99.12%)."""
    from .runtime.openvino.loader import resolve_inference_precision

    if requested is not None:
        return [resolve_inference_precision(requested, capabilities)]
    if precision == "int8":
        try:
            return [resolve_inference_precision("bf16", capabilities), "f32"]
        except ValueError:  # no bf16 on this CPU
            pass
    return ["f32"]


def choose_int8_recipe(requested: str, backend: str) -> str:
    """'auto' -> the INT8 graph the backend runs best; refuses a graph the backend cannot build."""
    if requested not in ("auto", *INT8_RECIPES):
        raise BuildError(f"unknown INT8 recipe {requested!r}; choose auto, {', '.join(INT8_RECIPES)}")
    if backend == "tensorrt" and requested == "dynamic":
        raise BuildError("TensorRT builds only the Q/DQ INT8 graph (--int8-recipe qdq); the dynamic recipe "
                         "is for --backend onnxruntime")
    return INT8_RECIPE_FOR_BACKEND.get(backend, "qdq") if requested == "auto" else requested


def library_versions() -> dict[str, str]:
    from . import __version__
    from .machine import library_versions as installed
    from .runtime.tensorrt.loader import tensorrt_version

    return {**installed(), "tensorrt": tensorrt_version(), "mbert_export": __version__}


@dataclass
class BuildResult:
    folder: Path
    sidecar: dict

    def summary(self) -> str:
        """One paragraph: what was built and how close it is to the reference."""
        s = self.sidecar
        runs_on = (f" (OpenVINO {s['openvino']['version']}, inference precision "
                   f"{s['openvino']['inference_precision']})" if s.get("openvino") else "")
        lines = [f"{self.folder}: task {s['task']}, {s['precision']}, backend {s['backend']}{runs_on}, "
                 f"{s['build_seconds']} s",
                 f"  FP32 graph vs PyTorch reference: max |diff| {s['export_max_abs_diff']:.2e}"]
        entries = [(name, out, e) for name, rep in s.get("accuracy", {}).items() for out, e in rep.items()]
        if entries:
            worst = max(e["max_abs_diff"] for _, _, e in entries)
            lines.append(f"  {s['precision']} graph vs FP32 graph: max |diff| {worst:.3g}")
            agreements = [e["top1_agreement"] for _, _, e in entries if "top1_agreement" in e]
            if agreements:
                lines.append(f"  top-1 agreement: worst {min(agreements):.4%} over {len(entries)} checks")
            for name, _, e in entries:
                if "mlm_accuracy" in e:
                    lines.append(f"  {name}: MLM accuracy {e['mlm_accuracy']:.2%} "
                                 f"(FP32 {e['reference_mlm_accuracy']:.2%})")
        if s.get("kept_float"):
            lines.append(f"  kept in float: {', '.join(s['kept_float'])}")
        if s.get("int8_weights"):
            lines.append(f"  dynamic INT8 weights: {s['int8_weights']} (chosen for this CPU; --int8-weights)")
        if s.get("int8_rescore"):
            from .precision import RESCORE_TOP

            lines.append(f"  int8 with each token's top {RESCORE_TOP} rescored in FP32: {', '.join(s['int8_rescore'])}")
        return "\n".join(lines)


def _check_options(precision: str, calibration, keep_float, optimization_level: int, workspace_gb: float) -> None:
    """Options that would be ignored, or fail only after the export, are refused before any work."""
    from .calibration import load_text_file

    if keep_float is not None and precision != "int8":
        raise BuildError("--keep-float applies to --int8 only")
    _check_keep_float_words(keep_float)
    if calibration is not None:
        if precision != "int8":
            raise BuildError("--calibration applies to --int8 only")
        load_text_file(calibration)  # missing, a folder, not UTF-8 or empty: its own message
    if not 0 <= optimization_level <= 5:
        raise BuildError(f"--opt-level is 0..5 (TensorRT's builder optimization level), got {optimization_level}")
    if not workspace_gb > 0:
        raise BuildError(f"--workspace-gb must be a positive number of GiB, got {workspace_gb}")


def build_artifact(task_name: str, precision: str, *, checkpoint: str | Path | None = None,
                   output_dir: str | Path | None = None, backend: str = "auto",
                   batch: Sequence[str] = (), seq: Sequence[str] = (), choices: str | None = None,
                   calibration: str | Path | None = None, calibration_method: str = DEFAULT_CALIBRATION_METHOD,
                   keep_float: Sequence[str] | None = None, int8_recipe: str = "auto",
                   int8_rescore: Sequence[str] | None = None, int8_weights: str | None = None,
                   inference_precision: str | None = None,
                   force: bool = False, allow_random_head: bool = False,
                   optimization_level: int = 3, workspace_gb: float = 4.0,
                   progress: Progress | None = None) -> BuildResult:
    """Checkpoint -> verified artifact folder for `task_name` at `precision` (see module docstring)."""
    import shutil

    from .export import copy_tokenizer, export_onnx, load_model_for_task
    from .fileio import atomic_dir, check_output_dir, make_writable_dir
    from .reference import REFERENCE_FILE, model_tokenizer
    from .runtime.artifact import TOKENIZER_FILES
    from .precision import check_precision, convert_fp16, quantize_int8, quantize_int8_dynamic

    say = progress or (lambda message: None)
    task = get_task(task_name)
    precision = check_precision(precision)
    checkpoint = Path(checkpoint) if checkpoint else DEFAULT_CHECKPOINT
    if not checkpoint.exists() and checkpoint == DEFAULT_CHECKPOINT:
        raise BuildError(f"no --checkpoint given and the demo model ({DEFAULT_CHECKPOINT}) is not in this "
                         "checkout; pass --checkpoint HF_FOLDER")
    output_dir = Path(output_dir) if output_dir else DEFAULT_ENGINES_DIR / f"{task.name}-{precision}"
    inputs = [p for p in (checkpoint, calibration) if p]
    def is_build(folder: Path) -> bool:
        return any((folder / name).exists() for name in (SIDECAR_NAME, GRAPH_NAME, ENGINE_NAME))

    if output_dir.is_dir() and is_build(output_dir) and not force:
        raise BuildError(f"{output_dir} already holds a build; pass --force to replace it or choose "
                         "another --output-dir")
    try:  # a file, an input, or someone else's files: refused before any work, --force or not
        check_output_dir(output_dir, force, inputs, ours=is_build, flag="--force")
        make_writable_dir(output_dir.parent, "--output-dir")
    except (OSError, ValueError) as exc:
        raise BuildError(str(exc)) from None
    _check_options(precision, calibration, keep_float, optimization_level, workspace_gb)
    choose_int8_recipe(int8_recipe, backend)  # bad combinations fail before any work
    backend = choose_backend(backend, say)
    recipe = choose_int8_recipe(int8_recipe, backend)
    if calibration is not None and recipe != "qdq":
        raise BuildError(f"--calibration applies to the calibrated Q/DQ INT8 recipe; the {recipe} recipe "
                         f"({backend}) does not calibrate: add --int8-recipe qdq, or drop --calibration")
    if inference_precision is not None and backend != "openvino":
        raise BuildError("--inference-precision applies to --backend openvino only")
    inference_precisions: list[str | None] = [None]  # None: not OpenVINO
    if backend == "openvino":
        from .runtime.openvino.loader import cpu_capabilities

        try:
            inference_precisions = openvino_inference_precisions(inference_precision, precision, cpu_capabilities())
        except ValueError as exc:
            raise BuildError(str(exc)) from None
    if int8_rescore is not None and (precision != "int8" or recipe != "dynamic"):
        raise BuildError("--int8-rescore applies to the dynamic INT8 recipe only (--int8 --int8-recipe dynamic)")
    if int8_weights is not None and (precision != "int8" or recipe != "dynamic"):
        raise BuildError("--int8-weights applies to the dynamic INT8 recipe only (--int8 --int8-recipe dynamic)")
    model = load_model_for_task(checkpoint, task, allow_random_head=allow_random_head, progress=say)
    config = model.config
    tokenizer = model_tokenizer(None, config, checkpoint)  # None (no tokenizer files): random ids
    checked = precision != "fp32" or backend == "openvino"  # judged against the FP32 graph on held-out text
    if reads_text(tokenizer, task) and checked:  # the corpus files read below
        from .calibration import corpus_path

        calibrates = precision == "int8" and recipe == "qdq" and calibration is None
        try:
            for split in ("heldout", "train") if calibrates else ("heldout",):
                corpus_path(split)
        except FileNotFoundError as exc:
            raise BuildError(str(exc)) from None
    profiles = make_profiles(batch, seq, config.max_position_embeddings, choices)
    max_seq = max(p.sequence[2] for p in profiles)
    start = time.perf_counter()
    with atomic_dir(output_dir, overwrite=force, inputs=inputs, ours=is_build) as stage:
        fp32_path = stage / "fp32" / GRAPH_NAME
        exported = export_onnx(model, task, fp32_path, max_seq_len=max_seq, tokenizer_dir=checkpoint,
                               source=str(checkpoint), progress=say)
        graph = stage / GRAPH_NAME
        calibration_info: dict = {}
        rescored_modules: list[str] = []
        dynamic_weights = None
        if precision == "fp32":
            shutil.move(str(fp32_path), graph)
            if fp32_path.with_name(GRAPH_NAME + ".data").exists():
                shutil.move(str(fp32_path.with_name(GRAPH_NAME + ".data")), stage / (GRAPH_NAME + ".data"))
            kept: list[str] = []
        elif precision == "fp16":
            kept = convert_fp16(fp32_path, graph, progress=say).kept_float
        else:
            # int8_layers checked the user's patterns, and the recipe's own need not match every task's
            # graph: not strict, except that a rescore the user named must have a constant weight
            keep, rescore = int8_layers(fp32_path, recipe, keep_float, int8_rescore, say)
            if recipe == "dynamic":
                say("int8: dynamic recipe for ONNX Runtime CPU (no calibration; --int8-recipe qdq gives "
                    "the TensorRT graph)")
                result = quantize_int8_dynamic(fp32_path, graph, keep_float=keep, strict=False, rescore=rescore,
                                               rescore_strict=int8_rescore is not None,
                                               weights=int8_weights or "auto", progress=say)
                kept, rescored_modules = result.kept_float, result.details["rescore"]
                dynamic_weights = result.details["int8_weights"]
            else:
                batches, calibration_info = calibration_data(tokenizer, calibration, profiles, task, config, say)
                kept = quantize_int8(fp32_path, graph, batches, method=calibration_method, keep_float=keep,
                                     strict=False, progress=say).kept_float
            if kept:
                say(f"int8: kept in float: {', '.join(kept)}")
        accuracy: dict = {}
        inference_precision = inference_precisions[0]
        rejected: dict[str, list[str]] = {}  # OpenVINO inference precision -> the bars it missed
        if checked:
            sets = evaluation_sets(tokenizer, profiles, task, config)
            reference = fp32_path if fp32_path.exists() else graph  # fp32: the graph itself, on ONNX Runtime
            for attempt, inference_precision in enumerate(inference_precisions, 1):
                runs_on = ("ONNX Runtime" if backend != "openvino"
                           else f"OpenVINO at inference precision {inference_precision}")
                say(f"build: checking the {precision} graph on {runs_on} against the FP32 graph on ONNX Runtime")
                accuracy, problems = evaluate_precision(reference, graph, precision, sets, config.real_vocab_size,
                                                        say, backend=backend, inference_precision=inference_precision)
                if not problems or attempt == len(inference_precisions):
                    break
                rejected[inference_precision] = problems
                say(f"build: at inference precision {inference_precision} the {precision} graph misses its bar:\n  "
                    + "\n  ".join(problems) + f"\nbuild: trying inference precision {inference_precisions[attempt]}")
            if problems:
                if precision != "int8":
                    hint = "Random or untrained weights give near-tied logits that no reduced precision keeps."
                else:
                    other = [m for m in ("max", "entropy", "percentile") if m != calibration_method]
                    hint = ("Keep the layers that lose most in float: --keep-float default --keep-float MODULE "
                            "(the recipe's list plus MODULE, e.g. 'bert.encoder.layer.N.*')"
                            + ("." if recipe == "dynamic" else
                               f", or calibrate with --calibration-method {' or '.join(other)}."))
                if inference_precision == "bf16":
                    hint += " Or check it at --inference-precision f32 (more exact than bf16)."
                where = ""
                if backend == "openvino":
                    where = f" at OpenVINO inference precision {inference_precision}" + (
                        f" (also missed at {', '.join(rejected)})" if rejected else "")
                raise BuildError(f"the {precision} graph misses its accuracy bar{where} (nothing was written):\n  "
                                 + "\n  ".join(problems) + "\n" + hint)
        copy_tokenizer(checkpoint, stage)  # export_onnx said so if there are none
        shutil.move(str(stage / "fp32" / REFERENCE_FILE), stage / REFERENCE_FILE)
        shutil.rmtree(stage / "fp32", ignore_errors=True)
        sidecar = {
            "task": task.name, "precision": precision, "backend": backend,
            "profiles": [asdict(p) for p in profiles],
            "max_batch": max(p.batch[2] for p in profiles), "max_seq_len": max_seq,
            "onnx": GRAPH_NAME, "onnx_sha256": sha256(graph), "reference": REFERENCE_FILE,
            "export_max_abs_diff": max(exported.max_abs_diff.values()),
            "source_checkpoint": str(checkpoint), "kept_float": kept,
            **({"int8_recipe": recipe} if precision == "int8" else {}),
            **({"int8_rescore": rescored_modules, "int8_weights": dynamic_weights}
               if precision == "int8" and recipe == "dynamic" else {}),
            "calibration": calibration_info, "accuracy": accuracy,
            "versions": library_versions(), "machine": machine_info(),
            "tokenizer_files": sorted(p.name for p in stage.iterdir() if p.name in TOKENIZER_FILES),
        }
        if backend == "openvino":
            from .runtime.openvino.loader import cpu_capabilities, openvino_version

            sidecar["openvino"] = {"version": openvino_version(), "inference_precision": inference_precision,
                                   "rejected_inference_precisions": rejected,
                                   "device": "CPU", "capabilities": cpu_capabilities()}
        if backend == "tensorrt":
            environment = tensorrt_environment()
            capability = environment["compute_capability"]
            DEFAULT_ENGINES_DIR.mkdir(parents=True, exist_ok=True)
            build_engine(graph, stage / ENGINE_NAME, task, profiles, optimization_level=optimization_level,
                         workspace_bytes=int(workspace_gb * (1 << 30)),
                         timing_cache=DEFAULT_ENGINES_DIR / f"timing-{capability}.cache", progress=say)
            sidecar.update(engine=ENGINE_NAME, tensorrt_version=environment["tensorrt_version"],
                           gpu_name=environment["gpu_name"], compute_capability=capability)
        sidecar["build_seconds"] = round(time.perf_counter() - start, 1)
        (stage / SIDECAR_NAME).write_text(json.dumps(sidecar, indent=2) + "\n", encoding="utf-8")
    return BuildResult(output_dir, sidecar)
