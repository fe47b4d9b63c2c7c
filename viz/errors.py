"""The exception tree of :mod:`viz` (see the package docstring)."""


class VizError(Exception):
    """Root of every error raised by the viz package; messages are one line, fit for stderr."""


class VizConfigError(VizError):
    """The configuration file or a command-line value cannot be used; names the file and key."""


class NoDataError(VizError):
    """Storage holds no samples for the requested window (and agent)."""


class OutputError(VizError):
    """The output directory or a file in it cannot be written; names the path."""
