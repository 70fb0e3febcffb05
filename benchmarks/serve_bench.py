"""Serving benchmark: tritonserver (python layout) against the in-process runtime, in one run.

    MBERT_TRITON_ENV=/path/to/server-venv python benchmarks/serve_bench.py [--artifact engines/mlm-int8]

For 1, 8 and 32 concurrent clients (one masked sentence per request):
requests/s and p50/p99 latency of
- in-process, threads: the clients call one shared OrtMegatronBert (ONNX Runtime is thread-safe);
- in-process, batched: the same sentences in batches of the client count, one thread (the batched
  work a dynamic batcher forms, without any serving cost: the throughput bar);
- Triton python layout with dynamic batching, and without it: N threads, each with its own
  TritonMegatronBert over HTTP on 127.0.0.1, in the same process as the other modes.
ONNX Runtime gets the same intra-op thread count in and out of the server. Without --artifact the
demo MLM is exported (needs torch). Writes benchmarks/results/serve-NAME.{json,md} and prints them.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from mbert_export.runtime import OrtMegatronBert  # noqa: E402

SENTENCES = ["The [MASK] statement is used to import a module.", "A [MASK] returns a new list of items.",
             "Use the [MASK] function to open a file for reading.", "The [MASK] of a list is its number of items.",
             "An [MASK] is raised when the key is missing from the dictionary.",
             "The for loop iterates over the [MASK] of a sequence.", "Strings are [MASK] in Python.",
             "A class can inherit [MASK] from another class."]


def machine() -> dict:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpu": cpu, "cores": len(os.sched_getaffinity(0)), "python": platform.python_version()}


def _stats(latencies: list[float], wall: float) -> dict:
    ms = np.asarray(latencies) * 1e3
    return {"requests": len(latencies), "seconds": round(wall, 3), "requests_per_s": round(len(latencies) / wall, 1),
            "p50_ms": round(float(np.percentile(ms, 50)), 3), "p99_ms": round(float(np.percentile(ms, 99)), 3)}


def run_clients(clients: int, make_call, seconds: float, max_requests: int) -> dict:
    """`clients` threads calling `make_call()`'s function in a loop for `seconds` (bounded by count)."""
    latencies: list[list[float]] = [[] for _ in range(clients)]
    errors: list[BaseException] = []
    barrier = threading.Barrier(clients + 1, timeout=120)
    per_client = max(1, max_requests // clients)

    def worker(index: int) -> None:
        try:
            call = make_call()
            call(SENTENCES[index % len(SENTENCES)])  # warm-up, untimed
            barrier.wait()
            stop = time.perf_counter() + seconds
            for j in range(per_client):
                if time.perf_counter() > stop:
                    break
                start = time.perf_counter()
                call(SENTENCES[(index + j) % len(SENTENCES)])
                latencies[index].append(time.perf_counter() - start)
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)
            with_barrier = barrier.n_waiting
            if with_barrier:
                barrier.abort()

    threads = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(clients)]
    for thread in threads:
        thread.start()
    barrier.wait()
    start, cpu = time.perf_counter(), time.process_time()
    for thread in threads:
        thread.join(seconds + 120)
    wall, cpu = time.perf_counter() - start, time.process_time() - cpu
    if errors:
        raise RuntimeError(f"{len(errors)} client(s) failed: {errors[0]!r}")
    flat = [x for per in latencies for x in per]
    return {**_stats(flat, wall), "failed": 0, "latencies": flat, "cpu_s": cpu}


def run_batched(runtime, clients: int, seconds: float, max_requests: int) -> dict:
    """One thread, `clients` sentences per call: the throughput of the batched work itself."""
    batch = [SENTENCES[i % len(SENTENCES)] for i in range(clients)]
    runtime.fill_mask(batch)
    latencies, start = [], time.perf_counter()
    while time.perf_counter() - start < seconds and len(latencies) * clients < max_requests:
        t0 = time.perf_counter()
        runtime.fill_mask(batch)
        latencies += [time.perf_counter() - t0] * clients
    return {**_stats(latencies, time.perf_counter() - start), "failed": 0, "latencies": latencies, "cpu_s": 0.0}


