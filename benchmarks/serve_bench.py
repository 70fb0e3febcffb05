"""Serving benchmark: tritonserver (python layout) against the in-process runtime, in one run.

    MBERT_TRITON_ENV=/path/to/server-venv python benchmarks/serve_bench.py [--artifact engines/mlm-int8]

For 1, 8 and 32 concurrent clients (one masked sentence per request): requests/s and p50/p99
latency of
- in-process, threads: N client threads over the runtimes, configured as the server's instances
  (`--instances` OrtMegatronBert, each with the cores divided among them; ONNX Runtime is thread-safe);
- in-process, batched: the N sentences in flight split into one batch per runtime, each runtime in
  its own thread (the batched work a dynamic batcher over the instances forms, without any serving
  cost: the throughput bar);
- Triton python layout with dynamic batching, and without it, loaded by N Python threads in this
  process (each with its own TritonMegatronBert over HTTP on 127.0.0.1) and, where it runs, by
  perf_analyzer (Triton's C++ load generator: far less client CPU on the same cores);
- the floor: a python model in the same server that answers `[]` without any work;
- at 1 client, in-process calls that each follow an idle pause, as a server's lone requests do;
- at 1 client, the floor at equal work: that python model busy for as long as an in-process call.
perf_analyzer rows also give Triton's own count of the time spent in the model's execute().
Server and in-process runtimes get the same instances and threads. Without --artifact the demo MLM is
exported (needs torch). Writes benchmarks/results/serve-NAME.{json,md} and prints them.

perf_analyzer: `pip install --no-deps tritonclient==2.51.0` (in any venv) carries `bin/perf_analyzer`;
pass it with --perf-analyzer. It needs libb64.so.0d and libcudart.so.12, which nvidia-pytriton
bundles under versioned names: this script links them into a temp folder for it.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from mbert_export.bench import check_name, check_results_writable, save_results  # noqa: E402
from mbert_export.fileio import atomic_write_text  # noqa: E402
from mbert_export.machine import machine_info, machine_line  # noqa: E402
from mbert_export.runtime import OrtMegatronBert  # noqa: E402

#: A server waits idle for each lone request; an in-process loop calls back to back. This row (1 client)
#: sleeps IDLE_MS before each timed call, so the runtime starts from the same idle state a server's does
#: (on the 2-core VM where this was written, that alone added 0.6-0.9 ms to a demo fill_mask call).
IDLE_MS = 2.0
LONE_IDLE = f"in-process, {IDLE_MS:g} ms idle before each call"
#: 1 client: a python model in the same server that busy-works as long as a back-to-back in-process call
#: (the p50 of the same round's "in-process, threads" cell) and answers `[]`. Its p50 minus that work is
#: what Triton itself adds around a model call of that length; the python layout's added latency minus
#: that is what our model (request parsing, JSON results, its call starting from idle) adds beyond it.
BUSY_ECHO = "triton echo model busy for an in-process call"
#: Modes that run at 1 client only.
LONE_MODES = (LONE_IDLE, BUSY_ECHO, BUSY_ECHO + ", perf_analyzer")

SENTENCES = ["The [MASK] statement is used to import a module.", "A [MASK] returns a new list of items.",
             "Use the [MASK] function to open a file for reading.", "The [MASK] of a list is its number of items.",
             "An [MASK] is raised when the key is missing from the dictionary.",
             "The for loop iterates over the [MASK] of a sequence.", "Strings are [MASK] in Python.",
             "A class can inherit [MASK] from another class."]


def _stats(latencies: list[float], wall: float) -> dict:
    ms = np.asarray(latencies) * 1e3
    return {"requests": len(latencies), "seconds": round(wall, 3), "requests_per_s": round(len(latencies) / wall, 1),
            "p50_ms": round(float(np.percentile(ms, 50)), 3), "p99_ms": round(float(np.percentile(ms, 99)), 3)}


def run_clients(clients: int, make_call, seconds: float, max_requests: int, idle_s: float = 0.0) -> dict:
    """`clients` threads calling `make_call()`'s function in a loop for `seconds` (bounded by count),
    each call (untimed) `idle_s` after the previous one ended."""
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
                if idle_s:
                    time.sleep(idle_s)
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


def run_batched(runtimes: list, clients: int, seconds: float, max_requests: int) -> dict:
    """The `clients` sentences in flight split into one batch per runtime, each runtime in its own
    thread: the throughput of the batched work a dynamic batcher over these instances forms."""
    runtimes = runtimes[:clients]
    size = -(-clients // len(runtimes))
    batch = [SENTENCES[i % len(SENTENCES)] for i in range(size)]
    latencies: list[float] = []
    lock = threading.Lock()

    def worker(runtime) -> None:
        runtime.fill_mask(batch)
        stop = time.perf_counter() + seconds
        while time.perf_counter() < stop and len(latencies) < max_requests:
            t0 = time.perf_counter()
            runtime.fill_mask(batch)
            with lock:
                latencies.extend([time.perf_counter() - t0] * size)

    threads = [threading.Thread(target=worker, args=(r,), daemon=True) for r in runtimes]
    start = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(seconds + 120)
    return {**_stats(latencies, time.perf_counter() - start), "failed": 0, "latencies": latencies, "cpu_s": 0.0}


def perf_analyzer_env(binary: Path, library_dirs: list[Path], scratch: Path) -> dict:
    """Environment for tritonclient 2.51's perf_analyzer: its two missing libraries linked from
    nvidia-pytriton's bundled ones (`library_dirs`, as the server module found them)."""
    folder = scratch / "perf-analyzer-libs"
    folder.mkdir(exist_ok=True)
    for wanted, pattern in (("libb64.so.0d", "libb64-*.so.0d"), ("libcudart.so.12", "libcudart-*.so.12*")):
        found = sorted(p for libs in library_dirs for p in libs.glob(pattern))
        if found and not (folder / wanted).exists():
            (folder / wanted).symlink_to(found[0])
    paths = [str(folder)] + [str(p) for p in library_dirs] + [os.environ.get("LD_LIBRARY_PATH", "")]
    env = {**os.environ, "LD_LIBRARY_PATH": ":".join(p for p in paths if p)}
    check = subprocess.run([str(binary), "--version"], env=env, capture_output=True, text=True, timeout=60)
    if check.returncode != 0:
        raise SystemExit(f"perf_analyzer at {binary} does not start: {(check.stderr or check.stdout).strip()[:300]}")
    return env


