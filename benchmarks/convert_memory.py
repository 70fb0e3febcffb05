"""Time and peak RSS of `convert_megatron` on a 345M-shaped Megatron-LM checkpoint (random weights).

Generates BERT-345M-shaped checkpoints (hidden 1024, 24 layers, 16 heads, ffn 4096, 29056 vocab rows,
fp16 like the NGC release) at tensor-parallel sizes 1 and 2, plus an NGC-style zip, then converts
each in a fresh subprocess under `/usr/bin/time -v` (falling back to `resource.getrusage`) and prints
wall time, peak RSS, the checkpoint size and their ratio. A bare `import torch` process is measured
too, so the converter's own share can be read off.

    PYTHONPATH=. python benchmarks/convert_memory.py [--workdir DIR] [--dtype float16|float32] [--keep]
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

GENERATE = r"""
import sys, torch
sys.path[:0] = [{root!r}, {tests!r}]
from megatron_fixtures import to_megatron, write_checkpoint
from mbert_export.config import preset_config
config = preset_config("megatron-bert-345m-cased")
h, f, v = config.hidden_size, config.intermediate_size, config.vocab_size
g = torch.Generator().manual_seed(0)
def r(*shape):
    return (torch.randn(*shape, generator=g) * 0.02).to(torch.{dtype})
state = {{"bert.embeddings.word_embeddings.weight": r(v, h),
         "bert.embeddings.position_embeddings.weight": r(config.max_position_embeddings, h),
         "bert.embeddings.token_type_embeddings.weight": r(2, h),
         "bert.encoder.ln.weight": r(h), "bert.encoder.ln.bias": r(h),
         "bert.pooler.dense.weight": r(h, h), "bert.pooler.dense.bias": r(h),
         "cls.predictions.transform.dense.weight": r(h, h), "cls.predictions.transform.dense.bias": r(h),
         "cls.predictions.transform.LayerNorm.weight": r(h), "cls.predictions.transform.LayerNorm.bias": r(h),
         "cls.predictions.bias": r(v), "cls.seq_relationship.weight": r(2, h), "cls.seq_relationship.bias": r(2)}}
for i in range(config.num_hidden_layers):
    p = f"bert.encoder.layer.{{i}}."
    for name, shape in [("attention.ln", (h,)), ("attention.self.query", (h, h)), ("attention.self.key", (h, h)),
                        ("attention.self.value", (h, h)), ("attention.output.dense", (h, h)), ("ln", (h,)),
                        ("intermediate.dense", (f, h)), ("output.dense", (h, f))]:
        state[p + name + ".weight"] = r(*shape)
        state[p + name + ".bias"] = r(shape[0])
print(sum(t.numel() for t in state.values()))
write_checkpoint(to_megatron(state, config, version=3.0, tp={tp}), __import__("pathlib").Path({out!r}), {layout!r},
                 name="megatron_bert_345m_v0_1_cased")
"""

CONVERT = r"""
import sys, time, resource
sys.path.insert(0, {root!r})
{body}
print("RUSAGE_MAXRSS_KB", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""


def measure(body: str) -> dict[str, float]:
    """Run `body` in a fresh Python; returns wall seconds and peak RSS (MiB)."""
    code = CONVERT.format(root=str(ROOT), body=body)
    cmd = [sys.executable, "-c", code]
    timed = Path("/usr/bin/time").exists()
    if timed:
        cmd = ["/usr/bin/time", "-v", *cmd]
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if proc.returncode:
        raise SystemExit(f"measured command failed:\n{proc.stdout}\n{proc.stderr}")
    if timed:
        rss_kb = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", proc.stderr).group(1))
    else:
        rss_kb = int(re.search(r"RUSAGE_MAXRSS_KB (\d+)", proc.stdout).group(1))
    return {"seconds": wall, "peak_rss_mib": rss_kb / 1024}


def check_workdir(parser: argparse.ArgumentParser, workdir: Path | None) -> None:
    """Refuse a --workdir the temp folder cannot go in (missing, a file, not writable), before any work."""
    from mbert_export.fileio import make_writable_dir

    if workdir is None:
        return
    if not workdir.exists():
        parser.error(f"--workdir {workdir} does not exist; create it, or leave --workdir out to use a temp folder")
    if not workdir.is_dir():
        parser.error(f"--workdir {workdir} is a file, not a folder; pass a folder")
    try:
        make_writable_dir(workdir, "--workdir")
    except PermissionError as exc:
        parser.error(str(exc))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", type=Path, default=None, help="where to write checkpoints (default: a temp dir)")
    parser.add_argument("--dtype", default="float16", choices=["float16", "float32"])
    parser.add_argument("--keep", action="store_true", help="keep the generated checkpoints")
    args = parser.parse_args(argv)
    check_workdir(parser, args.workdir)
    work = Path(tempfile.mkdtemp(prefix="convert-bench-", dir=args.workdir))
    results = []
    try:
        base = measure("import torch, mbert_export.checkpoints")
        results.append({"case": "import torch + mbert_export.checkpoints only", **base, "ckpt_mib": 0.0})
        for tp, layout in ((1, "release"), (2, "release"), (1, "zip")):
            src_root = work / f"tp{tp}-{layout}"
            gen = GENERATE.format(root=str(ROOT), tests=str(ROOT / "tests"), dtype=args.dtype, tp=tp,
                                  out=str(src_root), layout=layout)
            t0 = time.perf_counter()
            subprocess.run([sys.executable, "-c", gen], check=True, capture_output=True, text=True)
            gen_s = time.perf_counter() - t0
            src = next(src_root.iterdir())
            size = sum(p.stat().st_size for p in ([src] if src.is_file() else src.rglob("*")) if p.is_file())
            dst = work / f"hf-tp{tp}-{layout}"
            body = (f"from mbert_export.checkpoints import convert_megatron\n"
                    f"convert_megatron({str(src)!r}, {str(dst)!r})")
            m = measure(body)
            out_size = (dst / "model.safetensors").stat().st_size
            meta = json.loads((dst / "config.json").read_text())
            results.append({"case": f"TP{tp} {layout} ({args.dtype})", **m, "ckpt_mib": size / 2**20,
                            "out_mib": out_size / 2**20, "generate_s": gen_s,
                            "config": f"{meta['num_hidden_layers']}L h{meta['hidden_size']} "
                                      f"{meta['num_attention_heads']}H v{meta['vocab_size']}"})
            shutil.rmtree(dst)
            if not args.keep:
                shutil.rmtree(src_root)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    print(f"{'case':44s} {'time s':>7s} {'peak RSS MiB':>13s} {'ckpt MiB':>9s} {'RSS/ckpt':>8s}")
    for r in results:
        ratio = f"{r['peak_rss_mib'] / r['ckpt_mib']:.2f}" if r["ckpt_mib"] else "-"
        print(f"{r['case']:44s} {r['seconds']:7.1f} {r['peak_rss_mib']:13.0f} {r['ckpt_mib']:9.0f} {ratio:>8s}")
    print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
