"""Acknowledged findings: known causes an operator has accepted, still reported, never raising the threat level.

An entry of ``security.acknowledged_findings`` matches a finding when every selector it gives matches
(``kind``, the executable ``path`` or its ``sha256``, the process ``user``, the SSH source ``address``);
it carries a ``reason`` and may carry an ``expires`` date (valid through that day, UTC). A matched finding
keeps its place in the answer with ``evidence.acknowledged`` set to the reason, and counts neither in
``issues`` nor in ``threat_level``. Once expired, an entry matches nothing and the finding counts again.
The agent writes every entry to its audit log at start (event ``acknowledgement``).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Iterable, Sequence
from typing import Protocol

from secure_agent.probes._text import clean_text
from secure_agent.probes.findings import Finding, ThreatLevel, most_severe, threat_level

ACKNOWLEDGED = "acknowledged"
MAX_REASON = 120


class Entry(Protocol):
    """One ``security.acknowledged_findings`` entry (:class:`secure_agent.config.AcknowledgedFinding`)."""

    @property
    def reason(self) -> str: ...
    @property
    def kind(self) -> str | None: ...
    @property
    def path(self) -> str | None: ...
    @property
    def sha256(self) -> str | None: ...
    @property
    def user(self) -> str | None: ...
    @property
    def address(self) -> str | None: ...
    @property
    def expires(self) -> dt.date | None: ...


def expired(entry: Entry, now: float) -> bool:
    if entry.expires is None:
        return False
    return dt.datetime.fromtimestamp(now, dt.UTC).date() > entry.expires


def describe(entry: Entry) -> str:
    """``kind=... path=... until=YYYY-MM-DD: reason``, for the audit log and the agent's log."""
    selectors = [
        f"{name}={value}"
        for name, value in (
            ("kind", entry.kind), ("path", entry.path), ("sha256", entry.sha256 and entry.sha256[:16]),
            ("user", entry.user), ("address", entry.address), ("until", entry.expires),
        )
        if value is not None
    ]
    return f"{' '.join(selectors)}: {entry.reason}"


def _matches(entry: Entry, finding: Finding) -> bool:
    evidence = dict(finding.evidence)
    wanted = (
        (entry.kind, finding.kind), (entry.path, evidence.get("path")), (entry.sha256, evidence.get("sha256")),
        (entry.user, evidence.get("user")), (entry.address, evidence.get("address")),
    )
    return all(value is None or value == seen for value, seen in wanted)


class Acknowledger:
    """Applies the entries to a scan's findings; the clock decides which entries are still in force."""

    def __init__(self, entries: Sequence[Entry], clock: Callable[[], float]) -> None:
        self.entries = tuple(entries)
        self._clock = clock

    def apply(self, findings: Iterable[Finding]) -> tuple[list[Finding], list[Finding]]:
        """(open findings, acknowledged findings marked with their reason)."""
        now = self._clock()
        live = [entry for entry in self.entries if not expired(entry, now)]
        open_: list[Finding] = []
        acknowledged: list[Finding] = []
        for finding in findings:
            entry = next((entry for entry in live if _matches(entry, finding)), None)
            if entry is None:
                open_.append(finding)
                continue
            reason = clean_text(entry.reason, MAX_REASON)
            acknowledged.append(finding._replace(evidence=(*finding.evidence, (ACKNOWLEDGED, reason))))
        return open_, acknowledged


def summarise(
    open_: Sequence[Finding], acknowledged: Sequence[Finding]
) -> tuple[tuple[Finding, ...], int, ThreatLevel]:
    """The findings to report (open ones first, the most severe within the cap), the issue count, the level."""
    shown = most_severe(open_)
    room = max(0, len(most_severe(list(open_) + list(acknowledged))) - len(shown))
    return shown + most_severe(acknowledged, room), len(open_), threat_level(open_)
