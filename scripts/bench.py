"""Benchmark every backend in one interleaved run: `python scripts/bench.py [--model demo|PRESET]`.

The same as `mbert-export bench`; run with --help for every option.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mbert_export.cli import main, script_parser  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:], script_parser("bench", "bench.py")))
