"""Build a verified FP32/FP16/INT8 artifact for one task: `python scripts/build_engine.py --task mlm --fp16`.

The same as `mbert-export build`; run with --help for every option.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mbert_export.cli import main, script_parser  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:], script_parser("build", "build_engine.py")))
