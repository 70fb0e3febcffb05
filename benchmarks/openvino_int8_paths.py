"""Which INT8 path runs fastest on OpenVINO on this CPU, against ONNX Runtime's dynamic INT8 recipe.

    python benchmarks/openvino_int8_paths.py [--model megatron-bert-345m-cased] [--shapes 1x128,8x128]
        [--repeats 5] [--threads 2] [--name NAME]

Rows, interleaved in one run (so only their ratios mean anything), on the bench's MLM graphs:
- pytorch-fp32: the reference (speedup 1.00x);
- ort-int8-dynamic: ONNX Runtime's dynamic INT8 recipe (the CPU build's default without OpenVINO);
- ov-f32 and ov-int8: OpenVINO on the FP32 graph and on the calibrated Q/DQ graph (the OpenVINO build's INT8);
  ov-int8-bf16: the Q/DQ graph at bf16 outside its int8 layers (CPUs with bf16: the build's INT8 default
  there when it keeps the INT8 bar);
- ov-int8-weights: int8 weights only (NNCF `compress_weights`, INT8_ASYM per output channel), with
  OpenVINO's dynamic activation quantization at its default group size; ov-int8-weights-no-dq: the
  same with it off (`DYNAMIC_QUANTIZATION_GROUP_SIZE` 0); ov-int8-weights-bf16: at bf16. Needs `pip install nncf`, else skipped.

Issue 13 asks for an OpenVINO INT8 path >= 1.15x the ONNX Runtime recipe at 1 x 128 and 8 x 128; this
says which one comes closest on the machine it runs on. With a trained checkpoint (`--model demo`)
it adds top-1 agreement with PyTorch FP32 at masked held-out positions (the INT8 bar is 99%).
Writes benchmarks/results/openvino-int8-paths[-NAME].{json,md}, naming the machine (without --name:
openvino-int8-paths for the default 345M preset, openvino-int8-paths-MODEL for any other model, e.g.
openvino-int8-paths-demo). Files saved after each shape are marked partial until the run ends.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from mbert_export.bench import (check_arguments, check_model, check_name,  # noqa: E402
                                check_results_writable, clip_shapes, held_out_agreement, load_model, make_runners,
                                model_label, parse_shapes, prepare_graphs, save_results, stop_on_interrupt,
                                time_shapes)
from mbert_export.machine import machine_info, machine_line  # noqa: E402

BENCH_ROWS = ("pytorch-fp32", "ort-int8-dynamic", "ov-f32", "ov-int8", "ov-int8-bf16")
DEFAULT_MODEL = "megatron-bert-345m-cased"
RESULT_PREFIX = "openvino-int8-paths"
#: Weight-only rows: name -> (inference precision, extra OpenVINO compile properties); bf16 rows only
#: where the CPU has bf16.
WEIGHT_ONLY_ROWS = {"ov-int8-weights": ("f32", {}),
                    "ov-int8-weights-no-dq": ("f32", {"DYNAMIC_QUANTIZATION_GROUP_SIZE": 0}),
                    "ov-int8-weights-bf16": ("bf16", {})}


def weight_only_graph(fp32_graph: Path, say) -> Path | None:
    """The FP32 graph with int8 weights (NNCF) as OpenVINO IR, saved once per FP32 graph and NNCF
    version beside the bench's graphs of that model; None when nncf is missing."""
    try:
        import nncf
    except ImportError:
        say("openvino_int8_paths: ov-int8-weights rows skipped (pip install nncf)")
        return None
    import openvino

    from mbert_export.runtime.openvino.loader import graph_sha256

    key = f"nncf-{nncf.__version__}-openvino-{openvino.__version__.split('-')[0]}-{graph_sha256(fp32_graph)[:16]}"
    target = fp32_graph.parent.parent / "ov-int8-weights" / key / "model.xml"
    if target.exists():
        return target

    say(f"openvino_int8_paths: compressing the weights of {fp32_graph} to int8 with NNCF {nncf.__version__}")
    compressed = nncf.compress_weights(openvino.Core().read_model(str(fp32_graph)),
                                       mode=nncf.CompressWeightsMode.INT8_ASYM)
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name("partial.xml")  # saved under another name, renamed when complete
    openvino.save_model(compressed, str(partial))
    partial.with_suffix(".bin").replace(target.with_suffix(".bin"))
    partial.replace(target)
    return target


def _nncf_version() -> str | None:
    try:
        import nncf
    except ImportError:
        return None
    return nncf.__version__


def weight_only_runners(graph: Path, threads: int, say) -> tuple[dict, dict]:
    """(runners, row -> the dynamic quantization group size it was compiled with)."""
    import openvino

    from mbert_export.runtime.openvino import OpenVinoBackend

    from mbert_export.runtime.openvino import cpu_capabilities

    runners, groups = {}, {}
    default_group = int(openvino.Core().get_property("CPU", "DYNAMIC_QUANTIZATION_GROUP_SIZE"))
    for name, (precision, config) in WEIGHT_ONLY_ROWS.items():
        if precision == "bf16" and "BF16" not in cpu_capabilities():
            say(f"openvino_int8_paths: {name} skipped (no bf16 on this CPU)")
            continue
        backend = OpenVinoBackend(graph, inference_precision=precision, threads=threads, cache_dir=False,
                                  config=config)
        groups[name] = config.get("DYNAMIC_QUANTIZATION_GROUP_SIZE", default_group)
        say(f"openvino_int8_paths: {name} = {backend.describe()}, dynamic quantization group size {groups[name]}")
        runners[name] = lambda feeds, b=backend: b.infer(feeds)["logits"]
    return runners, groups


