"""Which layers cost INT8 accuracy: quantize with one group of modules kept in float, measure.

    PYTHONPATH=. python benchmarks/int8_sensitivity.py [--groups GROUP,GROUP,...] [--method max|percentile|entropy]

On the demo model: export the FP32 MLM graph, calibrate on the bundled corpus, and report top-1
agreement with the FP32 graph and MLM accuracy on 256 held-out masked rows for each group of
`--keep-float` patterns. The README's INT8 table and the default recipe in build.py come from here.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from mbert_export import calibration as corpus
from mbert_export.build import DEFAULT_CHECKPOINT
from mbert_export.export import export_onnx
from mbert_export.modeling import MegatronBertForMaskedLM
from mbert_export.precision import compare_graphs, quantize_int8
from mbert_export.tokenization import Tokenizer

GROUPS = {
    "none": [], "head": ["cls.predictions.*"], "decoder": ["cls.predictions.decoder"],
    "attn-products": ["*.scores", "*.context"], "ffn-out": ["*.output.dense"],
    "ffn-in": ["*.intermediate.dense"], "qkv": ["*.query", "*.key", "*.value"],
    "attn-out": ["*.attention.output.dense"], "layer0": ["bert.encoder.layer.0.*"],
    "layer3": ["bert.encoder.layer.3.*"],
    "recipe": ["bert.encoder.layer.0.*", "*.attention.self.scores", "*.attention.self.context", "cls.predictions.*"],
}
WORK = Path(__file__).resolve().parent / "artifacts" / "int8_sensitivity"  # gitignored


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--groups", default=",".join(GROUPS),
                        help=f"comma-separated groups to keep in float, one run each (default all: "
                             f"{', '.join(GROUPS)})")
    parser.add_argument("--method", default="max", choices=["max", "percentile", "entropy"],
                        help="calibration method (default max)")
    args = parser.parse_args()
    groups = [g for g in args.groups.split(",") if g]
    unknown = [g for g in groups if g not in GROUPS]
    if unknown or not groups:
        parser.error(f"--groups: unknown {', '.join(unknown) or '(none given)'}; choose from {', '.join(GROUPS)}")
    method = args.method
    tokenizer = Tokenizer.from_pretrained(DEFAULT_CHECKPOINT)
    fp32 = WORK / "fp32" / "model.onnx"
    if not fp32.exists():
        export_onnx(MegatronBertForMaskedLM.from_pretrained(DEFAULT_CHECKPOINT), "mlm", fp32, verify=False)
    calibration = corpus.calibration_batches(tokenizer, seq_lengths=(32, 64, 128, 256), num_samples=128)
    held_out = corpus.masked_lm_examples(tokenizer, num_samples=256, seq_len=128,
                                         real_vocab_size=tokenizer.vocab_size)
    print("| kept in float | method | top-1 agreement | MLM accuracy | FP32 MLM accuracy |\n|---|---|---|---|---|")
    for name in groups:
        out = WORK / f"{name}-{method}" / "model.onnx"
        quantize_int8(fp32, out, calibration, method=method, keep_float=GROUPS[name])
        r = compare_graphs(fp32, out, held_out, real_vocab_size=tokenizer.vocab_size)["logits"]
        print(f"| {name} | {method} | {r['top1_agreement']:.2%} | {r['mlm_accuracy']:.2%} | "
              f"{r['reference_mlm_accuracy']:.2%} |", flush=True)


if __name__ == "__main__":
    main()
