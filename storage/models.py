"""Typed, immutable records that cross the storage boundary.

A :class:`Sample` is one successful poll of one agent: the contract's fields plus detail fields.
An :class:`Alert` is a threshold or security transition. An :class:`AgentStatus` is the outcome of
every poll attempt, good or bad, so that dashboards can show "last seen" and "state". An
:class:`AuditEntry` is one record of an agent's audit log, copied by the collector into its central copy.
"""

from __future__ import annotations

from typing import Any, Literal, NamedTuple

from pydantic import BaseModel, ConfigDict, Field

ThreatLevel = Literal["none", "low", "medium", "high"]
Severity = Literal["info", "warning", "critical"]
AgentState = Literal[
    "up", "unreachable", "timeout", "tls_failure", "auth_refused", "rate_limited", "bad_response", "audit_broken"
]
AlertState = Literal["firing", "cleared"]

AGENT_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"
HASH_PATTERN = r"^[0-9a-f]{64}$"
MAX_AUDIT_LINE = 16_384


class _Record(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)


class Finding(_Record):
    """One security finding as stored: what, how bad, which ATT&CK technique, and the evidence."""

    kind: str = Field(max_length=64)
    severity: Literal["low", "medium", "high"]
    technique: str | None = Field(default=None, max_length=32)
    summary: str = Field(max_length=512)
    evidence: dict[str, str | int | float | None] = Field(default_factory=dict)


class Sample(_Record):
    """One stored sample: the contract's fields first, then the details."""

    agent: str = Field(pattern=AGENT_NAME_PATTERN)
    timestamp: float = Field(ge=0)
    cpu_usage: float | None = Field(default=None, ge=0, le=100)
    cpu_temperature: float | None = Field(default=None, ge=-100, le=250)
    load_1: float | None = Field(default=None, ge=0)
    load_5: float | None = Field(default=None, ge=0)
    load_15: float | None = Field(default=None, ge=0)
    memory_usage: float | None = Field(default=None, ge=0, le=100)
    disk_usage: float | None = Field(default=None, ge=0, le=100)
    security_issues: int = Field(default=0, ge=0)
    threat_level: ThreatLevel = "none"
    # details
    temperature_reason: str | None = Field(default=None, max_length=256)
    temperature_high: float | None = Field(default=None, ge=-100, le=250)
    temperature_critical: float | None = Field(default=None, ge=-100, le=250)
    swap_usage: float | None = Field(default=None, ge=0, le=100)
    cpu_count: int | None = Field(default=None, ge=1)
    ssh_failures: int | None = Field(default=0, ge=0)  # None: no SSH log source readable (not monitored)
    security_age: float | None = Field(default=None, ge=0)
    findings: tuple[Finding, ...] = ()
    extra: dict[str, Any] = Field(default_factory=dict)


class Alert(_Record):
    """A transition of one metric of one agent into (``firing``) or out of (``cleared``) breach."""

    agent: str = Field(pattern=AGENT_NAME_PATTERN)
    timestamp: float = Field(ge=0)
    metric: str = Field(max_length=64)
    value: float | None = None
    threshold: float | None = None
    severity: Severity
    state: AlertState = "firing"
    technique: str | None = Field(default=None, max_length=32)
    message: str = Field(default="", max_length=512)


class AgentStatus(_Record):
    """The outcome of one poll attempt of one agent."""

    agent: str = Field(pattern=AGENT_NAME_PATTERN)
    timestamp: float = Field(ge=0)
    state: AgentState
    detail: str = Field(default="", max_length=256)
    latency_ms: float | None = Field(default=None, ge=0)


class AuditEntry(_Record):
    """One record of an agent's audit log for the central copy: the agent's line byte for byte, and where it goes.

    ``new_copy`` starts a new central copy with this record: the copy held so far (whose last record's
    hash is ``closes``, ``""`` when there is none) is kept under its own name and never written again.
    A store applies an entry only where it fits (:func:`storage.auditcopy.placement`), so a replay
    stores nothing twice.
    """

    agent: str = Field(pattern=AGENT_NAME_PATTERN)
    seq: int = Field(ge=0)
    hash: str = Field(pattern=HASH_PATTERN)
    prev: str = Field(pattern=HASH_PATTERN)
    time: str = Field(default="", max_length=32)
    line: str = Field(min_length=2, max_length=MAX_AUDIT_LINE)
    new_copy: bool = False
    closes: str | None = Field(default=None, max_length=64)
    broke_at: float | None = Field(default=None, ge=0)  # when the break was found: names the copy kept


class AuditTail(NamedTuple):
    """The last record of an agent's current central copy."""

    hash: str
    seq: int
    time: str


SAMPLE_COLUMNS: tuple[str, ...] = (
    "agent",
    "timestamp",
    "cpu_usage",
    "cpu_temperature",
    "load_1",
    "load_5",
    "load_15",
    "memory_usage",
    "disk_usage",
    "security_issues",
    "threat_level",
    "temperature_reason",
    "temperature_high",
    "temperature_critical",
    "swap_usage",
    "cpu_count",
    "ssh_failures",
    "security_age",
)
"""Columns of the frames that :meth:`storage.base.Store.query_samples` returns (findings are not in frames)."""

ALERT_COLUMNS: tuple[str, ...] = tuple(Alert.model_fields)
STATUS_COLUMNS: tuple[str, ...] = tuple(AgentStatus.model_fields)
