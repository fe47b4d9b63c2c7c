"""``python -m viz`` runs the ``secure-viz`` program."""

import sys

from viz.cli import main

sys.exit(main())
