"""Export time and peak RSS of `export_onnx` for a preset (random weights), one fresh process each.

    PYTHONPATH=. python benchmarks/export_cost.py megatron-bert-345m-cased erlangshen-megatronbert-1.3b

Each preset runs in its own subprocess so that `ru_maxrss` belongs to that export alone. Reported:
weight bytes, RSS after building the model, peak RSS of the export without verification and of the
verification step (ONNX Runtime session + reference forward passes, at min(512, the preset's positions)
tokens), and times. Writes benchmarks/results/export_cost.json (atomically) and prints a markdown table.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
#: Longest verification input, capped at each preset's position table (tiny has 64 positions).
VERIFY_TOKENS = 512
RESULTS = REPO / "benchmarks" / "results" / "export_cost.json"

CHILD = r"""
import json, resource, sys, tempfile, time, torch
from pathlib import Path
from mbert_export.config import preset_config
from mbert_export.export import export_onnx, verify_against_reference
from mbert_export.modeling import MegatronBertForMaskedLM
from mbert_export.tasks import get_task
preset, max_seq = sys.argv[1], int(sys.argv[2])
rss = lambda: resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
torch.manual_seed(0)
t0 = time.perf_counter()
model = MegatronBertForMaskedLM(preset_config(preset)).eval()
weights = sum(p.numel() * p.element_size() for p in model.parameters())
built, build_s = rss(), time.perf_counter() - t0
with tempfile.TemporaryDirectory(dir="/tmp") as tmp:
    t0 = time.perf_counter()
    result = export_onnx(model, "mlm", Path(tmp) / "model.onnx", verify=False,
                         progress=lambda m: print(m, file=sys.stderr, flush=True))
    export_s, export_peak = time.perf_counter() - t0, rss()
    t0 = time.perf_counter()
    diff = verify_against_reference(model, get_task("mlm"), result.path, max_seq)
    verify_s = time.perf_counter() - t0
    files = {p.name: p.stat().st_size for p in Path(tmp).iterdir()}
print(json.dumps(dict(preset=preset, weight_bytes=weights, rss_after_build=built, build_s=build_s,
                      export_s=export_s, export_peak_rss=export_peak, verify_s=verify_s,
                      verify_peak_rss=rss(), verify_max_seq=max_seq, max_abs_diff=diff, files=files)))
"""


def verify_tokens(preset: str) -> int:
    from mbert_export.config import preset_config

    return min(VERIFY_TOKENS, preset_config(preset).max_position_embeddings)


def main() -> None:
    from mbert_export.config import PRESETS

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("presets", nargs="*", default=["megatron-bert-345m-cased"],
                        help="model presets, random weights (default megatron-bert-345m-cased; known: "
                             f"{', '.join(PRESETS)})")
    presets = parser.parse_args().presets
    unknown = [p for p in presets if p not in PRESETS]
    if unknown:
        parser.error(f"unknown preset {', '.join(unknown)}; choose from {', '.join(PRESETS)}")
    runs = []
    for preset in presets:
        print(f"[export_cost] {preset} ...", file=sys.stderr, flush=True)
        out = subprocess.run([sys.executable, "-c", CHILD, preset, str(verify_tokens(preset))], check=True, text=True,
                             stdout=subprocess.PIPE, env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"})
        runs.append(json.loads(out.stdout.strip().splitlines()[-1]))
    gib = 1024**3
    print("| preset | weights GiB | export s | export peak RSS GiB | peak / weights | verify s | "
          "peak with verify GiB | max abs diff |")
    print("|---|---|---|---|---|---|---|---|")
    for r in runs:
        print(f"| {r['preset']} | {r['weight_bytes'] / gib:.2f} | {r['export_s']:.1f} | "
              f"{r['export_peak_rss'] / gib:.2f} | {r['export_peak_rss'] / r['weight_bytes']:.2f} | "
              f"{r['verify_s']:.1f} | {r['verify_peak_rss'] / gib:.2f} | {max(r['max_abs_diff'].values()):.1e} |")
    from mbert_export.fileio import atomic_write_text

    atomic_write_text(RESULTS, json.dumps({"runs": runs}, indent=1))


if __name__ == "__main__":
    main()
