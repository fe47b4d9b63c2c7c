"""The throwaway metric of the add-a-metric test: its one declaration and its one probe.

This is everything CONTRIBUTING.md's walkthrough asks of a new numeric metric: the declaration (in a
real change, one more entry of ``storage.catalog.METRICS``) and the probe (in a real change, a module of
``secure_agent/probes``). Imported first, before any program is, by the process that runs
``flow_add_a_metric.py``.
"""

from __future__ import annotations

from secure_agent.probes.registry import Roots, numeric_probe
from storage.catalog import Column, Metric, Plot, Threshold, declare

NAME = "handles_usage"
FILE = "sys/fs/handles-usage"  # under the agent's proc root: a fixture the test writes
declare(
    Metric(
        NAME, "File handles in use", unit="%", ge=0.0, le=100.0,
        threshold=Threshold(NAME, 50.0, le=100.0), plot=Plot("handles", "File handles in use"),
        column=Column("Handles", "{:.0f} %"),
    )
)


@numeric_probe(NAME)
def read_handles_usage(roots: Roots) -> float | str:
    try:
        return float((roots.proc / FILE).read_text().strip())
    except (OSError, ValueError):
        return "no handle count readable"