def export_demo(folder: Path) -> Path:
    from mbert_export.build import DEFAULT_CHECKPOINT
    from mbert_export.export import export_onnx
    from mbert_export.modeling import MegatronBertForMaskedLM

    export_onnx(MegatronBertForMaskedLM.from_pretrained(DEFAULT_CHECKPOINT), "mlm", folder / "model.onnx",
                tokenizer_dir=DEFAULT_CHECKPOINT, max_seq_len=128, verify=False)
    return folder


def markdown(report: dict) -> str:
    m = report["machine"]
    lines = [f"Serving benchmark `{report['name']}`: artifact {report['artifact']} ({report['precision']}), "
             f"{m['cpu']}, {m['cores']} cores, ONNX Runtime {report['threads']} intra-op threads everywhere, "
             f"tritonserver {report['server']}, N client threads (TritonMegatronBert over HTTP on 127.0.0.1; in-process: N threads on one runtime), one sentence per request, "
             f"{report['rounds']} interleaved rounds of {report['seconds']} s per cell; dynamic batching with "
             f"max_queue_delay {report['max_queue_delay_us']} us, {report.get('instances', 1)} model instance(s). Clients and server share the machine; "
             "in-process batched latency is the whole batch's.", "",
             "| clients | mode | requests/s | p50 ms | p99 ms | requests | vs in-process batched | client CPU ms/request |",
             "|---|---|---|---|---|---|---|---|"]
    for row in report["results"]:
        ratio = row.get("vs_batched")
        lines.append(f"| {row['clients']} | {row['mode']} | {row['requests_per_s']} | {row['p50_ms']} | "
                     f"{row['p99_ms']} | {row['requests']} | {'' if ratio is None else f'{ratio:.0%}'} | "
                     f"{row.get('client_cpu_ms', '')} |")
    s = report["summary"]
    lines += ["", f"Added latency per request (1 client, p50, Triton without batching - in-process): "
                  f"{s['added_latency_ms']} ms (goal <= 1 ms). At 8 clients, Triton with dynamic batching "
                  f"reaches {s['throughput_ratio_8']} of the in-process batched throughput (goal >= 0.9). "
                  f"Executed batch sizes (dynamic batching): {report.get('executed_batch_sizes')}. "
                  f"Requests sent to Triton: {s['triton_requests']}, failed: {s['triton_failed']}."]
    return "\n".join(lines) + "\n"


