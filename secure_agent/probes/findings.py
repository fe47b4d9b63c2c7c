"""Security findings: what was seen, how bad it is, which ATT&CK technique it indicates, and the evidence.

Kinds and the ATT&CK technique each indicates (docs/protocol.md lists the kinds):

- ``exec_from_tmp`` -> T1059: a payload dropped in a world-writable directory and executed (Execution;
  Command and Scripting Interpreter is the nearest technique for "ran a dropped binary").
- ``deleted_executable`` -> T1070.004: the binary was removed after it started (Indicator Removal: File
  Deletion); memfd ("fileless") executables land here too.
- ``ssh_bruteforce`` -> T1110: Brute Force, password guessing over SSH.
- ``suspicious_port_listener`` -> T1571: Non-Standard Port, a listener on a port backdoors and C2 use.
- ``suspicious_port_connection`` -> T1571: traffic to or from such a port.
- ``unexpected_listener`` -> T1571: a process serving on a port it is not expected to (the nearest
  technique for a bind shell or an unsanctioned service).

``threat_level`` is the highest severity among the findings (``none`` without findings).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Literal, NamedTuple

from secure_agent.probes._text import MAX_TEXT, clean_text, wire_int

Severity = Literal["low", "medium", "high"]
ThreatLevel = Literal["none", "low", "medium", "high"]
EvidenceValue = str | int | float | None

EXEC_FROM_TMP = "exec_from_tmp"
DELETED_EXECUTABLE = "deleted_executable"
SSH_BRUTEFORCE = "ssh_bruteforce"
SUSPICIOUS_PORT_LISTENER = "suspicious_port_listener"
SUSPICIOUS_PORT_CONNECTION = "suspicious_port_connection"
UNEXPECTED_LISTENER = "unexpected_listener"

TECHNIQUES: dict[str, str] = {
    EXEC_FROM_TMP: "T1059",
    DELETED_EXECUTABLE: "T1070.004",
    SSH_BRUTEFORCE: "T1110",
    SUSPICIOUS_PORT_LISTENER: "T1571",
    SUSPICIOUS_PORT_CONNECTION: "T1571",
    UNEXPECTED_LISTENER: "T1571",
}

SEVERITY_RANK: dict[str, int] = {"low": 1, "medium": 2, "high": 3}

MAX_FINDINGS = 256
"""The collector refuses more (docs/protocol.md); the most severe are kept."""


class Finding(NamedTuple):
    kind: str
    severity: Severity
    technique: str | None
    summary: str
    evidence: tuple[tuple[str, EvidenceValue], ...]

    def as_wire(self) -> dict[str, object]:
        return {
            "kind": self.kind,
            "severity": self.severity,
            "technique": self.technique,
            "summary": self.summary,
            "evidence": dict(self.evidence),
        }


def _evidence_value(value: object) -> EvidenceValue:
    if value is None or isinstance(value, float):
        return value
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, int):
        return wire_int(value)
    return clean_text(str(value))


def make_finding(
    kind: str, severity: Severity, summary: str, evidence: Mapping[str, object]
) -> Finding:
    """A finding whose text is cleaned and whose numbers fit the wire; ``None`` evidence is dropped."""
    cleaned = tuple(
        (key, _evidence_value(value)) for key, value in evidence.items() if value is not None
    )
    return Finding(kind, severity, TECHNIQUES.get(kind), clean_text(summary, MAX_TEXT), cleaned)


def threat_level(findings: Iterable[Finding]) -> ThreatLevel:
    """The highest severity among ``findings``, or ``"none"``."""
    rank = max((SEVERITY_RANK[finding.severity] for finding in findings), default=0)
    levels: tuple[ThreatLevel, ...] = ("none", "low", "medium", "high")
    return levels[rank]


def most_severe(findings: Iterable[Finding], limit: int = MAX_FINDINGS) -> tuple[Finding, ...]:
    """At most ``limit`` findings, most severe first (stable within a severity)."""
    ordered = sorted(findings, key=lambda finding: -SEVERITY_RANK[finding.severity])
    return tuple(ordered[:limit])
