"""Time and peak RSS of `convert_megatron` on a Megatron-Core torch_dist checkpoint of the Erlangshen
3.9B shape (random bf16 weights).

Writes a synthetic torch_dist checkpoint with `torch.distributed.checkpoint` in the layout megatron-core
0.19 saves (stacked `[num_layers, ...]` per-layer tensors, TransformerEngine-style pre-LN names, the
common state with the training args as a byte item; hidden 2560, 48 layers, 40 heads, ffn 10240, 21248
vocab rows, 512 positions, bf16), then converts it in a fresh process under `/usr/bin/time -v` and
prints wall time, peak RSS and the ratio to the checkpoint's weight bytes (goal: <= 1.5x). Results go
to benchmarks/results/convert_memory_torch_dist.{json,md}.

    PYTHONPATH=. python benchmarks/convert_memory_torch_dist.py [--workdir DIR] [--keep] [--layers N]
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from convert_memory import ROOT, check_workdir, measure  # noqa: E402  (same measurement as the legacy benchmark)

GENERATE = r"""
import argparse, sys, torch, warnings
from torch.distributed.checkpoint import DefaultSavePlanner, FileSystemWriter, save
L, h, heads, f, v, pos = {layers}, 2560, 40, 10240, 21248, 512
bf = torch.bfloat16
def r(*shape):
    return torch.empty(*shape, dtype=bf).normal_(0, 0.02)
state = {{
    "embedding.word_embeddings.weight": r(v, h), "embedding.position_embeddings.weight": r(pos, h),
    "embedding.tokentype_embeddings.weight": r(2, h),
    "encoder.layers.self_attention.linear_qkv.layer_norm_weight": r(L, h),
    "encoder.layers.self_attention.linear_qkv.layer_norm_bias": r(L, h),
    "encoder.layers.self_attention.linear_qkv.weight": r(L, 3 * h, h),
    "encoder.layers.self_attention.linear_qkv.bias": r(L, 3 * h),
    "encoder.layers.self_attention.linear_proj.weight": r(L, h, h),
    "encoder.layers.self_attention.linear_proj.bias": r(L, h),
    "encoder.layers.mlp.linear_fc1.layer_norm_weight": r(L, h),
    "encoder.layers.mlp.linear_fc1.layer_norm_bias": r(L, h),
    "encoder.layers.mlp.linear_fc1.weight": r(L, f, h), "encoder.layers.mlp.linear_fc1.bias": r(L, f),
    "encoder.layers.mlp.linear_fc2.weight": r(L, h, f), "encoder.layers.mlp.linear_fc2.bias": r(L, h),
    "encoder.final_layernorm.weight": r(h), "encoder.final_layernorm.bias": r(h),
    "lm_head.dense.weight": r(h, h), "lm_head.dense.bias": r(h),
    "lm_head.layer_norm.weight": r(h), "lm_head.layer_norm.bias": r(h), "output_layer.bias": r(v),
    "binary_head.weight": r(2, h), "binary_head.bias": r(2), "pooler.dense.weight": r(h, h), "pooler.dense.bias": r(h),
}}
weight_bytes = sum(t.numel() * t.element_size() for t in state.values())
args = argparse.Namespace(num_layers=L, hidden_size=h, num_attention_heads=heads, ffn_hidden_size=f,
    max_position_embeddings=pos, padded_vocab_size=v, layernorm_epsilon=1e-12, bias_gelu_fusion=False,
    openai_gelu=False, untie_embeddings_and_output_weights=False, bert_binary_head=True,
    tokenizer_type="BertWordPieceLowerCase", vocab_file="/data/vocab.txt", tensor_model_parallel_size=1,
    pipeline_model_parallel_size=1, add_bias_linear=True, position_embedding_type="learned_absolute",
    normalization="LayerNorm", swiglu=False, group_query_attention=False, ckpt_format="torch_dist")
# a byte item holding [common state], as megatron-core 0.19 stores its ShardedObject of global shape (1,)
state["common_state"] = [{{"args": args, "checkpoint_version": 3.0, "iteration": 1}}]
with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    save(state, storage_writer=FileSystemWriter({out!r}), planner=DefaultSavePlanner(flatten_state_dict=False),
         no_dist=True)
print("WEIGHT_BYTES", weight_bytes)
"""


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", type=Path, default=None, help="where to write the checkpoint (default: temp)")
    parser.add_argument("--layers", type=int, default=48, help="48 for the 3.9B shape; fewer for a quick run")
    parser.add_argument("--keep", action="store_true", help="keep the generated checkpoint and output")
    args = parser.parse_args(argv)
    if args.layers < 1:
        parser.error(f"--layers must be >= 1, got {args.layers}")
    check_workdir(parser, args.workdir)
    work = Path(tempfile.mkdtemp(prefix="convert-dist-bench-", dir=args.workdir))
    try:
        iteration = work / "ckpt" / "iter_0000001"
        iteration.mkdir(parents=True)
        (work / "ckpt" / "latest_checkpointed_iteration.txt").write_text("1\n")
        t0 = time.perf_counter()
        gen = subprocess.run([sys.executable, "-c", GENERATE.format(layers=args.layers, out=str(iteration))],
                             check=True, capture_output=True, text=True)
        generate_s = time.perf_counter() - t0
        weight_bytes = int(gen.stdout.split("WEIGHT_BYTES")[-1])
        disk = sum(p.stat().st_size for p in iteration.iterdir())
        dst = work / "hf"
        command = (f"mbert-export convert {work / 'ckpt'} {dst}  "
                   f"(measured: /usr/bin/time -v python -c 'convert_megatron(SRC, DST, progress=print)')")
        base = measure("import torch, mbert_export.checkpoints")
        m = measure(f"from mbert_export.checkpoints import convert_megatron\n"
                    f"convert_megatron({str(work / 'ckpt')!r}, {str(dst)!r}, progress=print)")
        out_bytes = (dst / "model.safetensors").stat().st_size
        result = {"shape": f"{args.layers}L h2560 40H ffn10240 v21248 bf16 torch_dist", "generate_s": generate_s,
                  "weight_gib": weight_bytes / 2**30, "checkpoint_gib": disk / 2**30, "output_gib": out_bytes / 2**30,
                  "convert_s": m["seconds"], "peak_rss_gib": m["peak_rss_mib"] / 1024,
                  "import_only_rss_gib": base["peak_rss_mib"] / 1024,
                  "rss_over_weights": m["peak_rss_mib"] * 2**20 / weight_bytes, "command": command}
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(result, indent=1))
    from mbert_export.fileio import write_report

    write_report(ROOT / "benchmarks" / "results" / "convert_memory_torch_dist.json", result,
                 "| checkpoint | weights GiB | convert s | peak RSS GiB | RSS / weights | import-only RSS GiB |\n"
                 "|---|---:|---:|---:|---:|---:|\n"
                 f"| {result['shape']} | {result['weight_gib']:.2f} | {result['convert_s']:.0f} | "
                 f"{result['peak_rss_gib']:.2f} | {result['rss_over_weights']:.2f} | {result['import_only_rss_gib']:.2f} |\n")


if __name__ == "__main__":
    main()