def run_perf_analyzer(binary: Path, env: dict, url: str, model: str, clients: int, seconds: float,
                      scratch: Path) -> dict:
    """perf_analyzer at concurrency `clients` over HTTP, the benchmark's sentences as input data."""
    data, csv = scratch / "input.json", scratch / f"pa-{model}-{clients}.csv"
    data.write_text(json.dumps({"data": [{"TEXT": {"content": [s], "shape": [1]}} for s in SENTENCES]}))
    command = [str(binary), "-m", model, "-u", url.removeprefix("http://"), "-i", "http", "--input-data", str(data),
               "--concurrency-range", str(clients), "--measurement-interval", str(int(seconds * 1000)),
               "--stability-percentage", "50", "--max-trials", "6", "--percentile", "50", "-f", str(csv)]
    limit = 30 * seconds + 120
    try:  # subprocess.run kills perf_analyzer when the limit passes
        result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=limit)
    except subprocess.TimeoutExpired:
        raise RuntimeError(f"perf_analyzer did not finish within {limit:.0f} s (stopped)") from None
    if result.returncode != 0 or not csv.exists():
        raise RuntimeError(f"perf_analyzer failed ({result.returncode}): {(result.stdout + result.stderr)[-800:]}")
    header, row = csv.read_text().splitlines()[:2]
    values = dict(zip(header.split(","), row.split(",")))
    counts = [int(line.split(":")[1]) for line in result.stdout.splitlines() if "Request count:" in line]
    rate = float(values["Inferences/Second"])
    compute = values.get("Server Compute Infer")  # microseconds per request inside the model's execute()
    return {"server_compute_ms": round(int(compute) / 1e3, 3) if compute else None,
            "requests": counts[-1] if counts else 0, "seconds": round(counts[-1] / rate, 3) if counts else seconds,
            "requests_per_s": round(rate, 1), "p50_ms": round(int(values["p50 latency"]) / 1e3, 3),
            "p99_ms": round(int(values["p99 latency"]) / 1e3, 3), "failed": 0}


