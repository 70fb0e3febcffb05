"""What tritonserver itself adds to a lone request, as a function of how long the model works.

    MBERT_TRITON_ENV=/path/to/server-venv python benchmarks/triton_floor.py --perf-analyzer PATH \
        [--work-ms 0,0.25,0.5,1,2,4,8,16] [--rounds 2] [--seconds 2]

One server with one python model that busy-works W ms per execute() and answers `[]` (serve_bench's
echo model), loaded by perf_analyzer at concurrency 1 over HTTP on 127.0.0.1, for each W in
interleaved rounds. Per W: p50 latency, p50 minus W (what Triton, its python backend and the client
add around W ms of model work: no python-backend model with that much work can answer faster), and
its split into the part inside the model's execute() by Triton's own count (the round trip to the
python stub process) and the part outside (HTTP, scheduling, the client). The issue's latency goal
(<= 1 ms added) is reachable on a machine only where this floor, at the model's own work, is under it.
Writes benchmarks/results/triton-floor[-NAME].{json,md}, naming the machine.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from serve_bench import perf_analyzer_env, run_perf_analyzer, set_busy_ms, write_echo_model  # noqa: E402

from mbert_export.bench import check_name, check_results_writable, save_results  # noqa: E402
from mbert_export.machine import machine_info, machine_line  # noqa: E402


def markdown(report: dict) -> str:
    lines = [f"Triton floor: one python model that busy-works W ms per request, perf_analyzer at concurrency 1 "
             f"over HTTP on 127.0.0.1, tritonserver {report['server']}; median of {report['rounds']} interleaved "
             f"rounds of {report['seconds']} s; {machine_line(report['machine'])}.", "",
             "| model work W ms | p50 ms | added: p50 - W | inside execute() - W (Triton's count) | "
             "outside execute() | requests |", "|---|---|---|---|---|---|"]
    for row in report["results"]:
        lines.append(f"| {row['work_ms']} | {row['p50_ms']} | {row['added_ms']} | {row['in_model_added_ms']} | "
                     f"{row['outside_model_ms']} | {row['requests']} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    from mbert_export.serving.server import ENV_VARIABLE, find_tritonserver, start_server

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--perf-analyzer", required=True, help="perf_analyzer binary (tritonclient==2.51.0)")
    parser.add_argument("--work-ms", default="0,0.25,0.5,1,2,4,8,16", help="comma-separated model work per request")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--seconds", type=float, default=2.0, help="perf_analyzer measurement window per cell")
    parser.add_argument("--name", default="", help="result name suffix: benchmarks/results/triton-floor-NAME.*")
    parser.add_argument("--python-env", help=f"server venv (default ${ENV_VARIABLE})")
    args = parser.parse_args(argv)
    try:
        name = "triton-floor" + (f"-{check_name(args.name)}" if args.name else "")
        check_results_writable(name, suffixes=(".json", ".md"))
    except (ValueError, OSError) as exc:
        parser.error(str(exc))
    works = [float(w) for w in args.work_ms.split(",")]
    if any(w < 0 for w in works):
        parser.error("--work-ms takes times >= 0")
    install, server_env = find_tritonserver(args.python_env)
    binary = Path(args.perf_analyzer)
    cells: dict[float, list[dict]] = {w: [] for w in works}
    with tempfile.TemporaryDirectory(prefix="triton-floor-") as work:
        work = Path(work)
        env = perf_analyzer_env(binary, install.library_dirs, work)
        version = write_echo_model(work / "repository", "echo_busy")
        with start_server(work / "repository", python_env=server_env) as server:
            for round_index in range(args.rounds):
                for w in works:
                    set_busy_ms(version, w)
                    time.sleep(0.1)  # the model rereads its work time on the next request
                    result = run_perf_analyzer(binary, env, server.http_url, "echo_busy", 1, args.seconds, work)
                    cells[w].append(result)
                    print(f"round {round_index + 1}: work {w:>6} ms  p50 {result['p50_ms']:.3f} ms  "
                          f"added {result['p50_ms'] - w:.3f} ms", flush=True)
    rows = []
    for w, parts in cells.items():
        p50 = float(np.median([p["p50_ms"] for p in parts]))
        in_model = float(np.median([p["server_compute_ms"] for p in parts]))
        rows.append({"work_ms": w, "p50_ms": round(p50, 3), "added_ms": round(p50 - w, 3),
                     "in_model_added_ms": round(in_model - w, 3), "outside_model_ms": round(p50 - in_model, 3),
                     "requests": sum(p["requests"] for p in parts)})
    report = {"server": "2.51.0 (nvidia-pytriton 0.7.0)", "machine": machine_info(), "rounds": args.rounds,
              "seconds": args.seconds, "perf_analyzer": str(binary), "results": rows}
    text = markdown(report)
    save_results(name, report, text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
