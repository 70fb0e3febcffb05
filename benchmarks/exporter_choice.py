#!/usr/bin/env python
"""Measure torch's dynamo ONNX exporter against the TorchScript exporter on MegatronBERT.

For every (preset, procedure) pair the export runs in a fresh subprocess so that its peak RSS
(`ru_maxrss`) belongs to that export alone; a second fresh subprocess analyses the graph (loaded
without its external data) and checks it on ONNX Runtime CPU against the PyTorch model, which it
rebuilds from the same seed. Weights are random (seeded), fp32, eval mode, MaskedLM head.

Procedures (--exporter):
  torchscript    torch.onnx.export(dynamo=False, dynamic_axes=..., opset 18); graphs above 2 GB are
                 re-saved with onnx.save_model(save_as_external_data=True, all_tensors_to_one_file=True)
  dynamo         torch.onnx.export(dynamo=True, dynamic_shapes=..., optimize=True, external_data=True)
  dynamo-noopt   the same with optimize=False
  dynamo-meta    export a copy of the model built on the `meta` device (no weight memory), then
                 ONNXProgram.apply_weights(state_dict) and save(external_data=True): the writer streams
                 each torch tensor into one `.onnx.data` file, so no second copy of the weights exists

Usage:
  PYTHONPATH=. python benchmarks/exporter_choice.py --preset tiny megatron-bert-345m-cased \
      --exporter dynamo torchscript dynamo-meta
Prints a markdown table and writes benchmarks/results/exporter_choice.json (merged with earlier runs).

Columns: "peak RSS" is the export child's ru_maxrss (interpreter + torch import ~0.22 GiB included);
"export overhead" = peak RSS - RSS right after the model was built. Test shapes differ from the export
sample (2 x 16): 1 x 1, 3 x 77 right-padded (3 x 63 for tiny, whose position table has 64 rows), and
2 x 512 (2 x 64 for tiny); the 1.3B preset is checked at 3 x 77 only. The TorchScript exporter needs about
4.5x the weight bytes, so do not run it on the 1.3B preset on a 24 GiB machine.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import gc
import json
import os
import resource
import shutil
import subprocess
import sys
import threading
import time
import warnings
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
RESULTS = REPO / "benchmarks" / "results" / "exporter_choice.json"
EXPORTERS = ("dynamo", "dynamo-noopt", "dynamo-meta", "torchscript")
PRESET_ALIASES = {"345m": "megatron-bert-345m-cased", "1.3b": "erlangshen-megatronbert-1.3b"}
INPUT_NAMES = ("input_ids", "attention_mask", "token_type_ids")
OPSET = 18
SEED = 0
TWO_GB = 2 * 1024**3

#: Op types the TensorRT ONNX parser supports that this model family can produce. Anything else is flagged.
TRT_OK = {
    "LayerNormalization", "Erf", "Gelu", "MatMul", "Gemm", "Softmax", "Gather", "Add", "Mul", "Sub", "Div",
    "Cast", "Shape", "Unsqueeze", "Squeeze", "Reshape", "Transpose", "Slice", "Concat", "Where", "Expand",
    "Equal", "ConstantOfShape", "Range", "Tanh", "Sqrt", "Pow", "ReduceMean", "Constant", "Identity",
    "Relu", "Sigmoid", "Neg", "Not", "Less", "Greater", "LessOrEqual", "GreaterOrEqual", "Min", "Max",
    "Split", "Erf", "Flatten", "ReduceSum", "ReduceMax", "Exp", "Log", "Size", "Trilu",
}
FLAG_ALWAYS = {"If", "Loop", "Scan", "SequenceConstruct", "SequenceAt", "SequenceInsert", "SplitToSequence",
               "ConcatFromSequence"}
DOUBLE = 11  # onnx.TensorProto.DOUBLE


def resolve_preset(name: str) -> str:
    return PRESET_ALIASES.get(name, name)


# ---------------------------------------------------------------------------- memory helpers
def rss_bytes() -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def maxrss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


class PeakSampler:
    """Samples VmRSS every 20 ms so each phase gets its own peak (ru_maxrss is per process)."""

    def __init__(self) -> None:
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, rss_bytes())
            time.sleep(0.02)

    @contextlib.contextmanager
    def phase(self):
        self.peak = rss_bytes()
        yield self
        self.peak = max(self.peak, rss_bytes())

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


# ---------------------------------------------------------------------------- model
def build_model(preset: str, device: str = "cpu"):
    import torch

    from mbert_export.config import preset_config
    from mbert_export.modeling import MegatronBertForMaskedLM

    torch.manual_seed(SEED)
    with torch.device(device):
        model = MegatronBertForMaskedLM(preset_config(preset))
    return model.eval().requires_grad_(False)


def output_wrapper(model):
    """Turn the dict output into a tuple; the dict keys become the ONNX output names."""
    import torch

    class DictOutputs(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, input_ids, attention_mask, token_type_ids):
            return tuple(self.inner(input_ids, attention_mask, token_type_ids).values())

    return DictOutputs(model).eval()


OUTPUT_NAMES = ("logits",)  # keys of MegatronBertForMaskedLM.forward's dict


def sample_inputs(config, batch: int = 2, seq: int = 16):
    import torch

    g = torch.Generator().manual_seed(1)
    ids = torch.randint(1, config.real_vocab_size, (batch, seq), generator=g)
    return ids, torch.ones(batch, seq, dtype=torch.long), torch.zeros(batch, seq, dtype=torch.long)


def weight_bytes(model) -> int:
    seen, total = set(), 0
    for t in list(model.parameters()) + list(model.buffers()):
        if t.data_ptr() not in seen:
            seen.add(t.data_ptr())
            total += t.numel() * t.element_size()
    return total


# ---------------------------------------------------------------------------- export (child process)
def export_child(preset: str, exporter: str, out: Path) -> dict:
    import torch

    if out.parent.exists():
        shutil.rmtree(out.parent)
    out.parent.mkdir(parents=True)
    res: dict = {"preset": preset, "exporter": exporter, "torch": torch.__version__}
    with PeakSampler() as sampler, warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        res["rss_start"] = rss_bytes()
        t0 = time.perf_counter()
        model = build_model(preset)
        res["build_s"] = time.perf_counter() - t0
        res["weight_bytes"] = weight_bytes(model)
        res["rss_after_build"] = rss_bytes()
        wrapped = output_wrapper(model)
        args = sample_inputs(model.config)
        # Upper bound of the sequence axis: positions index a table of max_position_embeddings rows.
        max_seq = model.config.max_position_embeddings

        t0 = time.perf_counter()
        with sampler.phase() as ph:
            if exporter == "torchscript":
                axes = {name: {0: "batch", 1: "sequence"} for name in INPUT_NAMES + OUTPUT_NAMES}
                torch.onnx.export(wrapped, args, str(out), dynamo=False, opset_version=OPSET,
                                  input_names=list(INPUT_NAMES), output_names=list(OUTPUT_NAMES),
                                  dynamic_axes=axes, do_constant_folding=True)
            else:
                from torch.export import Dim

                batch, seq = Dim("batch", min=1, max=4096), Dim("sequence", min=1, max=max_seq)
                shapes = {name: {0: batch, 1: seq} for name in INPUT_NAMES}
                export_model, export_args = wrapped, args
                if exporter == "dynamo-meta":  # trace a weightless twin, attach the real weights later
                    export_model = output_wrapper(build_model(preset, device="meta"))
                    export_args = tuple(a.to("meta") for a in args)
                program = torch.onnx.export(
                    export_model, export_args, None, dynamo=True, opset_version=OPSET,
                    input_names=list(INPUT_NAMES), output_names=list(OUTPUT_NAMES),
                    dynamic_shapes=shapes, optimize=(exporter == "dynamo"))
                res["rss_after_trace"] = rss_bytes()
                if exporter == "dynamo-meta":
                    # Initializer names are the state-dict keys behind the wrapper attribute ("inner.").
                    inits = program.model.graph.initializers
                    state = {f"inner.{k}": v for k, v in model.state_dict().items() if f"inner.{k}" in inits}
                    program.apply_weights(state)
                    left = [n for n, v in inits.items()
                            if str(getattr(getattr(v.const_value, "raw", None), "device", "")) == "meta"]
                    if left:
                        raise RuntimeError(f"initializers left on meta after apply_weights: {left[:5]}")
                    res["meta_initializers_applied"] = len(state)
                    program.optimize()  # constant folding needs real values, so it runs after apply_weights
                res["trace_s"] = time.perf_counter() - t0
                program.save(str(out), external_data=True)
        res["export_s"] = time.perf_counter() - t0
        res["export_phase_peak_rss"] = ph.peak

        if exporter == "torchscript" and res["weight_bytes"] > TWO_GB:
            # torch wrote one file per initializer beside the model; gather them into one file.
            import onnx

            t1 = time.perf_counter()
            with sampler.phase() as ph2:
                proto = onnx.load(str(out))
                single = out.with_name(out.stem + "_single.onnx")
                onnx.save_model(proto, str(single), save_as_external_data=True, all_tensors_to_one_file=True,
                                location=single.name + ".data", size_threshold=1024)
                del proto
            res["resave_s"] = time.perf_counter() - t1
            res["resave_phase_peak_rss"] = ph2.peak
            for p in out.parent.iterdir():
                if p not in (single, single.with_name(single.name + ".data")):
                    p.unlink()
            single.rename(out)  # the data file keeps the name recorded in `location`
            res["external_data_note"] = "onnx.load + onnx.save_model(all_tensors_to_one_file)"
        res["peak_rss"] = maxrss_bytes()
        res["warnings"] = sorted({f"{w.category.__name__}: {str(w.message)[:160]}" for w in caught})
    res["files"] = {p.name: p.stat().st_size for p in sorted(out.parent.iterdir())}
    res["n_files"] = len(res["files"])
    res["onnx_file"] = str(out)
    return res


# ---------------------------------------------------------------------------- check (child process)
def analyse_graph(path: Path) -> dict:
    import onnx

    proto = onnx.load(str(path), load_external_data=False)
    hist: collections.Counter = collections.Counter()
    doubles: list[str] = []

    def walk(graph):
        for node in graph.node:
            hist[node.op_type] += 1
            if node.op_type == "Cast" and any(a.name == "to" and a.i == DOUBLE for a in node.attribute):
                doubles.append(f"Cast->double {node.name}")
            for a in node.attribute:
                if a.type == onnx.AttributeProto.TENSOR and a.t.data_type == DOUBLE:
                    doubles.append(f"double attr {node.name}")
                if a.type == onnx.AttributeProto.GRAPH:
                    walk(a.g)

    walk(proto.graph)
    doubles += [f"double init {t.name}" for t in proto.graph.initializer if t.data_type == DOUBLE]
    doubles += [f"double value {v.name}" for v in proto.graph.value_info if v.type.tensor_type.elem_type == DOUBLE]
    unusual = sorted(op for op in hist if op not in TRT_OK or op in FLAG_ALWAYS)
    shapes = {v.name: [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim]
              for v in list(proto.graph.input) + list(proto.graph.output)}
    opset = {o.domain or "ai.onnx": o.version for o in proto.opset_import}
    return {"nodes": sum(hist.values()), "op_histogram": dict(hist.most_common()), "opset": opset,
            "unusual_ops": unusual, "float64": doubles[:10], "io_shapes": shapes,
            "initializers": len(proto.graph.initializer),
            "symbolic_inputs": all(isinstance(d, str) and d for n in INPUT_NAMES for d in shapes[n][:2])}


def test_shapes(config, preset: str):
    """(batch, seq, right-padded lengths or None) — all different from the export sample (2, 16)."""
    max_pos = config.max_position_embeddings
    long_seq = 512 if max_pos >= 512 else max_pos
    if preset.startswith("erlangshen"):
        return [(3, 77, [77, 50, 9])]
    mid = min(77, max_pos - 1)
    return [(1, 1, None), (3, mid, [mid, mid * 2 // 3, 5]), (2, long_seq, None)]


def make_inputs(config, batch, seq, lengths):
    import torch

    g = torch.Generator().manual_seed(batch * 1000 + seq)
    ids = torch.randint(1, config.real_vocab_size, (batch, seq), generator=g)
    mask = torch.ones(batch, seq, dtype=torch.long)
    types = torch.zeros(batch, seq, dtype=torch.long)
    types[:, seq // 2:] = 1
    if lengths:
        for row, n in enumerate(lengths):
            ids[row, n:] = config.pad_token_id
            mask[row, n:] = 0
            types[row, n:] = 0
    return ids, mask, types


def check_child(preset: str, path: Path) -> dict:
    import numpy as np
    import onnxruntime as ort
    import torch

    res = {"graph": analyse_graph(path)}
    model = build_model(preset)
    cases = [(b, s, lens, make_inputs(model.config, b, s, lens)) for b, s, lens in test_shapes(model.config, preset)]
    refs = []
    with torch.inference_mode():
        for *_, inputs in cases:
            refs.append({k: v.numpy() for k, v in model(*inputs).items()})
    del model
    gc.collect()  # free the torch weights before ONNX Runtime loads its own copy
    t0 = time.perf_counter()
    opts = ort.SessionOptions()
    session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    res["ort_load_s"] = time.perf_counter() - t0
    out_names = [o.name for o in session.get_outputs()]
    res["ort_outputs"] = out_names
    res["cases"] = []
    for (b, s, lens, inputs), ref in zip(cases, refs):
        feeds = {name: t.numpy() for name, t in zip(INPUT_NAMES, inputs)}
        got = dict(zip(out_names, session.run(None, feeds)))
        diff = max(float(np.abs(got[k] - ref[k]).max()) for k in ref)
        res["cases"].append({"shape": [b, s], "padded": bool(lens), "max_abs_diff": diff,
                             "ref_absmax": max(float(np.abs(r).max()) for r in ref.values())})
    res["max_abs_diff"] = max(c["max_abs_diff"] for c in res["cases"])
    res["check_peak_rss"] = maxrss_bytes()
    return res


# ---------------------------------------------------------------------------- driver
def run_child(mode: str, preset: str, exporter: str, out: Path, timeout: float) -> dict:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
    cmd = [sys.executable, __file__, "--child", mode, "--preset", preset, "--exporter", exporter,
           "--out-dir", str(out.parent.parent)]
    try:
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:  # subprocess.run has killed the child
        return {"error": f"{mode} child timed out after {timeout:g} s (--timeout)"}
    marker = "@@RESULT@@"
    for line in proc.stdout.splitlines():
        if line.startswith(marker):
            return json.loads(line[len(marker):])
    tail = (proc.stderr or proc.stdout)[-3000:]
    return {"error": f"{mode} child exited {proc.returncode}: {tail}"}


def gib(n) -> str:
    return "-" if n is None else f"{n / 1024**3:.2f}"


def table(rows: list[dict]) -> str:
    head = ("| preset | exporter | export s | weights GiB | RSS after build GiB | peak RSS GiB | peak/weights "
            "| export overhead GiB | nodes | opset | unusual ops / fp64 | symbolic | max abs diff | files |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in rows:
        e, c = r.get("export", {}), r.get("check", {})
        if "error" in e or "error" in c:
            lines.append(f"| {r['preset']} | {r['exporter']} | ERROR: {(e.get('error') or c.get('error'))[-200:]!r} |")
            continue
        g = c.get("graph", {})
        w = e["weight_bytes"]
        unusual = ", ".join(g.get("unusual_ops", [])) + (" fp64!" if g.get("float64") else "")
        lines.append(
            f"| {r['preset']} | {r['exporter']} | {e['export_s'] + e.get('resave_s', 0):.1f} | {gib(w)} "
            f"| {gib(e['rss_after_build'])} | {gib(e['peak_rss'])} | {e['peak_rss'] / w:.2f} "
            f"| {gib(e['peak_rss'] - e['rss_after_build'])} | {g.get('nodes')} | {g.get('opset', {}).get('ai.onnx')} "
            f"| {unusual or 'none'} | {g.get('symbolic_inputs')} | {c.get('max_abs_diff', float('nan')):.2e} "
            f"| {e['n_files']} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", nargs="+", default=["tiny", "megatron-bert-345m-cased"],
                    help=f"presets (aliases: {', '.join(f'{k}={v}' for k, v in PRESET_ALIASES.items())})")
    ap.add_argument("--exporter", nargs="+", default=["dynamo", "torchscript"], choices=EXPORTERS)
    ap.add_argument("--out-dir", type=Path, default=Path("/tmp/exporter_choice"))
    ap.add_argument("--results", type=Path, default=RESULTS)
    ap.add_argument("--no-check", action="store_true", help="skip the ONNX Runtime comparison")
    ap.add_argument("--keep", action="store_true", help="keep the exported files")
    ap.add_argument("--timeout", type=float, default=3600,
                    help="seconds per export or check child (default 3600); a child that takes longer is "
                         "stopped and its row records the timeout")
    ap.add_argument("--child", choices=["export", "check"], help=argparse.SUPPRESS)
    args = ap.parse_args(argv)

    if args.child:
        preset, exporter = resolve_preset(args.preset[0]), args.exporter[0]
        out = args.out_dir / f"{preset}__{exporter}" / "model.onnx"
        res = export_child(preset, exporter, out) if args.child == "export" else check_child(preset, out)
        print("@@RESULT@@" + json.dumps(res), flush=True)
        return 0

    from mbert_export.config import PRESETS
    from mbert_export.fileio import atomic_write_text

    unknown = [p for p in args.preset if resolve_preset(p) not in PRESETS]
    if unknown:
        ap.error(f"unknown preset {', '.join(unknown)}; choose from {', '.join(PRESETS)} "
                 f"(or {', '.join(PRESET_ALIASES)})")
    if not args.timeout > 0:
        ap.error(f"--timeout must be a positive number of seconds, got {args.timeout:g}")
    rows = []
    for preset in dict.fromkeys(map(resolve_preset, args.preset)):
        for exporter in args.exporter:
            out = args.out_dir / f"{preset}__{exporter}" / "model.onnx"
            print(f"== {preset} / {exporter}", file=sys.stderr, flush=True)
            try:
                row = {"preset": preset, "exporter": exporter,
                       "export": run_child("export", preset, exporter, out, args.timeout)}
                if not args.no_check and "error" not in row["export"]:
                    row["check"] = run_child("check", preset, exporter, out, args.timeout)
            finally:
                if not args.keep:
                    shutil.rmtree(out.parent, ignore_errors=True)
            rows.append(row)
            print(table([row]).splitlines()[-1], file=sys.stderr, flush=True)

    print(table(rows))
    args.results.parent.mkdir(parents=True, exist_ok=True)
    merged = {}
    if args.results.exists():
        with contextlib.suppress(ValueError):
            merged = {f"{r['preset']}/{r['exporter']}": r for r in json.loads(args.results.read_text())["runs"]}
    merged.update({f"{r['preset']}/{r['exporter']}": r for r in rows})
    atomic_write_text(args.results, json.dumps({"runs": list(merged.values())}, indent=1) + "\n")
    print(f"wrote {args.results}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