def main() -> int:
    from mbert_export.serving import TritonMegatronBert
    from mbert_export.serving.repository import write_repository
    from mbert_export.serving.server import start_server

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--artifact", help="MLM artifact folder (default: export the demo MLM)")
    parser.add_argument("--name", default="demo", help="result name: benchmarks/results/serve-NAME.*")
    parser.add_argument("--clients", default="1,8,32")
    parser.add_argument("--seconds", type=float, default=2.0, help="timed seconds per cell and round")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds over all cells")
    parser.add_argument("--max-requests", type=int, default=5000, help="request bound per cell")
    parser.add_argument("--threads", type=int, default=2, help="ONNX Runtime intra-op threads")
    parser.add_argument("--max-queue-delay-us", type=int, default=500)
    parser.add_argument("--instances", type=int, default=1, help="model instances in the server")
    parser.add_argument("--python-env", help="server venv (default $MBERT_TRITON_ENV)")
    args = parser.parse_args()
    clients = [int(c) for c in args.clients.split(",")]

    import onnxruntime

    with tempfile.TemporaryDirectory(prefix="serve-bench-") as work:
        work = Path(work)
        artifact = Path(args.artifact) if args.artifact else export_demo(work / "artifact")
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = args.threads
        runtime = OrtMegatronBert(artifact, session_options=options)
        report = {"name": args.name, "artifact": str(args.artifact or "demo MLM (exported, max 128 tokens)"),
                  "precision": runtime.precision, "machine": machine(), "threads": args.threads,
                  "seconds": args.seconds, "rounds": args.rounds, "server": "2.51.0 (nvidia-pytriton 0.7.0)",
                  "max_queue_delay_us": args.max_queue_delay_us, "instances": args.instances, "results": []}
        rows = report["results"]
        # Both Triton variants in one server (the idle model costs nothing), so that every cell of every
        # round runs interleaved with the others: the machine's load drifts, ratios within a round hold.
        repository = work / "repository"
        write_repository([artifact], repository, names=["mlm"], max_queue_delay_us=args.max_queue_delay_us,
                         threads=args.threads, instances=args.instances)
        write_repository([artifact], work / "plain", names=["mlm_plain"], dynamic_batching=False,
                         threads=args.threads, instances=args.instances)
        (work / "plain" / "mlm_plain").rename(repository / "mlm_plain")
        modes = {"in-process, threads": None, "in-process, batched": None,
                 "triton python, dynamic batching": "mlm", "triton python, no batching": "mlm_plain"}
        model_of = modes
        cells: dict[tuple[int, str], list[dict]] = {}
        with start_server(repository, python_env=args.python_env) as server:
            before = TritonMegatronBert(server.http_url, "mlm").batch_sizes()
            for round_index in range(args.rounds):
                for n in clients:
                    for mode, model in modes.items():
                        time.sleep(0.05)  # the previous mode's spinning threads settle
                        if mode == "in-process, threads":
                            result = run_clients(n, lambda: runtime.fill_mask, args.seconds, args.max_requests)
                        elif mode == "in-process, batched":
                            result = run_batched(runtime, n, args.seconds, args.max_requests)
                        else:
                            def make_call(url=server.http_url, model=model):
                                return TritonMegatronBert(url, model, timeout=120).fill_mask

                            result = run_clients(n, make_call, args.seconds, args.max_requests)
                        cells.setdefault((n, mode), []).append(result)
                        print(f"round {round_index + 1}: {n:>3} clients  {mode:<32} {result['requests_per_s']:>8} "
                              f"req/s  p50 {result['p50_ms']:.2f} ms  p99 {result['p99_ms']:.2f} ms", flush=True)
            after = TritonMegatronBert(server.http_url, "mlm").batch_sizes()
            report["executed_batch_sizes"] = {str(k): v - before.get(k, 0) for k, v in sorted(after.items())}
        runtime.close()
        for n in clients:
            for mode in modes:
                parts = cells[n, mode]
                latencies = [x for p in parts for x in p.pop("latencies")]
                row = {"clients": n, "mode": mode, **_stats(latencies, sum(p["seconds"] for p in parts)),
                       "failed": sum(p["failed"] for p in parts)}
                if model_of[mode]:  # this process ran only the clients: their CPU time per request
                    row["client_cpu_ms"] = round(1e3 * sum(p["cpu_s"] for p in parts) / max(1, row["requests"]), 3)
                rows.append(row)

    batched = {r["clients"]: r["requests_per_s"] for r in rows if r["mode"] == "in-process, batched"}
    for row in rows:
        row["vs_batched"] = round(row["requests_per_s"] / batched[row["clients"]], 3)

    def cell(n, mode):
        return next(r for r in rows if r["clients"] == n and r["mode"] == mode)

    triton = [r for r in rows if r["mode"].startswith("triton")]
    report["summary"] = {
        "added_latency_ms": (round(cell(1, "triton python, no batching")["p50_ms"] - cell(1, "in-process, threads")["p50_ms"], 3)
                             if 1 in clients else None),
        "throughput_ratio_8": (cell(8, "triton python, dynamic batching")["vs_batched"] if 8 in clients else None),
        "triton_requests": sum(r["requests"] for r in triton), "triton_failed": sum(r["failed"] for r in triton)}
    out = REPO / "benchmarks" / "results" / f"serve-{args.name}"
    out.with_suffix(".json").write_text(json.dumps(report, indent=1) + "\n")
    text = markdown(report)
    out.with_suffix(".md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
