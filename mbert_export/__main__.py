"""`python -m mbert_export` is the `mbert-export` command."""

import sys

from .cli import main

sys.exit(main())
