"""`mbert-export`: one subcommand per verb of the data flow (convert, export, check, ...).

Every subcommand turns the project's own errors (bad checkpoint, bad config, bad arguments) into
one `error: ...` line and exit status 2, never a traceback from deep inside torch or onnx.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Callable

EPILOG = """examples:
  mbert-export convert megatron_bert_345m_v0_1_cased.zip hf/bert-345m-cased --vocab vocab.txt --cased
  mbert-export convert checkpoints/iter_dir hf/my-bert
  mbert-export export --task mlm --checkpoint hf/bert-345m-cased --output onnx/mlm/model.onnx
  mbert-export check onnx/mlm/model.onnx
  mbert-export build --task mlm --fp16            (= python scripts/build_engine.py --task mlm --fp16)

run `mbert-export SUBCOMMAND --help` for the options of each step."""


def progress(message: str) -> None:
    """Progress lines go to stderr so that stdout stays machine-readable."""
    print(message, file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------- convert
def add_convert(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "convert", help="convert a Megatron-LM / Megatron-Core checkpoint into a Hugging Face folder",
        description="Read a Megatron checkpoint without Megatron installed: legacy Megatron-LM or Megatron-Core "
                    "BERT, torch format (NGC zip, release folder, iteration folder with "
                    "latest_checkpointed_iteration.txt, mp_rank_XX[_YYY] shards, or a single model_optim_rng.pt) "
                    "or torch_dist format (*.distcp + .metadata); join its pipeline stages, merge its "
                    "tensor-parallel shards, and write a Hugging Face MegatronBERT folder (config.json, "
                    "model.safetensors, tokenizer files when --vocab is given or args.vocab_file exists).")
    p.add_argument("src", help="Megatron checkpoint: .zip, folder (top, iter_XXXXXXX, release), or .pt file")
    p.add_argument("dst", help="output folder (must not exist or be empty unless --overwrite)")
    p.add_argument("--vocab", help="WordPiece vocab.txt to ship with the model (NGC: the BERT vocab)")
    case = p.add_mutually_exclusive_group()
    case.add_argument("--lowercase", dest="lowercase", action="store_true", default=None,
                      help="the vocab is uncased (lower-case the text)")
    case.add_argument("--cased", dest="lowercase", action="store_false", help="the vocab is cased")
    p.add_argument("--trust-remote-pickle", action="store_true",
                   help="allow the checkpoint pickle to run arbitrary code (only for files you trust)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output folder")
    p.set_defaults(run=run_convert)


def run_convert(args: argparse.Namespace) -> int:
    from .checkpoints import convert_megatron

    if args.vocab and args.lowercase is None:
        raise ValueError("--vocab needs --lowercase or --cased (the NGC zips say which in their name)")
    out = convert_megatron(args.src, args.dst, vocab=args.vocab, lowercase=args.lowercase,
                           allow_unsafe_pickle=args.trust_remote_pickle, overwrite=args.overwrite,
                           progress=progress)
    print(out)
    return 0


# ---------------------------------------------------------------------------- export
ALLOW_RANDOM_HEAD_HELP = "export even if the checkpoint has no weights for the task's head (rarely wanted)"


def add_export(sub: argparse._SubParsersAction) -> None:
    from .tasks import TASKS

    p = sub.add_parser(
        "export", help="export one task head as an FP32 ONNX graph (verified against the reference)",
        description="Trace the reference model of TASK to ONNX with dynamic batch/sequence axes, check it "
                    "for TensorRT readiness, and compare it with the PyTorch reference on ONNX Runtime at "
                    "several shapes (fails above 1e-4). The tokenizer files are copied next to the graph.")
    p.add_argument("--task", required=True, choices=list(TASKS), metavar="TASK",
                   help=f"one of: {', '.join(TASKS)}")
    p.add_argument("--checkpoint", required=True,
                   help="Hugging Face folder, or a Megatron-LM checkpoint that `convert` reads")
    p.add_argument("--output", required=True, help="FILE.onnx to write (its folder gets the tokenizer)")
    p.add_argument("--opset", type=int, default=None,  # export.DEFAULT_OPSET (that module imports torch)
                   help="ONNX opset, >= 17 (default: 18, the exporter's own)")
    p.add_argument("--max-seq-len", type=int, help="longest sequence to verify (default: max positions)")
    p.add_argument("--no-verify", action="store_true", help="skip the comparison with the reference")
    p.add_argument("--allow-random-head", action="store_true", help=ALLOW_RANDOM_HEAD_HELP)
    p.set_defaults(run=run_export)


def run_export(args: argparse.Namespace) -> int:
    from pathlib import Path

    from .export import DEFAULT_OPSET, export_onnx, load_model_for_task

    checkpoint = Path(args.checkpoint)
    model = load_model_for_task(checkpoint, args.task, allow_random_head=args.allow_random_head,
                                progress=progress)
    opset = DEFAULT_OPSET if args.opset is None else args.opset
    result = export_onnx(model, args.task, args.output, opset=opset, max_seq_len=args.max_seq_len,
                         verify=not args.no_verify, source=str(checkpoint),
                         tokenizer_dir=checkpoint if checkpoint.is_dir() else None, progress=progress)
    print(result.summary())
    return 0


# ---------------------------------------------------------------------------- check
def add_check(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "check", help="check that an ONNX graph is ready for TensorRT 10.x and 11.x",
        description="Exit 1 and list the offending nodes when the graph uses an op outside the TensorRT "
                    "ONNX parser's support list, has float64 tensors, holds -inf or FP16-overflowing "
                    "constants, or lacks the task's dynamic axes.")
    p.add_argument("onnx_file", help="the .onnx graph, or an artifact folder")
    p.add_argument("--task", help="task whose input axes to expect (default: from the graph metadata)")
    p.set_defaults(run=run_check)


def run_check(args: argparse.Namespace) -> int:
    from .check import check_graph

    problems = check_graph(args.onnx_file, args.task)
    for line in problems:
        print(line)
    print(f"{args.onnx_file}: " + ("TensorRT-ready" if not problems else f"{len(problems)} problem(s)"))
    return 1 if problems else 0


# ---------------------------------------------------------------------------- build
def add_build_arguments(p: argparse.ArgumentParser) -> None:
    """Options of `mbert-export build`, shared with scripts/build_engine.py."""
    from .tasks import TASKS

    p.add_argument("--task", required=True, choices=list(TASKS), metavar="TASK",
                   help=f"one of: {', '.join(TASKS)}")
    precision = p.add_mutually_exclusive_group()
    for name in ("fp32", "fp16", "int8"):
        precision.add_argument(f"--{name}", dest="precision", action="store_const", const=name,
                               help=f"build the {name.upper()} graph/engine")
    p.add_argument("--precision", dest="precision", help=argparse.SUPPRESS)
    p.add_argument("--checkpoint", help="Hugging Face folder or Megatron-LM checkpoint (default: the demo model "
                                        "in models/megatron-bert-demo)")
    p.add_argument("--backend", default="auto", choices=["auto", "tensorrt", "onnxruntime", "openvino"],
                   help="auto: TensorRT when it imports and sees a GPU, else OpenVINO (CPU) where it is "
                        "installed and the CPU has int8 dot-product instructions (AVX512-VNNI, AVX-VNNI, AMX), "
                        "else ONNX Runtime")
    p.add_argument("--inference-precision", choices=["f32", "bf16"], default=None,
                   help="OpenVINO: compute precision of float ops, checked and recorded in build.json; bf16 "
                        "needs AVX512-BF16 or AMX. Default: for --int8 on such a CPU bf16 if it keeps the INT8 "
                        "bar (faster), else f32; f32 for --fp32/--fp16 (at bf16 they miss their own bars)")
    p.add_argument("--output-dir", help="artifact folder (default: engines/TASK-PRECISION)")
    p.add_argument("--batch", action="append", default=[], metavar="MIN,OPT,MAX",
                   help="batch sizes of a profile (default 1,8,32); repeat for several profiles")
    p.add_argument("--seq", action="append", default=[], metavar="MIN,OPT,MAX",
                   help="sequence lengths of a profile (default 1,128,max positions); repeat for several")
    p.add_argument("--choices", metavar="MIN,OPT,MAX", help="num_choices range for multiple-choice (default 2,4,8)")
    p.add_argument("--calibration", help="INT8 with the Q/DQ recipe (--int8-recipe qdq): a text file (one passage "
                                         "per line) to calibrate on (default: the bundled corpus in calibration/)")
    p.add_argument("--calibration-method", default="percentile", choices=["max", "entropy", "percentile"],
                   help="INT8 Q/DQ calibration method (default: percentile, the measured recipe)")
    p.add_argument("--keep-float", action="append", default=None, metavar="MODULE",
                   help="INT8: keep MatMuls of matching modules in float (fnmatch pattern such as "
                        "'bert.encoder.layer.0.*' or 'cls.predictions.decoder'; repeatable). Default: the "
                        "measured recipe (layer 0, the attention products and the LM head); "
                        "--keep-float default --keep-float MODULE adds MODULE to it; "
                        "--keep-float none keeps nothing in float by choice")
    p.add_argument("--int8-recipe", default="auto", choices=["auto", "qdq", "dynamic"],
                   help="INT8 graph: qdq = explicit Q/DQ, calibrated (what TensorRT builds); dynamic = ONNX "
                        "Runtime CPU's integer kernels, no calibration (about 2x faster than FP32 on CPU, "
                        "TensorRT cannot build it). auto: qdq for TensorRT, dynamic for ONNX Runtime")
    p.add_argument("--int8-weights", choices=("auto", "s8", "u8"), default=None,
                   help="dynamic INT8 weight type: s8 runs ONNX Runtime's fastest kernels on CPUs with VNNI/AMX "
                        "but saturates on AVX2-only CPUs; u8 is exact everywhere, ~20%% slower; auto (default) "
                        "picks by the CPU of this build. Build on the kind of CPU you deploy on, or set it")
    p.add_argument("--int8-rescore", action="append", default=None, metavar="MODULE",
                   help="dynamic INT8: compute these float-kept Linears in int8, then recompute each token's "
                        "top 8 scores in FP32 (fnmatch pattern, repeatable). Default: cls.predictions.decoder, "
                        "the LM-head decoder (2.5x faster, same top-1); --int8-rescore none, or a --keep-float "
                        "that names it, keeps it in float")
    p.add_argument("--opt-level", type=int, default=3, help="TensorRT builder optimization level 0-5")
    p.add_argument("--workspace-gb", type=float, default=4.0, help="TensorRT workspace limit in GiB")
    p.add_argument("--force", action="store_true", help="replace an output folder that holds another build")
    p.add_argument("--allow-random-head", action="store_true", help=ALLOW_RANDOM_HEAD_HELP)


def add_build(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "build", help="build a verified FP32/FP16/INT8 artifact (ONNX graph + TensorRT engine)",
        description="Export the task's FP32 graph, turn it into the FP16 or INT8 (Q/DQ) graph, measure "
                    "its accuracy against the FP32 graph on ONNX Runtime, and build a strongly typed "
                    "TensorRT engine from it when TensorRT and a GPU are present. Same as "
                    "scripts/build_engine.py.")
    add_build_arguments(p)
    p.set_defaults(run=run_build)


def run_build(args: argparse.Namespace) -> int:
    from .build import build_artifact

    if not args.precision:
        raise ValueError("choose a precision: --fp32, --fp16 or --int8")
    result = build_artifact(
        args.task, args.precision, checkpoint=args.checkpoint, output_dir=args.output_dir,
        backend=args.backend, batch=args.batch, seq=args.seq, choices=args.choices,
        calibration=args.calibration, calibration_method=args.calibration_method,
        keep_float=args.keep_float, int8_recipe=args.int8_recipe, int8_rescore=args.int8_rescore,
        int8_weights=args.int8_weights,
        inference_precision=args.inference_precision, force=args.force, allow_random_head=args.allow_random_head,
        optimization_level=args.opt_level, workspace_gb=args.workspace_gb, progress=progress)
    print(result.summary())
    return report_built_artifact(result.folder, result.sidecar)


#: A sentence in the register of the demo model's training text (the Python documentation).
FILL_MASK_EXAMPLE = "The [MASK] statement is used to import a module."


def report_built_artifact(folder, sidecar: dict) -> int:
    """Run the artifact on its reference vectors (and one fill_mask example for MLM) through the runtime."""
    from .runtime.artifact import built_backend
    from .tasks import get_task

    with _open_runtime(str(folder), built_backend(sidecar)) as runtime:
        report = runtime.verify()
        print(report.summary())
        if "fill_mask" in get_task(sidecar["task"]).methods and runtime.tokenizer is not None:
            predictions = runtime.fill_mask(FILL_MASK_EXAMPLE, top_k=3)
            shown = ", ".join(f"{p['token_str']!r} ({p['score']:.2f})" for p in predictions)
            print(f"fill_mask({FILL_MASK_EXAMPLE!r}) -> {shown}")
    return 0 if report.passed else 1


# ---------------------------------------------------------------------------- verify / compare
def _resolve_backend(artifact: str, backend: str) -> str:
    """`auto`: the backend of the artifact's build.json (an OpenVINO build is checked on OpenVINO)."""
    from .runtime.artifact import built_backend, read_sidecar, sidecar_path

    if backend != "auto":
        return backend
    sidecar = sidecar_path(artifact)
    return built_backend(read_sidecar(sidecar)) if sidecar.is_file() else "onnxruntime"


