"""The renderer entry: draws plots with the Agg canvas (set explicitly per figure) and writes files atomically.

No pyplot and no ``matplotlib.use``: each ``Figure`` gets its own ``FigureCanvasAgg``, so nothing here
depends on or changes a global backend, and no display or network is ever touched.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import multiprocessing
import os
import secrets
import signal
import warnings
from collections.abc import Iterable, Iterator, Sequence
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import NamedTuple

import numpy as np
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from viz import png
from viz.errors import OutputError
from viz.plots import DPI, PLOTS, PlotInput, new_axes, reset_axes

log = logging.getLogger(__name__)

PARALLEL_WORKERS = 2
"""Processes drawing at once for ``--plot all`` (this one plus forked helpers), capped by the CPUs."""
HELPER_TIMEOUT = 120.0
"""Seconds a forked helper may take before it is killed and the run fails."""


class Sheet(NamedTuple):
    canvas: FigureCanvasAgg
    figure: Figure
    axes: list[Axes]


_SHEETS: dict[tuple[tuple[float, float], int], Sheet] = {}
"""This process's figures by (size, panels), reused from plot to plot: creating the axes, their ticks
and tick labels, and measuring that text again costs about as much as drawing the plot. Each process
(a forked helper included) draws one plot at a time on its own copy."""


def sheet(size: tuple[float, float], panels: int) -> Sheet:
    """A figure of ``size`` with ``panels`` emptied axes, reused when this process drew that shape before."""
    key = (size, panels)
    cached = _SHEETS.get(key)
    if cached is None:
        fig = Figure(figsize=size, dpi=DPI, facecolor="white")
        cached = _SHEETS[key] = Sheet(FigureCanvasAgg(fig), fig, new_axes(fig, panels))
    else:
        for ax in cached.axes:
            reset_axes(ax)
    return cached


def render_png(name: str, data: PlotInput) -> bytes:
    """The PNG of plot ``name`` (a key of :data:`viz.plots.PLOTS`)."""
    spec = PLOTS[name]
    used: list[Sheet] = []

    def axes_for(panels: int) -> tuple[Figure, list[Axes]]:
        drawn = sheet(spec.size, panels)
        used.append(drawn)
        return drawn.figure, drawn.axes

    spec.draw(axes_for, data)
    ((canvas, _fig, _axes),) = used
    canvas.draw()  # type: ignore[no-untyped-call]  # untyped upstream
    return png.encode(np.asarray(canvas.buffer_rgba()))  # type: ignore[no-untyped-call]  # untyped upstream


def write_atomic(path: Path, payload: bytes) -> None:
    """Write ``payload`` to ``path`` through a temporary file in the same directory and ``os.replace``.

    The temporary file is created exclusively with mode 0666 filtered by the umask, like ``open``.
    """
    temporary = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    try:
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o666)
        with os.fdopen(fd, "wb") as handle:
            handle.write(payload)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except OSError as exc:
        with contextlib.suppress(OSError):
            temporary.unlink(missing_ok=True)
        raise OutputError(f"{path}: cannot write: {exc.strerror or exc}") from exc


def prepare_output_dir(directory: Path) -> None:
    """Create ``directory`` (and parents) when missing; refuse a path that is not a directory."""
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"{directory}: cannot create output directory: {exc.strerror or exc}") from exc
    if not directory.is_dir():
        raise OutputError(f"{directory}: not a directory")


def draw_here(names: Sequence[str], data: PlotInput, directory: Path) -> None:
    for name in names:
        path = directory / f"{name}.png"
        write_atomic(path, render_png(name, data))
        log.debug("wrote %s", path)


def _child(names: Sequence[str], data: PlotInput, directory: Path, conn: Connection) -> None:
    """Body of the forked helper: render ``names`` and report ``None`` or the one-line error."""
    # Ctrl-C reaches the whole process group: the parent handles it and stops this helper.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        draw_here(names, data, directory)
    except OutputError as exc:
        conn.send(str(exc))
    except Exception as exc:  # reported to the parent, which raises it as a bug (no silent loss)
        conn.send(f"BUG: plot rendering failed in helper process: {type(exc).__name__}: {exc}")
    else:
        conn.send(None)
    finally:
        conn.close()


def split_work(names: Sequence[str], workers: int, local_cost: float = 0.0) -> list[list[str]]:
    """Share plots between ``workers`` processes by rough cost, heaviest first onto the lightest share.

    Share 0 is this process, which starts with ``local_cost`` units of other work (one unit: about one
    one-panel plot). Empty shares are dropped, except share 0.
    """
    count = max(1, min(workers, len(names) + (1 if local_cost > 0 else 0)))
    shares: list[list[str]] = [[] for _ in range(count)]
    load = [local_cost] + [0.0] * (count - 1)
    for name in sorted(names, key=lambda n: -PLOTS[n].cost):
        lightest = load.index(min(load))
        shares[lightest].append(name)
        load[lightest] += PLOTS[name].cost
    return [shares[0]] + [share for share in shares[1:] if share]


def available_cpus() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def plan(names: Sequence[str], workers: int | None = None, local_cost: float = 0.0) -> list[list[str]]:
    """Which plots this process draws (share 0) and which each forked helper draws (the others).

    Helpers are used only with two or more CPUs (``workers`` defaults to :data:`PARALLEL_WORKERS`
    capped by them) and where ``fork`` exists: a fork inherits the prepared data without copying it.
    """
    if workers is None:
        workers = min(PARALLEL_WORKERS, available_cpus())
    if "fork" not in multiprocessing.get_all_start_methods():
        workers = 1
    return split_work(names, workers, local_cost)


@contextlib.contextmanager
def helpers_drawing(shares: Sequence[Sequence[str]], data: PlotInput, directory: Path) -> Iterator[None]:
    """Fork one helper per share to draw and write those plots while the ``with`` body runs.

    On leaving, it waits (bounded) for every helper, so none is cut off mid-write, and raises the
    first failure, the body's own error first. Only an interrupt stops the helpers at once.
    """
    helpers: list[tuple[BaseProcess, Connection]] = []
    try:
        _start_helpers(shares, data, directory, helpers)
        yield
    except (KeyboardInterrupt, SystemExit):
        for helper, pipe in helpers:
            helper.terminate()
            helper.join(HELPER_TIMEOUT)
            pipe.close()
        raise
    except BaseException:
        for helper, pipe in helpers:
            _collect(helper, pipe)
        raise
    problems = [_collect(process, receive) for process, receive in helpers]
    for problem in problems:
        if problem is not None:
            if problem.startswith("BUG:"):
                raise RuntimeError(problem)
            raise OutputError(problem)


def _start_helpers(shares: Sequence[Sequence[str]], data: PlotInput, directory: Path,
                   helpers: list[tuple[BaseProcess, Connection]]) -> None:
    """Fork one helper per share, appending each (process, report pipe) to ``helpers`` as it starts."""
    context = multiprocessing.get_context("fork")
    # Frozen objects are left alone by the helper's garbage collector, which would otherwise touch
    # (and so copy, page by page) the whole inherited heap.
    gc.freeze()
    try:
        with warnings.catch_warnings():
            # Python 3.12+ warns on fork when the process has other threads. The one ours has is
            # numpy's idle OpenBLAS pool, which resets itself in a forked child (pthread_atfork).
            warnings.filterwarnings("ignore", message=".*multi-threaded.*fork", category=DeprecationWarning)
            for share in shares:
                receive, send = context.Pipe(duplex=False)
                process = context.Process(target=_child, args=(list(share), data, directory, send), daemon=True)
                process.start()
                send.close()
                helpers.append((process, receive))
    finally:
        gc.unfreeze()


def render_plots(names: Iterable[str], data: PlotInput, directory: Path, workers: int | None = None) -> list[Path]:
    """Draw each named plot into ``directory/NAME.png``; returns the paths written, in ``names`` order.

    With two or more plots and CPUs a forked helper draws part of them while this process draws the
    rest (see :func:`plan`); ``workers=1`` keeps everything in this process.
    """
    ordered = list(names)
    mine, *theirs = plan(ordered, workers)
    with helpers_drawing(theirs, data, directory):
        draw_here(mine, data, directory)
    return [directory / f"{name}.png" for name in ordered]


def _collect(process: BaseProcess, receive: Connection) -> str | None:
    """Wait (bounded) for one helper's report; kill it if it does not answer in time."""
    try:
        if not receive.poll(HELPER_TIMEOUT):
            return f"BUG: plot helper process gave no answer within {HELPER_TIMEOUT:g} s"
        report: str | None = receive.recv()
        return report
    except EOFError:
        return f"BUG: plot helper process ended without a report (exit code {process.exitcode})"
    finally:
        receive.close()
        process.join(HELPER_TIMEOUT)
        if process.is_alive():
            process.kill()
            process.join(HELPER_TIMEOUT)
