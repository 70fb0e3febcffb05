"""The parity suite's figures as one table: worst pooled top-1 agreement per task x graph x backend.

    python benchmarks/parity_table.py [--work DIR] [--backends onnxruntime,openvino] [--tasks mlm,nsp]

Builds (or reuses, under --work) the parity suite's artifacts: the demo encoder with a trained head
per task (tests/demo_heads.py) and its FP32, FP16, INT8 Q/DQ and CPU dynamic INT8 graphs. Runs
`compare_checkpoint` on each, as tests/test_parity_suite.py does (128 held-out sentences), on ONNX
Runtime (every graph) and OpenVINO (FP32 at f32 and at bf16 where the CPU has it, FP16 and INT8 Q/DQ
at f32). Per cell: the lowest pooled top-1 agreement over the task's logits outputs, with its counts
(for the bare encoder, which has no logits: its worst held-out cosine), and whether the whole
comparison passed the precision's bars. Writes
benchmarks/results/parity-table.{json,md}, naming the machine.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))

from demo_heads import GRAPHS, OPENVINO_ROWS, PARITY_SAMPLES, TaskArtifacts  # noqa: E402

from mbert_export.bench import check_results_writable, save_results  # noqa: E402
from mbert_export.machine import machine_info, machine_line  # noqa: E402
from mbert_export.parity import POOLED_TEXT, compare_checkpoint  # noqa: E402
from mbert_export.tasks import TASKS  # noqa: E402

#: (backend, graph, OpenVINO inference precision or None): the parity suite's rows.
ROWS = [("onnxruntime", graph, None) for graph in GRAPHS] + [("openvino", *row) for row in OPENVINO_ROWS]
BACKENDS = tuple(dict.fromkeys(backend for backend, _, _ in ROWS))


def choices(text: str, known, option: str) -> list[str]:
    """Comma-separated items of `known` (at least one), in order; a ValueError naming `option` otherwise."""
    items = [item.strip() for item in text.split(",") if item.strip()]
    unknown = [item for item in items if item not in known]
    if unknown or not items:
        raise ValueError(f"{option}: unknown or no {option.lstrip('-')} {unknown or items}; choose from "
                         f"{', '.join(known)}")
    return list(dict.fromkeys(items))


def column(backend: str, graph: str, precision: str | None) -> str:
    return f"{'ORT' if backend == 'onnxruntime' else 'OV'} {graph}" + (f" @{precision}" if precision else "")


def worst_pooled_top1(result: dict) -> dict:
    """The pooled held-out row with the lowest top-1 agreement (the logits output it belongs to)."""
    pooled = [r for r in result["rows"] if r["inputs"] == POOLED_TEXT and r["top1"] is not None]
    if not pooled:  # no logits (the bare encoder): judged by error and cosine; its worst held-out cosine
        text = [r for r in result["rows"] if r["inputs"].startswith("held-out text") and r["cosine"] is not None]
        worst = min(text, key=lambda r: r["cosine"])
        return {"output": worst["output"], "top1": None, "count": None, "cosine": worst["cosine"],
                "passed": result["passed"]}
    worst = min(pooled, key=lambda r: r["top1"])
    return {"output": worst["output"], "top1": worst["top1"], "count": list(worst["top1_count"]),
            "passed": result["passed"]}


def markdown(report: dict) -> str:
    columns = [column(*row) for row in ROWS if column(*row) in report["columns"]]
    lines = [f"Parity table: worst pooled top-1 agreement with the PyTorch reference over {PARITY_SAMPLES} held-out "
             f"sentences, per task (demo encoder + trained head) and graph (base: worst cosine of the hidden "
             f"states on held-out text); `FAIL` marks a comparison that "
             f"missed its precision's bars. {machine_line(report['machine'])}.", "",
             "| task | " + " | ".join(columns) + " |", "|---|" + "---|" * len(columns)]
    for task, cells in report["tasks"].items():
        shown = []
        for name in columns:
            cell = cells.get(name)
            if cell is None:
                shown.append("-")
            elif "skipped" in cell:
                shown.append("skipped")
            elif cell["top1"] is None:
                shown.append(f"cosine {cell['cosine']:.4f}" + ("" if cell["passed"] else " FAIL"))
            else:
                shown.append(f"{cell['top1']:.2%} ({cell['count'][0]}/{cell['count'][1]})"
                             + ("" if cell["passed"] else " FAIL"))
        lines.append(f"| {task} | " + " | ".join(shown) + " |")
    skipped = sorted({c["skipped"] for cells in report["tasks"].values() for c in cells.values() if "skipped" in c})
    lines += [""] + [f"Skipped: {reason}" for reason in skipped]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", default=str(REPO / "benchmarks" / "artifacts" / "parity"),
                        help="folder for the demo checkpoints and graphs (kept between runs)")
    parser.add_argument("--backends", default=",".join(BACKENDS),
                        help=f"comma-separated backends (default: all, {','.join(BACKENDS)})")
    parser.add_argument("--tasks", default=",".join(TASKS), help="comma-separated tasks (default: all)")
    parser.add_argument("--name", default="parity-table",
                        help="result name: benchmarks/results/NAME.* (default parity-table)")
    args = parser.parse_args(argv)
    try:
        backends = choices(args.backends, BACKENDS, "--backends")
        tasks = choices(args.tasks, tuple(TASKS), "--tasks")
        check_results_writable(args.name, suffixes=(".json", ".md"))
    except (ValueError, OSError) as exc:
        parser.error(str(exc))
    rows = [row for row in ROWS if row[0] in backends]
    bf16 = None
    if "openvino" in backends:
        from mbert_export.runtime.openvino import cpu_capabilities

        bf16 = "BF16" in cpu_capabilities()
    artifacts = TaskArtifacts(Path(args.work))
    report = {"samples": PARITY_SAMPLES, "machine": machine_info(), "columns": [column(*row) for row in rows],
              "tasks": {}}
    for task in tasks:
        started = time.perf_counter()
        print(f"{task}: making the checkpoint and graphs (first time: a few minutes)", flush=True)
        checkpoint, graphs = artifacts(task)
        cells = report["tasks"][task] = {}
        cache: dict = {}
        for backend, graph, precision in rows:
            name = column(backend, graph, precision)
            if precision == "bf16" and not bf16:
                cells[name] = {"skipped": "OpenVINO bf16 needs AVX512-BF16 or AMX, which this CPU lacks"}
                continue
            result = compare_checkpoint(checkpoint, graphs[graph], samples=PARITY_SAMPLES, backend=backend,
                                        inference_precision=precision, reference_cache=cache)
            cell = cells[name] = worst_pooled_top1(result)
            top1 = f"top-1 {cell['top1']:.2%} {tuple(cell['count'])}" if cell["top1"] is not None \
                else f"cosine {cell['cosine']:.4f}"
            top1 += f" on {cell['output']}"
            print(f"  {name:<22} {top1}{'' if result['passed'] else '  FAILED its bars'}", flush=True)
        print(f"{task}: {time.perf_counter() - started:.0f} s", flush=True)
    text = markdown(report)
    save_results(args.name, report, text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
