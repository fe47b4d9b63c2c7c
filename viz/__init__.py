"""viz: reads storage and draws plots and an HTML dashboard; knows nothing of the wire.

Flow (:func:`viz.app.generate`): query the samples of the window -> :func:`viz.series.prepare` groups
them per agent and time bin once -> each plot of :data:`viz.plots.PLOTS` reduces its columns to at
most ``MAX_BINS`` points per line and draws on its own ``Figure`` with an explicit Agg canvas ->
PNGs and ``index.html`` are written atomically. For ``--plot all`` a forked helper draws part of the
plots while this process reads agent states and alerts for the dashboard and draws the rest.

Up to six agents share a plot line by line; a larger fleet is drawn as the median across agents with
a min-max band, plus the five agents with the highest peak as their own lines (small multiples of a
hundred agents would be neither readable nor fast). Every plot keeps a fixed pixel size.

Exceptions (all in :mod:`viz.errors`)::

    VizError                     root of everything this package raises
    ├── VizConfigError           the collector config (its ``storage``/``thresholds``) or an option is unusable
    ├── NoDataError              no samples for the requested window or agent
    └── OutputError              the output directory or a file in it cannot be written

``viz`` imports ``storage`` only; nothing imports ``viz``. The program is :mod:`viz.cli`.
"""

__version__ = "0.1.0"  # the project's version (pyproject.toml); a test keeps them equal

from viz.errors import NoDataError, OutputError, VizConfigError, VizError

__all__ = ["NoDataError", "OutputError", "VizConfigError", "VizError"]
