"""Main job while the trained demo model is not in the repository: the whole build on a random model.

Makes a tiny MegatronBERT masked LM with RANDOM weights (no weights can be downloaded here) and a
WordPiece vocabulary learned from the bundled corpus, then runs the same pipeline as
`scripts/build_engine.py --task mlm`: FP32 export verified against PyTorch, the precision graph,
its accuracy check, a TensorRT engine when TensorRT and a GPU are present, the artifact's self-check
on its reference vectors, and a fill_mask example (meaningless words: the weights are random).
Pass --checkpoint to run it on your own Hugging Face folder instead.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from mbert_export.build import build_artifact  # noqa: E402
from mbert_export.cli import progress, report_built_artifact  # noqa: E402


def random_checkpoint(folder: Path) -> Path:
    """A tiny random-weight MLM plus a 1000-token WordPiece vocab trained on calibration/corpus."""
    from tokenizers import BertWordPieceTokenizer

    from mbert_export.calibration import corpus_path
    from mbert_export.config import preset_config
    from mbert_export.modeling import MegatronBertForMaskedLM
    from mbert_export.tokenization import Tokenizer

    folder.mkdir(parents=True, exist_ok=True)
    trainer = BertWordPieceTokenizer(lowercase=True)
    trainer.train([str(corpus_path("train"))], vocab_size=1000, limit_alphabet=100, show_progress=False,
                  special_tokens=["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"])
    trainer.save_model(str(folder))
    tokenizer = Tokenizer.from_vocab(folder / "vocab.txt", lowercase=True)
    tokenizer.save_pretrained(folder)
    config = preset_config("tiny", vocab_size=1024, tokenizer_vocab_size=tokenizer.vocab_size)
    MegatronBertForMaskedLM(config).save_pretrained(folder)
    return folder


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", help="Hugging Face MegatronBERT folder (default: a random tiny model)")
    parser.add_argument("--precision", default="fp32", choices=["fp32", "fp16", "int8"],
                        help="fp32 by default: random weights give near-tied logits that FP16/INT8 cannot keep")
    parser.add_argument("--output-dir", default=str(ROOT / "engines" / "quickstart"))
    args = parser.parse_args()
    if args.checkpoint:
        checkpoint = Path(args.checkpoint)
    else:
        checkpoint = ROOT / "engines" / "quickstart-random-model"
        progress(f"quickstart: random-weight tiny model (no trained weights here) -> {checkpoint}")
        random_checkpoint(checkpoint)
    result = build_artifact("mlm", args.precision, checkpoint=checkpoint, output_dir=args.output_dir,
                            seq=["1,32,64"], force=True, progress=progress)
    print(result.summary())
    return report_built_artifact(result.folder, result.sidecar)


if __name__ == "__main__":
    sys.exit(main())
