"""Main job until the engine builder lands: reference model -> verified ONNX graph -> readiness check.

Builds a MegatronBERT masked-LM with RANDOM weights in the shape of a preset (no weights can be
downloaded here and the trained demo model is not in the repository yet), saves it as a Hugging Face
folder, exports the `mlm` head to ONNX with verification against the PyTorch reference, and runs the
TensorRT readiness check. Pass --checkpoint to run the same job on your own Hugging Face folder.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from mbert_export.check import check_graph  # noqa: E402
from mbert_export.cli import progress  # noqa: E402
from mbert_export.config import PRESETS, preset_config  # noqa: E402
from mbert_export.export import export_onnx, load_model_for_task  # noqa: E402
from mbert_export.modeling import MegatronBertForMaskedLM  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", help="Hugging Face MegatronBERT folder (default: random weights)")
    parser.add_argument("--preset", default="tiny", choices=list(PRESETS),
                        help="shape of the random-weight model (default: tiny)")
    parser.add_argument("--output", default=str(ROOT / "engines" / "quickstart" / "model.onnx"))
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        checkpoint = Path(args.checkpoint) if args.checkpoint else Path(tmp) / "random-model"
        if not args.checkpoint:
            progress(f"quickstart: random-weight {args.preset} model (no trained weights yet) -> {checkpoint}")
            MegatronBertForMaskedLM(preset_config(args.preset)).save_pretrained(checkpoint)
        model = load_model_for_task(checkpoint, "mlm", progress=progress)
        result = export_onnx(model, "mlm", args.output, tokenizer_dir=checkpoint, progress=progress,
                             source=str(args.checkpoint or f"random {args.preset}"))
    problems = check_graph(result.path)
    print(result.summary())
    print("TensorRT readiness: " + ("ok" if not problems else "; ".join(problems)))
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