def _open_runtime(path: str, backend: str, inference_precision: str | None = None):
    from .runtime import OrtMegatronBert, OvMegatronBert, TRTMegatronBert

    _check_inference_precision(backend, inference_precision)
    if backend == "tensorrt":
        return TRTMegatronBert(path)
    if backend == "openvino":
        return OvMegatronBert(path, inference_precision=inference_precision)
    return OrtMegatronBert(path)


def _check_inference_precision(backend: str, inference_precision: str | None) -> None:
    if inference_precision is not None and backend != "openvino":
        raise ValueError(f"--inference-precision applies to the openvino backend (this runs {backend}): add "
                         "--backend openvino")


def _add_inference_precision(p: argparse.ArgumentParser) -> None:
    p.add_argument("--inference-precision", choices=("f32", "bf16"),
                   help="OpenVINO: the precision of its float ops (default: the build's, build.json, else f32)")


def add_verify(sub: argparse._SubParsersAction) -> None:
    from .runtime.artifact import RUNTIME_BACKENDS

    p = sub.add_parser(
        "verify", help="run an artifact on its reference vectors and check it against its precision's bar",
        description="Every exported or built artifact carries reference.npz: a few real inputs and the "
                    "PyTorch reference's outputs on them. This runs the artifact (ONNX Runtime, OpenVINO or "
                    "the TensorRT engine) on them, without torch, and exits 1 when it misses the thresholds "
                    "of its precision (fp32: 1e-4 max abs; fp16: 5e-2 max abs, 99.9% top-1 and cosine 0.999; "
                    "int8: 99% top-1 and cosine 0.99).")
    p.add_argument("artifact", help="artifact folder, model.onnx or engine.plan")
    p.add_argument("--backend", choices=("auto",) + RUNTIME_BACKENDS, default="auto",
                   help="auto (default): the backend the artifact was built for (build.json), else onnxruntime")
    p.add_argument("--reference", help="reference .npz (default: reference.npz next to the artifact)")
    _add_inference_precision(p)
    p.set_defaults(run=run_verify)