def export_demo(folder: Path) -> Path:
    from mbert_export.build import DEFAULT_CHECKPOINT
    from mbert_export.export import export_onnx
    from mbert_export.modeling import MegatronBertForMaskedLM

    export_onnx(MegatronBertForMaskedLM.from_pretrained(DEFAULT_CHECKPOINT), "mlm", folder / "model.onnx",
                tokenizer_dir=DEFAULT_CHECKPOINT, max_seq_len=128, verify=False)
    return folder


#: The floor of a python-backend model: one that answers `[]` per row without any work (benchmark only).
#: With a `busy_ms` file in its version folder it first busy-works that long per execute(): the floor at
#: the model's own amount of work. The benchmark rewrites the file each round (this VM's speed drifts).
ECHO_CONFIG = """name: "{name}"
backend: "python"
max_batch_size: 64
input [ {{ name: "TEXT" data_type: TYPE_STRING dims: [ 1 ] }} ]
output [ {{ name: "RESULT" data_type: TYPE_STRING dims: [ 1 ] }} ]
instance_group [ {{ count: 1 kind: KIND_CPU }} ]
dynamic_batching {{ max_queue_delay_microseconds: 0 }}
parameters {{ key: "task" value {{ string_value: "mlm" }} }}
"""
ECHO_MODEL = """import os
import time

import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        self.busy_file = os.path.join(os.path.dirname(os.path.abspath(__file__)), "busy_ms")
        self.busy_stamp, self.busy_s = None, 0.0

    def execute(self, requests):
        stamp = os.stat(self.busy_file).st_mtime_ns if os.path.exists(self.busy_file) else None
        if stamp != self.busy_stamp:
            with open(self.busy_file) as f:
                self.busy_stamp, self.busy_s = stamp, float(f.read()) / 1e3
        end = time.perf_counter() + self.busy_s
        while time.perf_counter() < end:  # busy, as a model computing is (a sleep would idle the core)
            pass
        responses = []
        for request in requests:
            rows = pb_utils.get_input_tensor_by_name(request, "TEXT").as_numpy().shape[0]
            result = np.array([[b"[]"]] * rows, dtype=np.object_)
            responses.append(pb_utils.InferenceResponse(output_tensors=[pb_utils.Tensor("RESULT", result)]))
        return responses
"""


def write_echo_model(repository: Path, name: str = "echo") -> Path:
    (repository / name / "1").mkdir(parents=True)
    (repository / name / "config.pbtxt").write_text(ECHO_CONFIG.format(name=name))
    (repository / name / "1" / "model.py").write_text(ECHO_MODEL)
    return repository / name / "1"


def set_busy_ms(version_dir: Path, busy_ms: float) -> None:
    """The busy echo model's work per execute() from now on (it rereads the file when it changes)."""
    atomic_write_text(version_dir / "busy_ms", f"{busy_ms}\n")


