"""What ``secure-audit check`` reports: typed findings and their two renderings (text and JSON).

A finding names the configuration file and key it comes from, the file at fault when there is one,
what is wrong, and the fix, so that an operator (or an auditor's script reading ``--json``) can act on
it without reading our code. Messages never hold key material: at most a key's length or a file mode.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable, Sequence
from enum import IntEnum
from typing import Literal, NamedTuple

Role = Literal["agent", "collector"]


class Severity(IntEnum):
    """How urgent a finding is; ordered so that ``max()`` and ``>=`` work."""

    INFO = 0  # a deliberate but weaker choice, or a default worth writing down
    LOW = 1  # defence in depth is thinner than it should be
    MEDIUM = 2  # a control is weakened or will fail soon (expiry)
    HIGH = 3  # a control is missing or broken now

    @property
    def label(self) -> str:
        return self.name.lower()

    @classmethod
    def parse(cls, text: str) -> Severity:
        return cls[text.upper()]


class Finding(NamedTuple):
    id: str  # stable identifier, e.g. "key-file-readable"
    severity: Severity
    role: Role  # which config it comes from
    config: str  # path of that config file, as given
    key: str  # config key path, e.g. "security.hmac_keys.collector"
    message: str
    fix: str
    file: str | None = None  # the file at fault, when there is one

    def as_json(self) -> dict[str, str | None]:
        return {
            "id": self.id,
            "severity": self.severity.label,
            "role": self.role,
            "config": self.config,
            "key": self.key,
            "file": self.file,
            "message": self.message,
            "fix": self.fix,
        }


class Checked(NamedTuple):
    role: Role
    config: str


def ordered(findings: Iterable[Finding]) -> list[Finding]:
    """Most severe first; then by config, key and id, so reports are stable from run to run."""
    return sorted(findings, key=lambda f: (-f.severity, f.role, f.config, f.key, f.id))


def _counts(findings: Sequence[Finding]) -> dict[str, int]:
    counter = Counter(f.severity for f in findings)
    return {severity.label: counter.get(severity, 0) for severity in sorted(Severity, reverse=True)}


def render_text(checked: Sequence[Checked], findings: Sequence[Finding]) -> str:
    lines = [f"secure-audit check: {', '.join(f'{c.role} config {c.config}' for c in checked)}"]
    for finding in ordered(findings):
        where = f"{finding.role} {finding.key}" + (f" ({finding.file})" if finding.file else "")
        lines.append(f"[{finding.severity.name}] {finding.id}: {where}")
        lines.append(f"    {finding.message}")
        lines.append(f"    fix: {finding.fix}")
    if findings:
        summary = ", ".join(f"{n} {label}" for label, n in _counts(findings).items() if n)
        lines.append(f"{len(findings)} finding{'s' if len(findings) != 1 else ''}: {summary}")
    else:
        lines.append("no findings")
    return "\n".join(lines) + "\n"


def render_json(checked: Sequence[Checked], findings: Sequence[Finding]) -> str:
    document = {
        "result": "findings" if findings else "clean",
        "checked": [{"role": c.role, "config": c.config} for c in checked],
        "counts": _counts(findings),
        "findings": [f.as_json() for f in ordered(findings)],
    }
    return json.dumps(document, indent=2) + "\n"
