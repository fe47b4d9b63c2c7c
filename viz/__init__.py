"""viz: reads storage and draws plots and an HTML dashboard; knows nothing of the wire.

Exceptions (all in :mod:`viz.errors`)::

    VizError                     root of everything this package raises
    ├── VizConfigError           the collector config (its ``storage``/``thresholds``) or an option is unusable
    ├── NoDataError              no samples for the requested window or agent
    └── OutputError              the output directory or a file in it cannot be written

``viz`` imports ``storage`` only; nothing imports ``viz``. The program is :mod:`viz.cli`.
"""

from viz.errors import NoDataError, OutputError, VizConfigError, VizError

__all__ = ["NoDataError", "OutputError", "VizConfigError", "VizError"]
