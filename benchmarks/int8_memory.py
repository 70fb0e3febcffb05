"""Peak RSS and time of the memory-lean INT8 pass (`mbert_export.qdq.quantize_int8_lean`) on 345M.

    PYTHONPATH=. python benchmarks/int8_memory.py [--preset P] [--src /tmp/precision_cost/P/fp32/model.onnx]

The FP32 graph of --preset comes from benchmarks/precision_cost.py's work folder (exported there if
missing; a graph recorded as another preset's is refused). Each method runs
in a fresh subprocess: `ru_maxrss` gives its overall peak, and a thread sampling /proc/self/statm
every 10 ms gives the peak of each phase (calibration, quantization), switched by the pass's
progress messages. Calibration data: 16 batches of 8 rows at lengths 32, 64, 128, 256 (those the
preset's positions hold; random ids: the cost does not depend on the text). Afterwards the INT8 graph
of the first method is compared with the FP32 graph on 2 random batches of 4 x min(128, positions)
(top-1 agreement of the logits; random weights, so this is only a sanity check, not an accuracy
result). Prints a markdown table and writes benchmarks/results/int8_memory.json (atomically); ONNX Runtime's `quantize_static` row, when
benchmarks/results/precision_cost.json has it, is shown for comparison.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
from precision_cost import WORKDIR, ensure_work_graph, work_graph  # noqa: E402

RESULTS = REPO / "benchmarks" / "results" / "int8_memory.json"
BEFORE = REPO / "benchmarks" / "results" / "precision_cost.json"
GIB = 1024**3

PASS = r"""
import json, resource, sys, threading, time
from mbert_export.config import preset_config
from mbert_export.export import sample_inputs
from mbert_export.qdq import quantize_int8_lean
from mbert_export.tasks import get_task

preset, src, dst, method, count = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5])
config, task = preset_config(preset), get_task("mlm")
lengths = [n for n in (32, 64, 128, 256) if n <= config.max_position_embeddings] or [16]
batches = [sample_inputs(config, task, 8, lengths[i % len(lengths)], seed=i) for i in range(count)]
page = resource.getpagesize()
phase, peaks, started = ["setup"], {}, {}

def rss():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * page

def sample():
    while True:
        peaks[phase[0]] = max(peaks.get(phase[0], 0), rss())
        time.sleep(0.01)

def enter(name):
    peaks[name] = max(peaks.get(name, 0), rss())
    phase[0] = name
    started[name] = time.perf_counter()

def progress(message):
    print(message, file=sys.stderr, flush=True)
    if message.startswith("int8: calibrating"):
        enter("calibration")
    elif message.startswith("int8: quantizing"):
        enter("quantization")

threading.Thread(target=sample, daemon=True).start()
start = time.perf_counter()
nodes = quantize_int8_lean(src, dst, batches, method=method, progress=progress)
end = time.perf_counter()
print(json.dumps({
    "method": method, "batches": count, "nodes": len(nodes), "seconds": end - start,
    "calibration_seconds": started["quantization"] - started["calibration"],
    "quantization_seconds": end - started["quantization"],
    "peak_rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
    "sampled_peak_rss": {k: v for k, v in peaks.items()},
}))
"""

COMPARE = r"""
import json, sys
from mbert_export.config import preset_config
from mbert_export.export import sample_inputs
from mbert_export.precision import compare_graphs
from mbert_export.tasks import get_task

preset, fp32, int8 = sys.argv[1:4]
config = preset_config(preset)
seq = min(128, config.max_position_embeddings)
batches = [sample_inputs(config, get_task("mlm"), 4, seq, seed=1000 + i) for i in range(2)]
report = compare_graphs(fp32, int8, batches, real_vocab_size=config.real_vocab_size)["logits"]
print(json.dumps({"shape": [4, seq], **report}))
"""


def run(code: str, *args: str) -> dict:
    out = subprocess.run([sys.executable, "-c", code, *args], check=True, text=True, stdout=subprocess.PIPE,
                         env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"})
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> None:
    from mbert_export.config import PRESETS

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="megatron-bert-345m-cased", choices=list(PRESETS))
    parser.add_argument("--src", help=f"FP32 graph of the preset (default {WORKDIR}/PRESET/fp32/model.onnx, "
                                      "exported there if missing)")
    parser.add_argument("--workdir", default="/tmp/int8_memory", help="INT8 graphs go to WORKDIR/PRESET/METHOD")
    parser.add_argument("--batches", type=int, default=16, help="calibration batches of 8 rows")
    parser.add_argument("--methods", default="max,percentile", help="comma-separated calibration methods")
    args = parser.parse_args(argv)
    if args.batches < 1:
        parser.error(f"--batches must be >= 1, got {args.batches}")
    if not [m for m in args.methods.split(",") if m.strip()]:
        parser.error("--methods names no calibration method")
    src = Path(args.src) if args.src else work_graph(WORKDIR, args.preset)
    graph_bytes = ensure_work_graph(src, args.preset, "int8_memory", parser)
    rows, outputs = [], {}
    for method in args.methods.split(","):
        print(f"[int8_memory] {method} ...", file=sys.stderr, flush=True)
        outputs[method] = Path(args.workdir) / args.preset / method / "model.onnx"
        rows.append(run(PASS, args.preset, str(src), str(outputs[method]), method, str(args.batches)))
    first = args.methods.split(",")[0]
    print(f"[int8_memory] comparing {first} INT8 with FP32 ...", file=sys.stderr, flush=True)
    agreement = run(COMPARE, args.preset, str(src), str(outputs[first]))
    before = json.loads(BEFORE.read_text()) if BEFORE.exists() else {}
    # ONNX Runtime's rows only when precision_cost.json measured this preset
    ort_rows = [r for r in before.get("runs", []) if r["pass"].startswith("int8:")] \
        if before.get("preset") == args.preset else []

    print(f"| INT8 pass ({args.preset}, FP32 graph {graph_bytes / GIB:.2f} GiB, {args.batches} batches) "
          "| seconds (calib + quant) | peak RSS GiB | calibration peak | quantization peak |")
    print("|---|---|---|---|---|")
    for r in rows:
        s = r["sampled_peak_rss"]
        print(f"| mbert_export.qdq {r['method']} | {r['seconds']:.0f} ({r['calibration_seconds']:.0f} + "
              f"{r['quantization_seconds']:.0f}) | {r['peak_rss'] / GIB:.2f} | {s.get('calibration', 0) / GIB:.2f} | "
              f"{s.get('quantization', 0) / GIB:.2f} |")
    for r in ort_rows:
        print(f"| ORT quantize_static {r['pass'].split(':')[1]} (precision_cost.json, "
              f"{before.get('calibration_batches')} batches) | {r['seconds']:.0f} | {r['peak_rss'] / GIB:.2f} | | |")
    print(f"\nINT8 ({first}) vs FP32 on 2 random batches of {agreement['shape'][0]} x {agreement['shape'][1]}: "
          "top-1 agreement "
          f"{agreement.get('top1_agreement', float('nan')):.2%} over {agreement.get('positions')} tokens, "
          f"max |diff| {agreement['max_abs_diff']:.3g}, mean |diff| {agreement['mean_abs_diff']:.3g} "
          "(random weights: near-uniform logits, a sanity check only)")
    from mbert_export.fileio import atomic_write_text

    atomic_write_text(RESULTS, json.dumps({"preset": args.preset, "graph_bytes": graph_bytes, "calibration_batches":
                                   args.batches, "runs": rows, "int8_vs_fp32": {"method": first, **agreement},
                                   "ort_quantize_static": ort_rows}, indent=1))


if __name__ == "__main__":
    main()
