"""``python -m secure_collector``: the same as ``secure-collector``."""

import sys

from secure_collector.cli import main

sys.exit(main())