def markdown(report: dict) -> str:
    groups = ", ".join(f"{row} {size}" for row, size in report.get("dynamic_quantization_group_size", {}).items())
    lines = [f"OpenVINO INT8 paths on `{report['model']}`, {machine_line(report['machine'])}, nncf "
             f"{report['nncf'] or 'not installed'}"
             + (f" (dynamic quantization group size: {groups}; 0 = off)" if groups else "") + "; median of "
             f"{report['repeats']} interleaved rounds; speedup against PyTorch FP32 and ratio against ONNX Runtime's "
             "dynamic INT8 recipe, both measured in this run.", "",
             "| batch x seq | row | median ms | speedup vs PyTorch FP32 | vs ort-int8-dynamic | "
             "top-1 vs PyTorch FP32, all positions |", "|---|---|---|---|---|---|"]
    for shape in report["results"]:
        ort = shape["backends"]["ort-int8-dynamic"]["median_ms"]
        for name, row in shape["backends"].items():
            lines.append(f"| {shape['batch']} x {shape['sequence']} | {name} | {row['median_ms']:.1f} | "
                         f"{row.get('speedup_vs_pytorch_fp32', float('nan')):.2f}x | {ort / row['median_ms']:.2f}x | "
                         f"{row.get('top1_agreement', float('nan')):.2%} |")
    agreement = report.get("held_out_agreement")
    if agreement:
        lines += ["", "Masked held-out text: top-1 agreement with PyTorch FP32.", "", "| row | top-1 agreement |",
                  "|---|---|"]
        lines += [f"| {name} | {row.get('top1_agreement', float('nan')):.2%} |" for name, row in agreement.items()]
    return "\n".join(lines) + "\n"


def result_name(model: str, suffix: str) -> str:
    """openvino-int8-paths[-SUFFIX]; without a suffix, the model's label for any model but the default."""
    if suffix:
        check_name(suffix)
    elif model != DEFAULT_MODEL:
        suffix = model_label(model)
    return RESULT_PREFIX + (f"-{suffix}" if suffix else "")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=DEFAULT_MODEL,
                        help="bench model: a preset (random weights, speed only) or demo / a checkpoint folder "
                             f"(default {DEFAULT_MODEL})")
    parser.add_argument("--shapes", default="1x128,8x128", help="comma-separated BATCHxSEQ (default 1x128,8x128); "
                        "sequences longer than the model's positions are timed at its maximum")
    parser.add_argument("--repeats", type=int, default=5, help="interleaved rounds per shape (default 5)")
    parser.add_argument("--threads", type=int, default=2, help="threads for every row (default 2)")
    parser.add_argument("--name", default="", help="result name suffix: benchmarks/results/openvino-int8-paths-NAME.* "
                        "(default: none for the default model, else the model's name, e.g. -demo)")
    args = parser.parse_args(argv)
    say = lambda message: print(message, file=sys.stderr, flush=True)  # noqa: E731
    try:
        shapes = parse_shapes(args.shapes)
        check_arguments(BENCH_ROWS, [], [], shapes, args.threads, 1, args.repeats, float("inf"), None)
        check_model(args.model)
        name = result_name(args.model, args.name)
        check_results_writable(name, suffixes=(".json", ".md"))
    except (ValueError, OSError) as exc:
        parser.error(str(exc))

    model, checkpoint = load_model(args.model, say)
    shapes = clip_shapes(shapes, model.config.max_position_embeddings, say, "openvino_int8_paths")
    report = {"name": name, "model": args.model, "repeats": args.repeats, "machine": machine_info(args.threads),
              "nncf": _nncf_version(), "dynamic_quantization_group_size": {}, "complete": False, "results": [],
              "held_out_agreement": None}
    with stop_on_interrupt(name, report, len(shapes)):
        graphs = prepare_graphs(model, args.model, checkpoint, BENCH_ROWS, say)
        runners = make_runners(model, graphs, BENCH_ROWS, args.threads, say)
        weights = weight_only_graph(graphs["ort-fp32"], say)
        if weights is not None:
            weight_runners, report["dynamic_quantization_group_size"] = weight_only_runners(weights, args.threads, say)
            runners.update(weight_runners)
        say(f"openvino_int8_paths: {machine_line(report['machine'])}")
        time_shapes(runners, shapes, model.config.real_vocab_size, report, lambda r: save_results(name, r, markdown(r)),
                    1, args.repeats, float("inf"), say, "openvino_int8_paths")
        if checkpoint is not None:
            report["held_out_agreement"] = held_out_agreement(runners, checkpoint, model.config.real_vocab_size,
                                                              model.config.max_position_embeddings, say)
    report["complete"] = True
    base = save_results(name, report, markdown(report))
    print(markdown(report))
    say(f"openvino_int8_paths: wrote {base}.json and .md")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:  # stop_on_interrupt has said what was saved
        sys.exit(130)
