"""``python -m bench``: every benchmark, then docs/benchmarks.md (see bench/run_all.py)."""

import sys

from bench.run_all import main

sys.exit(main())