def run_verify(args: argparse.Namespace) -> int:
    backend = _resolve_backend(args.artifact, args.backend)
    with _open_runtime(args.artifact, backend, args.inference_precision) as runtime:
        report = runtime.verify(args.reference) if args.reference else runtime.verify()
    print(report.summary())
    return 0 if report.passed else 1


def _int_between(low: int, high: int, what: str) -> Callable[[str], int]:
    """argparse type: an integer from `low` to `high`; `what` says so in the error."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = low - 1
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"{what}, got {text!r}")
        return value
    return parse


_positive = _int_between(1, 2**31 - 1, "expected an integer >= 1")
_port = _int_between(0, 65535, "a port is a number from 0 (any free port) to 65535")


def add_compare(sub: argparse._SubParsersAction) -> None:
    from .runtime.artifact import RUNTIME_BACKENDS

    p = sub.add_parser(
        "compare", help="parity: an artifact against the PyTorch reference (or against another artifact)",
        description="With --checkpoint: run the PyTorch reference and the artifact on the same inputs (real "
                    "held-out sentences and random shapes up to the artifact's maximum) and judge every "
                    "output by the thresholds of the artifact's precision (fp32: 1e-4 max abs; fp16: 5e-2 max "
                    "abs, 99.9% top-1 and cosine 0.999; int8: 99% top-1 and cosine 0.99; top-1 pooled over the "
                    "held-out sentences, reported but not judged on random ids); --report writes JSON and "
                    "markdown. With --reference-artifact: compare two artifacts on the reference inputs. Exits 1 "
                    "on failure.")
    p.add_argument("--artifact", required=True, help="artifact folder, model.onnx or engine.plan")
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--checkpoint", help="the checkpoint the artifact was built from")
    source.add_argument("--reference-artifact", help="another artifact of the same task (e.g. the FP32 graph)")
    p.add_argument("--samples", type=_positive,
                   help="with --checkpoint: held-out sentences to use (default 32); with --reference-artifact the "
                        "inputs are the reference artifact's reference.npz")
    p.add_argument("--report", help="write the report here (.json, plus a .md beside it), with either source")
    p.add_argument("--backend", choices=("auto",) + RUNTIME_BACKENDS, default="auto",
                   help="backend for the artifact; auto (default): the one it was built for (build.json), "
                        "else onnxruntime")
    _add_inference_precision(p)
    p.set_defaults(run=run_compare)


def _report_path(text: str | None) -> None:
    """--report is checked before the comparison runs, not after it."""
    if text is None:
        return
    from pathlib import Path

    from .fileio import make_writable_dir

    path = Path(text)
    if path.suffix != ".json" or path.is_dir():
        raise ValueError(f"--report {text!r}: name the .json file to write (the .md goes beside it)")
    make_writable_dir(path.parent, "--report folder")


def _same_graph(a: str, b: str) -> bool:
    from pathlib import Path

    graphs = [Path(p) / "model.onnx" if Path(p).is_dir() else Path(p) for p in (a, b)]
    return graphs[0].exists() and graphs[0].resolve() == graphs[1].resolve()


def run_compare(args: argparse.Namespace) -> int:
    _report_path(args.report)
    if args.reference_artifact and _same_graph(args.artifact, args.reference_artifact):
        raise ValueError("--artifact and --reference-artifact are the same graph: comparing it with itself checks "
                         "nothing; pass the artifact to judge and the one to judge it against")
    backend = _resolve_backend(args.artifact, args.backend)
    if args.checkpoint:
        _check_inference_precision(backend, args.inference_precision)
        from .parity import compare_checkpoint, parity_markdown

        result = compare_checkpoint(args.checkpoint, args.artifact, samples=args.samples or 32, backend=backend,
                                    inference_precision=args.inference_precision, report=args.report,
                                    progress=progress)
        print(parity_markdown(result))
        return 0 if result["passed"] else 1
    if args.samples is not None:
        raise ValueError("--samples applies to --checkpoint; with --reference-artifact the inputs are the reference "
                         "artifact's reference.npz")
    from .runtime import OrtMegatronBert, compare

    with OrtMegatronBert(args.reference_artifact) as reference, \
            _open_runtime(args.artifact, backend, args.inference_precision) as candidate:
        report = compare(reference, candidate)
    print(report.summary())
    if args.report:
        from .fileio import write_report

        write_report(args.report, report.to_dict(), report.summary() + "\n")
    return 0 if report.passed else 1


# ---------------------------------------------------------------------------- bench
def add_bench(sub: argparse._SubParsersAction) -> None:
    from .bench import ALL_BACKENDS

    p = sub.add_parser(
        "bench", help="latency/throughput of every backend, interleaved in one run",
        description="Time the PyTorch reference (FP32, BF16 autocast), ONNX Runtime on the FP32/FP16/INT8 "
                    "graphs (and the CPU dynamic-INT8 graph), OpenVINO on the FP32 graph (f32, bf16 where the "
                    "CPU has it) and the INT8 Q/DQ graph, and TensorRT engines when present, on the MLM "
                    "head. Every ratio comes from the same interleaved run. Writes "
                    "benchmarks/results/NAME.{json,md,png}, each naming the machine (CPU, cores, ISA flags, "
                    "library versions).")
    p.add_argument("--model", default="demo",
                   help="'demo' (trained demo model), a preset such as megatron-bert-345m-cased (random "
                        "weights: speed only), or a Hugging Face folder")
    p.add_argument("--backends", default=",".join(ALL_BACKENDS), help="comma-separated subset")
    p.add_argument("--batch", default="1,8,32", help="batch sizes (default 1,8,32)")
    p.add_argument("--seq", default="128,384", help="sequence lengths (default 128,384)")
    p.add_argument("--shapes", help="BATCHxSEQ list instead of --batch x --seq, e.g. 1x128,8x128,1x384")
    p.add_argument("--threads", type=int, default=2, help="threads for every backend (default 2)")
    p.add_argument("--warmup", type=int, default=2, help="untimed calls per backend and shape (default 2)")
    p.add_argument("--repeats", type=int, default=20, help="interleaved rounds per shape (default 20)")
    p.add_argument("--budget", type=float, default=60.0,
                   help="seconds of timed rounds per shape after which no new round starts (default 60; at least "
                        "min(3, --repeats) rounds always run)")
    p.add_argument("--name", help="result file name (default bench-MODEL)")
    p.set_defaults(run=run_bench)


def run_bench(args: argparse.Namespace) -> int:
    from .bench import parse_ints, parse_shapes, run_benchmark

    shapes = parse_shapes(args.shapes) if args.shapes else None
    backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    run_benchmark(args.model, backends=backends, batches=parse_ints(args.batch, "--batch"),
                  seqs=parse_ints(args.seq, "--seq"),
                  shapes=shapes, threads=args.threads, warmup=args.warmup, repeats=args.repeats, budget_s=args.budget,
                  name=args.name, progress=progress)
    return 0


# ---------------------------------------------------------------------------- triton / serve (serving/)
def _add_repository_options(p: argparse.ArgumentParser) -> dict[str, object]:
    """The options that shape a repository; returns their defaults (dest -> default)."""
    from .runtime.artifact import RUNTIME_BACKENDS

    defaults: dict[str, object] = {}

    def add(*names: str, **options) -> None:
        action = p.add_argument(*names, **options)
        defaults[action.dest] = action.default

    add("--layout", choices=["python", "ensemble"], default=None,
        help="python: one python-backend model running this runtime (any tritonserver with the python "
             "backend); ensemble: tokenize -> onnxruntime_onnx/tensorrt_plan -> postprocess (NVIDIA's "
             "tritonserver container)")
    add("--backend", choices=("auto",) + RUNTIME_BACKENDS, default="auto",
        help="runtime of the python layout's model (the ensemble's middle model runs the graph on "
             "onnxruntime_onnx, or tensorrt_plan for an engine); auto: TensorRT for a folder with "
             "engine.plan, else the backend the artifact was built for (build.json: OpenVINO for an "
             "OpenVINO build), else ONNX Runtime")
    add("--max-queue-delay-us", type=int, default=0,
        help="dynamic batching: longest wait for more requests, in microseconds (default 0: batch "
             "what is queued when an instance is free, never delay a lone request)")
    add("--no-dynamic-batching", action="store_true", help="leave dynamic batching off")
    add("--preferred-batch", type=int, nargs="+", default=[], metavar="N",
        help="dynamic batching: preferred batch sizes")
    add("--instances", type=int, default=None,
        help="model instances (instance_group count; default 2 on CPU, 1 per GPU). On CPU, 2 give "
             "more requests/s under load, 1 the lowest latency for lone requests")
    add("--threads", type=int, default=0,
        help="python layout, ONNX Runtime or OpenVINO: threads per instance (default: the serving "
             "machine's cores divided by the instances)")
    add("--sequence-bucket", type=int, default=None,
        help="ensemble only: pad token ids to a multiple of this, so requests of similar length batch "
             "(default: 16)")
    return defaults


def _repository_options(args: argparse.Namespace) -> dict:
    return dict(layout=args.layout or "python", backend=args.backend, max_queue_delay_us=args.max_queue_delay_us,
                dynamic_batching=not args.no_dynamic_batching, preferred_batch=args.preferred_batch,
                instances=args.instances, threads=args.threads, sequence_bucket=args.sequence_bucket)


def add_triton(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "triton", help="write a Triton Inference Server model repository for artifacts",
        description="Write a Triton model repository serving each ARTIFACT (build folder, model.onnx or engine "
                    "folder): clients send TEXT (and TEXT_PAIR, or QUESTION and CONTEXT) and get RESULT, the JSON "
                    "of the runtime's task method. Configs take max_batch_size, dims and data types from the "
                    "artifact. The repository is written to a temp folder and renamed into place.")
    p.add_argument("artifacts", nargs="+", metavar="ARTIFACT", help="artifact folder(s)")
    p.add_argument("--repository", required=True, help="repository folder to write")
    p.add_argument("--name", action="append", default=None,
                   help="model name (one per artifact, repeatable; default: the artifact folder's name)")
    _add_repository_options(p)
    p.add_argument("--overwrite", action="store_true", help="replace an existing repository folder")
    p.set_defaults(run=run_triton)


def run_triton(args: argparse.Namespace) -> int:
    from .serving.repository import write_repository

    entries = write_repository(args.artifacts, args.repository, names=args.name, overwrite=args.overwrite,
                               **_repository_options(args))
    for entry in entries:
        print(f"{args.repository}/{entry.name}: {entry.describe()}" + (f" ({', '.join(entry.files)})" if entry.files else ""))
    return 0


def add_serve(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "serve", help="serve an artifact with a local tritonserver (HTTP + gRPC) until Ctrl-C",
        description="Write a model repository for ARTIFACT to a temp folder and run tritonserver on it: the one "
                    "nvidia-pytriton installed in --python-env (python backend only, so --layout python), else the "
                    "one on PATH. Given a repository that `mbert-export triton` wrote, serve it as it is. Stops "
                    "with its model processes on Ctrl-C or SIGTERM.")
    p.add_argument("artifact", help="artifact folder, or a model repository written by `mbert-export triton`")
    p.add_argument("--name", help="model name (default: the artifact folder's name)")
    p.add_argument("--http-port", type=_port, default=8000, help="0: a free port")
    p.add_argument("--grpc-port", type=_port, default=8001, help="0: a free port")
    p.add_argument("--metrics-port", type=_port, default=8002, help="0: a free port")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1; 0.0.0.0 for all)")
    p.add_argument("--python-env", help="virtual environment that runs the python models (numpy<2, tokenizers, "
                                        "onnxruntime, or openvino for an OpenVINO build; default "
                                        "$MBERT_TRITON_ENV, else this one)")
    shaping = _add_repository_options(p)
    p.set_defaults(run=run_serve, repository_defaults={"name": None, **shaping})


def run_serve(args: argparse.Namespace) -> int:
    import signal
    import shutil
    import time

    from pathlib import Path

    from .serving.repository import client_models, read_repository, write_repository
    from .serving.server import ServerError, find_tritonserver, make_workdir, start_server

    try:
        install, _ = find_tritonserver(args.python_env)
    except ServerError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    given = Path(args.artifact)
    served = read_repository(given) if given.is_dir() and not (given / "model.onnx").exists() else []
    shaped = [dest for dest, default in args.repository_defaults.items() if getattr(args, dest) != default]
    if served and shaped:
        raise ValueError(f"{given} is a model repository, served as it is: "
                         f"{', '.join('--' + d.replace('_', '-') for d in shaped)} shape a repository written "
                         "from an artifact (mbert-export triton ... --repository DIR)")
    if install.pytriton_root is not None and args.layout == "ensemble":
        raise ValueError(f"the tritonserver of nvidia-pytriton ({install.binary}) has only the python backend; the "
                         "ensemble layout needs the onnxruntime/tensorrt backends of NVIDIA's tritonserver "
                         "container: use --layout python here")
    foreign = sorted({e.kind for e in served} - {"python", "ensemble"})
    if foreign and install.pytriton_root is not None:
        raise ValueError(f"{given} holds {', '.join(foreign)} models, and the tritonserver of nvidia-pytriton "
                         f"({install.binary}) has only the python backend: serve it in NVIDIA's tritonserver "
                         "container, or write a python-layout repository (mbert-export triton ... --layout python)")
    work = make_workdir("mbert-serve-")  # removed below; after a SIGKILL, by the next serve
    try:
        if served:
            repository, entries = given, served
        else:
            repository = work / "repository"
            entries = write_repository([args.artifact], repository, names=[args.name] if args.name else None,
                                       **_repository_options(args))
        progress(f"serve: starting tritonserver on {repository}")

        def interrupt(signum, frame):  # SIGTERM behaves as Ctrl-C: the server and its models are stopped
            raise KeyboardInterrupt

        previous = signal.signal(signal.SIGTERM, interrupt)
        try:
            try:
                server = start_server(repository, http_port=args.http_port, grpc_port=args.grpc_port,
                                      metrics_port=args.metrics_port, host=args.host, python_env=args.python_env,
                                      workdir=work / "server")
            except ServerError as exc:
                print(f"error: {exc}", file=sys.stderr)
                return 1
            except KeyboardInterrupt:  # start_server has stopped what it started
                progress("serve: interrupted while starting")
                return 130
            lines = [f"serving {args.artifact}:"]
            for entry in client_models(entries):
                lines += [f"  model {entry.name!r} ({entry.describe()}): http://{server.http_url}/v2/models/{entry.name}",
                          f"    client  TritonMegatronBert({server.http_url!r}, {entry.name!r})"]
            lines += [f"  gRPC    {server.grpc_url}", f"  metrics {server.metrics_url}", "Ctrl-C stops."]
            print("\n".join(lines), flush=True)
            interrupted = False
            try:
                while server.process.poll() is None:
                    time.sleep(0.2)
            except KeyboardInterrupt:
                interrupted = True
            finally:
                status = server.stop()
        finally:
            signal.signal(signal.SIGTERM, previous)
        if status is not None and status < 0:  # ended by a signal: a crash, or our SIGKILL after the timeout
            name = signal.Signals(-status).name if -status in signal.valid_signals() else str(-status)
            how = ("did not stop within 30 s of SIGTERM and was killed" if server.killed else
                   f"crashed (signal {-status}, {name}) instead of exiting")
            print(f"error: tritonserver {how}; the end of its log:\n{server.log()}", file=sys.stderr)
            return 1
        progress(f"serve: tritonserver stopped (status {status})")
        return 0 if interrupted else 1
    finally:
        shutil.rmtree(work, ignore_errors=True)


# ---------------------------------------------------------------------------- main
SUBCOMMANDS: list[Callable[[argparse._SubParsersAction], None]] = [add_convert, add_export, add_check, add_build,
                                                                      add_verify, add_compare, add_bench]
SUBCOMMANDS += [add_triton, add_serve]  # serving/


def _parsers() -> tuple[argparse.ArgumentParser, argparse._SubParsersAction]:
    parser = argparse.ArgumentParser(
        prog="mbert-export", formatter_class=argparse.RawDescriptionHelpFormatter, epilog=EPILOG,
        description="Deploy MegatronBERT: convert checkpoints, export ONNX per task, build engines.")
    sub = parser.add_subparsers(dest="command", metavar="SUBCOMMAND", required=True)
    for add in SUBCOMMANDS:
        add(sub)
    return parser, sub


def build_parser() -> argparse.ArgumentParser:
    return _parsers()[0]


def user_errors() -> tuple[type[BaseException], ...]:
    """Exceptions that mean bad input (reported in one line), as opposed to bugs (traceback)."""
    from .config import ConfigError

    from .runtime.tensorrt.loader import EngineMismatchError

    errors: list[type[BaseException]] = [ConfigError, FileExistsError, FileNotFoundError,
                                         PermissionError, ValueError, EngineMismatchError]
    try:
        from .checkpoints import CheckpointError
        from .build import BuildError
        from .export import ExportError
        from .precision import PrecisionError
        errors += [CheckpointError, ExportError, BuildError, PrecisionError]
    except ImportError:  # torch missing: only torch-free subcommands work
        pass
    return tuple(errors)


def script_parser(command: str, prog: str) -> argparse.ArgumentParser:
    """The parser of subcommand `command` as a standalone command named `prog` (scripts/build_engine.py,
    scripts/bench.py): its usage and errors name the script, not `mbert-export`."""
    standalone = _parsers()[1].choices[command]
    standalone.prog = prog
    return standalone


def main(argv: list[str] | None = None, parser: argparse.ArgumentParser | None = None) -> int:
    """Run the command line `argv` (default: sys.argv) of `parser` (default: mbert-export's)."""
    parser = parser or build_parser()
    args = parser.parse_args(argv)
    try:
        code = args.run(args)
        sys.stdout.flush()  # a reader that has gone is found here, not at interpreter exit
        return code
    except KeyboardInterrupt:  # Ctrl-C: what was left is said where it happened; no traceback
        return 130
    except BrokenPipeError:  # stdout's reader stopped (`... | head`): end quietly, as other Unix tools do
        try:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())  # Python's documented recipe (signal module docs)
            os.close(devnull)
        except (OSError, ValueError):  # stdout without a descriptor (an in-process caller's stream)
            pass
        return 1
    except ModuleNotFoundError as exc:
        print(f"error: {exc.name} is not installed; install the CPU setup with "
              "`pip install -r requirements-cpu.txt` (or the [export] extra)", file=sys.stderr)
        return 2
    except ImportError as exc:  # e.g. TensorRT asked for on a machine without it
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except user_errors() as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