def markdown(report: dict) -> str:
    lines = [f"Serving benchmark `{report['name']}`: artifact {report['artifact']} ({report['precision']}), "
             f"{machine_line(report['machine'])}; tritonserver {report['server']}; {report['instances']} model "
             f"instance(s) x {report['threads']} ONNX Runtime thread(s), in the server and in process alike; one "
             f"sentence per request; {report['rounds']} interleaved rounds of {report['seconds']} s per cell; "
             f"dynamic batching with max_queue_delay {report['max_queue_delay_us']} us. Clients: N Python threads "
             "(TritonMegatronBert over HTTP on 127.0.0.1, in-process: N threads over the runtimes) or perf_analyzer "
             "at concurrency N; clients and server share the machine. In-process batched latency is the whole "
             "batch's.", "",
             "| clients | mode | requests/s | p50 ms | p99 ms | requests | vs in-process batched "
             "| client CPU ms/request | in model ms (Triton's count) |",
             "|---|---|---|---|---|---|---|---|---|"]
    for row in report["results"]:
        ratio = row.get("vs_batched")
        lines.append(f"| {row['clients']} | {row['mode']} | {row['requests_per_s']} | {row['p50_ms']} | "
                     f"{row['p99_ms']} | {row['requests']} | {'' if ratio is None else f'{ratio:.0%}'} | "
                     f"{row.get('client_cpu_ms', '')} | {row.get('server_compute_ms') or ''} |")
    s = report["summary"]
    lines += ["", f"Added latency per request (1 client, p50, Triton without batching - in-process threads): "
                  f"{s['added_latency_ms']} ms with Python clients, {s.get('added_latency_ms_perf_analyzer')} ms "
                  f"with perf_analyzer (goal <= 1 ms); a python model that does nothing answers a lone request in "
                  f"{s.get('echo_floor_ms')} ms with Python clients, {s.get('echo_floor_ms_perf_analyzer')} ms with "
                  f"perf_analyzer (the floor of any python-backend model here); against in-process calls that "
                  f"also start from idle ({LONE_IDLE}): {s.get('added_latency_ms_perf_analyzer_vs_idle')} ms with "
                  f"perf_analyzer. Around a python model that busy-works as long as an in-process call (p50 "
                  f"per round: {report['busy_echo_ms']} ms) Triton itself adds "
                  f"{s.get('triton_cost_at_equal_work_ms')} ms with Python clients, "
                  f"{s.get('triton_cost_at_equal_work_ms_perf_analyzer')} ms with perf_analyzer; the python layout's "
                  f"added latency beyond that floor: {s.get('model_added_over_equal_work_ms')} / "
                  f"{s.get('model_added_over_equal_work_ms_perf_analyzer')} ms. "
                  f"At 8 clients Triton with dynamic batching reaches "
                  f"{s['throughput_ratio_8']} of the in-process batched throughput with Python clients, "
                  f"{s.get('throughput_ratio_8_perf_analyzer')} with perf_analyzer (goal >= 0.9). "
                  f"Executed batch sizes (dynamic batching): {report.get('executed_batch_sizes')}. "
                  f"Requests sent to Triton: {s['triton_requests']}, failed: {s['triton_failed']}."]
    failures = report.get("perf_analyzer_failures")
    if failures:
        lines += ["", f"perf_analyzer runs that failed ({len(failures)}; those cells hold the other rounds): "
                      + "; ".join(failures) + "."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    from mbert_export.serving import TritonMegatronBert
    from mbert_export.serving.repository import write_repository
    from mbert_export.serving.server import ENV_VARIABLE, find_tritonserver, start_server

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--artifact", help="MLM artifact folder (default: export the demo MLM)")
    parser.add_argument("--name", default="demo",
                        help="result name: benchmarks/results/serve-NAME.* (default demo: serve-demo)")
    parser.add_argument("--clients", default="1,8,32")
    parser.add_argument("--seconds", type=float, default=2.0, help="timed seconds per cell and round")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds over all cells")
    parser.add_argument("--max-requests", type=int, default=5000, help="request bound per cell")
    parser.add_argument("--instances", type=int, default=2, help="model instances, in the server and in process")
    parser.add_argument("--threads", type=int, default=0,
                        help="ONNX Runtime intra-op threads per instance (default: cores / instances)")
    parser.add_argument("--max-queue-delay-us", type=int, default=0)
    parser.add_argument("--python-env", help=f"server venv (default ${ENV_VARIABLE})")
    parser.add_argument("--perf-analyzer", default=shutil.which("perf_analyzer"),
                        help="perf_analyzer binary (default: on PATH; without it, Python clients only)")
    args = parser.parse_args(argv)
    try:
        check_results_writable(f"serve-{check_name(args.name)}", suffixes=(".json", ".md"))
    except (ValueError, OSError) as exc:
        parser.error(str(exc))
    clients = [int(c) for c in args.clients.split(",")]
    threads = args.threads or max(1, len(os.sched_getaffinity(0)) // args.instances)
    install, server_env = find_tritonserver(args.python_env)

    import onnxruntime

    with tempfile.TemporaryDirectory(prefix="serve-bench-") as work:
        work = Path(work)
        artifact = Path(args.artifact) if args.artifact else export_demo(work / "artifact")
        pa_binary = Path(args.perf_analyzer) if args.perf_analyzer else None
        pa_env = perf_analyzer_env(pa_binary, install.library_dirs, work) if pa_binary else None
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = threads
        runtimes = [OrtMegatronBert(artifact, session_options=options) for _ in range(args.instances)]
        report = {"name": args.name, "artifact": str(args.artifact or "demo MLM (exported, max 128 tokens)"),
                  "precision": runtimes[0].precision, "machine": machine_info(threads), "threads": threads,
                  "instances": args.instances, "seconds": args.seconds, "rounds": args.rounds,
                  "server": "2.51.0 (nvidia-pytriton 0.7.0)", "max_queue_delay_us": args.max_queue_delay_us,
                  "perf_analyzer": str(pa_binary) if pa_binary else None, "results": []}
        rows = report["results"]
        # Both Triton variants in one server (the idle model costs nothing), so that every cell of every
        # round runs interleaved with the others: the machine's load drifts, ratios within a round hold.
        repository = work / "repository"
        common = dict(threads=threads, instances=args.instances)
        write_repository([artifact], repository, names=["mlm"], max_queue_delay_us=args.max_queue_delay_us, **common)
        write_repository([artifact], work / "plain", names=["mlm_plain"], dynamic_batching=False, **common)
        (work / "plain" / "mlm_plain").rename(repository / "mlm_plain")
        write_echo_model(repository)
        busy_echo = write_echo_model(repository, "echo_busy")
        report["busy_echo_ms"] = []  # per round
        report["perf_analyzer_failures"] = []
        modes = {"in-process, threads": None, "in-process, batched": None, LONE_IDLE: None,
                 "triton python, dynamic batching": "mlm", "triton python, no batching": "mlm_plain",
                 "triton echo model (floor)": "echo", BUSY_ECHO: "echo_busy"}
        if pa_binary:
            modes.update({"triton python, dynamic batching, perf_analyzer": "mlm",
                          "triton python, no batching, perf_analyzer": "mlm_plain",
                          "triton echo model (floor), perf_analyzer": "echo",
                          BUSY_ECHO + ", perf_analyzer": "echo_busy"})
        cells: dict[tuple[int, str], list[dict]] = {}
        with start_server(repository, python_env=server_env) as server:
            before = TritonMegatronBert(server.http_url, "mlm").batch_sizes()
            for round_index in range(args.rounds):
                for n in clients:
                    for mode, model in modes.items():
                        if mode in LONE_MODES and n != 1:
                            continue
                        time.sleep(0.05)  # the previous mode's spinning threads settle
                        if mode == "in-process, threads" or mode == LONE_IDLE:
                            calls = iter(range(n))
                            result = run_clients(n, lambda: runtimes[next(calls) % len(runtimes)].fill_mask,
                                                 args.seconds, args.max_requests,
                                                 idle_s=IDLE_MS / 1e3 if mode == LONE_IDLE else 0.0)
                        elif mode == "in-process, batched":
                            result = run_batched(runtimes, n, args.seconds, args.max_requests)
                        elif mode.endswith("perf_analyzer"):
                            try:
                                result = run_perf_analyzer(pa_binary, pa_env, server.http_url, model, n,
                                                           args.seconds, work)
                            except RuntimeError as exc:  # one lost cell, said and recorded, not a lost run
                                failure = f"round {round_index + 1}, {n} clients, {mode}: {exc}"
                                report["perf_analyzer_failures"].append(failure)
                                print(f"round {round_index + 1}: {n:>3} clients  {mode:<48} FAILED: {exc}", flush=True)
                                continue
                        else:
                            def make_call(url=server.http_url, model=model):
                                return TritonMegatronBert(url, model, timeout=120).fill_mask

                            result = run_clients(n, make_call, args.seconds, args.max_requests)
                        cells.setdefault((n, mode), []).append(result)
                        if n == 1 and mode == "in-process, threads":
                            set_busy_ms(busy_echo, result["p50_ms"])
                            report["busy_echo_ms"].append(result["p50_ms"])
                        print(f"round {round_index + 1}: {n:>3} clients  {mode:<48} {result['requests_per_s']:>8} "
                              f"req/s  p50 {result['p50_ms']:.2f} ms  p99 {result['p99_ms']:.2f} ms", flush=True)
            after = TritonMegatronBert(server.http_url, "mlm").batch_sizes()
            report["executed_batch_sizes"] = {str(k): v - before.get(k, 0) for k, v in sorted(after.items())}
        for runtime in runtimes:
            runtime.close()
        for n in clients:
            for mode, model in modes.items():
                if (n, mode) not in cells:
                    continue
                parts = cells[n, mode]
                if mode.endswith("perf_analyzer"):  # its own percentiles: the median round's
                    middle = sorted(parts, key=lambda p: p["requests_per_s"])[len(parts) // 2]
                    row = {"clients": n, "mode": mode, **middle, "requests": sum(p["requests"] for p in parts)}
                else:
                    latencies = [x for p in parts for x in p.pop("latencies")]
                    row = {"clients": n, "mode": mode, **_stats(latencies, sum(p["seconds"] for p in parts)),
                           "failed": sum(p["failed"] for p in parts)}
                    if model:  # this process ran only the clients: their CPU time per request
                        row["client_cpu_ms"] = round(1e3 * sum(p["cpu_s"] for p in parts) / max(1, row["requests"]), 3)
                rows.append(row)

    batched = {r["clients"]: r["requests_per_s"] for r in rows if r["mode"] == "in-process, batched"}
    for row in rows:
        row["vs_batched"] = round(row["requests_per_s"] / batched[row["clients"]], 3)

    def cell(n, mode):
        return next((r for r in rows if r["clients"] == n and r["mode"] == mode), None)

    def added(mode, baseline="in-process, threads"):
        plain, local = cell(1, mode), cell(1, baseline)
        return round(plain["p50_ms"] - local["p50_ms"], 3) if plain and local else None

    def over_work(mode):
        found, work = cell(1, mode), report["busy_echo_ms"]
        work = float(np.median(work)) if work else None
        return round(found["p50_ms"] - work, 3) if found and work else None

    def beyond_floor(mode, busy_mode):
        total, floor = added(mode), over_work(busy_mode)
        return round(total - floor, 3) if total is not None and floor is not None else None

    def ratio(mode):
        found = cell(8, mode)
        return found["vs_batched"] if found else None

    triton = [r for r in rows if r["mode"].startswith("triton")]
    report["summary"] = {
        "added_latency_ms": added("triton python, no batching"),
        "added_latency_ms_perf_analyzer": added("triton python, no batching, perf_analyzer"),
        "added_latency_ms_perf_analyzer_vs_idle": added("triton python, no batching, perf_analyzer", LONE_IDLE),
        "echo_floor_ms": (cell(1, "triton echo model (floor)") or {}).get("p50_ms"),
        "echo_floor_ms_perf_analyzer": (cell(1, "triton echo model (floor), perf_analyzer") or {}).get("p50_ms"),
        "triton_cost_at_equal_work_ms": over_work(BUSY_ECHO),
        "triton_cost_at_equal_work_ms_perf_analyzer": over_work(BUSY_ECHO + ", perf_analyzer"),
        "model_added_over_equal_work_ms": beyond_floor("triton python, no batching", BUSY_ECHO),
        "model_added_over_equal_work_ms_perf_analyzer": beyond_floor("triton python, no batching, perf_analyzer",
                                                                     BUSY_ECHO + ", perf_analyzer"),
        "throughput_ratio_8": ratio("triton python, dynamic batching"),
        "throughput_ratio_8_perf_analyzer": ratio("triton python, dynamic batching, perf_analyzer"),
        "triton_requests": sum(r["requests"] for r in triton), "triton_failed": sum(r["failed"] for r in triton)}
    text = markdown(report)
    save_results(f"serve-{args.name}", report, text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
