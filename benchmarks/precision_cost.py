"""Time and peak RSS of the precision passes (FP16 conversion, INT8 calibration) on a preset's graph.

    PYTHONPATH=. python benchmarks/precision_cost.py --preset megatron-bert-345m-cased

Exports the preset's MLM head once (random weights) to a work folder, then runs each pass in a fresh
subprocess so that `ru_maxrss` is that pass's alone. INT8 calibrates on random token batches of
varied lengths (the cost does not depend on the text). Prints a markdown table and writes
benchmarks/results/precision_cost.json.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results" / "precision_cost.json"

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
    lengths = (32, 64, 128, 256)
    data = [sample_inputs(config, task, 8, lengths[i % 4], seed=i) for i in range(batches)]
    quantize_int8(src, dst, data, method=method, progress=say)
print(json.dumps({"pass": which, "seconds": time.perf_counter() - start,
                  "peak_rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}))
"""


def run(code: str, *args: str) -> str:
    out = subprocess.run([sys.executable, "-c", code, *args], check=True, text=True, stdout=subprocess.PIPE,
                         env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"})
    return out.stdout.strip().splitlines()[-1] if out.stdout.strip() else ""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="megatron-bert-345m-cased")
    parser.add_argument("--workdir", default="/tmp/precision_cost")
    parser.add_argument("--batches", type=int, default=16, help="INT8 calibration batches of 8 rows")
    parser.add_argument("--methods", default="max", help="comma-separated calibration methods")
    args = parser.parse_args()
    work = Path(args.workdir)
    fp32 = work / "fp32" / "model.onnx"
    if not fp32.exists():
        print(f"[precision_cost] exporting {args.preset} ...", file=sys.stderr, flush=True)
        run(EXPORT, args.preset, str(fp32))
    weight_bytes = sum(p.stat().st_size for p in fp32.parent.iterdir())
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
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps({"preset": args.preset, "graph_bytes": weight_bytes, "calibration_batches":
                                   args.batches, "runs": rows}, indent=1))


if __name__ == "__main__":
    main()
