"""Time and peak RSS of the precision passes (FP16 conversion, INT8 calibration) on a preset's graph.

    PYTHONPATH=. python benchmarks/precision_cost.py --preset megatron-bert-345m-cased

Exports the preset's MLM head once (random weights) to --workdir/PRESET/fp32 (the preset is recorded
beside it; benchmarks/int8_memory.py reuses it), then runs each pass in a fresh
subprocess so that `ru_maxrss` is that pass's alone. INT8 calibrates on random token batches of
varied lengths up to the preset's positions (the cost does not depend on the text). Prints a markdown
table and writes benchmarks/results/precision_cost.json (atomically).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
RESULTS = REPO / "benchmarks" / "results" / "precision_cost.json"
WORKDIR = Path("/tmp/precision_cost")
#: Beside an exported work graph: the preset it was exported from.
PRESET_RECORD = "preset.txt"

EXPORT = r"""
import sys, torch
from mbert_export.config import preset_config
from mbert_export.export import export_onnx
from mbert_export.modeling import MegatronBertForMaskedLM
torch.manual_seed(0)
model = MegatronBertForMaskedLM(preset_config(sys.argv[1])).eval()
export_onnx(model, "mlm", sys.argv[2], verify=False, progress=lambda m: print(m, file=sys.stderr, flush=True))
"""

PASS = r"""
import json, resource, sys, time
from mbert_export.config import preset_config
from mbert_export.export import sample_inputs
from mbert_export.precision import convert_fp16, quantize_int8
from mbert_export.tasks import get_task
which, preset, src, dst = sys.argv[1:5]
say = lambda m: print(m, file=sys.stderr, flush=True)
start = time.perf_counter()
if which == "fp16":
    convert_fp16(src, dst, progress=say)
else:
    method, batches = which.split(":")[1], int(sys.argv[5])
    config, task = preset_config(preset), get_task("mlm")
    lengths = [n for n in (32, 64, 128, 256) if n <= config.max_position_embeddings] or [16]
    data = [sample_inputs(config, task, 8, lengths[i % len(lengths)], seed=i) for i in range(batches)]
    quantize_int8(src, dst, data, method=method, progress=say)
print(json.dumps({"pass": which, "seconds": time.perf_counter() - start,
                  "peak_rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}))
"""


def run(code: str, *args: str) -> str:
    out = subprocess.run([sys.executable, "-c", code, *args], check=True, text=True, stdout=subprocess.PIPE,
                         env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"})
    return out.stdout.strip().splitlines()[-1] if out.stdout.strip() else ""


def work_graph(workdir: Path, preset: str) -> Path:
    """The preset's FP32 work graph: one folder per preset, so another preset never reuses it."""
    return Path(workdir) / preset / "fp32" / "model.onnx"


def check_work_graph(graph: Path, preset: str) -> bool:
    """True when `graph` exists and was exported from `preset`; False when it must be exported; a
    ValueError when it holds another preset's graph (or one of unknown origin)."""
    if not graph.exists():
        return False
    record = graph.parent / PRESET_RECORD
    recorded = record.read_text().strip() if record.is_file() else None
    if recorded != preset:
        if recorded:
            raise ValueError(f"{graph} was exported from the {recorded} preset, not {preset}: pass the graph of "
                             f"{preset}, or remove {graph.parent} to export it again")
        raise ValueError(f"{graph} has no {PRESET_RECORD} saying which preset it was exported from: write "
                         f"{preset} into {record} if it is {preset}'s graph, or remove {graph.parent} to export it")
    return True


def ensure_work_graph(graph: Path, preset: str, tag: str, parser: argparse.ArgumentParser) -> int:
    """Export the preset's MLM graph (random weights) to `graph` unless it is there, and record the preset;
    another preset's graph is refused with parser.error. Returns the graph's bytes (with external data)."""
    from mbert_export.fileio import atomic_write_text

    try:
        cached = check_work_graph(graph, preset)
    except ValueError as exc:
        parser.error(str(exc))
    if cached:
        print(f"[{tag}] reusing {graph} ({preset})", file=sys.stderr, flush=True)
    else:
        print(f"[{tag}] exporting {preset} to {graph} ...", file=sys.stderr, flush=True)
        run(EXPORT, preset, str(graph))
        atomic_write_text(graph.parent / PRESET_RECORD, preset + "\n")
    return sum(p.stat().st_size for p in graph.parent.glob(graph.name + "*"))


def main(argv: list[str] | None = None) -> None:
    from mbert_export.config import PRESETS

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="megatron-bert-345m-cased", choices=list(PRESETS))
    parser.add_argument("--workdir", default=str(WORKDIR),
                        help=f"work folder; the FP32 graph goes to WORKDIR/PRESET/fp32 (default {WORKDIR})")
    parser.add_argument("--batches", type=int, default=16, help="INT8 calibration batches of 8 rows")
    parser.add_argument("--methods", default="max", help="comma-separated calibration methods")
    args = parser.parse_args(argv)
    if args.batches < 1:
        parser.error(f"--batches must be >= 1, got {args.batches}")
    work = Path(args.workdir) / args.preset
    fp32 = work_graph(Path(args.workdir), args.preset)
    weight_bytes = ensure_work_graph(fp32, args.preset, "precision_cost", parser)
    rows = []
    for which in ["fp16"] + [f"int8:{m}" for m in args.methods.split(",")]:
        print(f"[precision_cost] {which} ...", file=sys.stderr, flush=True)
        dst = work / which.replace(":", "-") / "model.onnx"
        rows.append(json.loads(run(PASS, which, args.preset, str(fp32), str(dst), str(args.batches))))
    gib = 1024**3
    print(f"| pass ({args.preset}, FP32 graph {weight_bytes / gib:.2f} GiB) | seconds | peak RSS GiB | peak / graph |")
    print("|---|---|---|---|")
    for r in rows:
        print(f"| {r['pass']} | {r['seconds']:.1f} | {r['peak_rss'] / gib:.2f} | {r['peak_rss'] / weight_bytes:.2f} |")
    from mbert_export.fileio import atomic_write_text

    atomic_write_text(RESULTS, json.dumps({"preset": args.preset, "graph_bytes": weight_bytes,
                                           "calibration_batches": args.batches, "runs": rows}, indent=1))


if __name__ == "__main__":
    main()
