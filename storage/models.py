"""Typed, immutable records that cross the storage boundary.

A :class:`Sample` is one successful poll of one agent: the contract's fields plus detail fields.
An :class:`Alert` is a threshold or security transition. An :class:`AgentStatus` is the outcome of
every poll attempt, good or bad, so that dashboards can show "last seen" and "state". An
:class:`AuditEntry` is one record of an agent's audit log, copied by the collector into its central copy.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal, NamedTuple

from pydantic import BaseModel, ConfigDict, Field, create_model

from storage.catalog import METRICS, Metric

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


def metric_field(metric: Metric) -> tuple[Any, Any]:
    """The pydantic field of ``metric`` (type and bounds), for the stored sample and the agent's answer."""
    kind: Any = int if metric.integer else float
    default = int(metric.default) if metric.integer and metric.default is not None else metric.default
    return (kind | None if metric.nullable else kind), Field(default=default, ge=metric.ge, le=metric.le)


def _sample_fields() -> dict[str, Any]:
    """The fields of a sample: the contract's first, then the details (storage.catalog's order)."""
    fields: dict[str, Any] = {
        "agent": (str, Field(pattern=AGENT_NAME_PATTERN)),
        "timestamp": (float, Field(ge=0)),
    }
    fields.update((m.name, metric_field(m)) for m in METRICS if m.contract)
    fields["threat_level"] = (ThreatLevel, "none")
    fields["temperature_reason"] = (str | None, Field(default=None, max_length=256))
    fields.update((m.name, metric_field(m)) for m in METRICS if not m.contract)
    fields["findings"] = (tuple[Finding, ...], ())
    fields["extra"] = (dict[str, Any], Field(default_factory=dict))
    return fields


if TYPE_CHECKING:

    class Sample(_Record):
        """One stored sample (for type checkers: the metrics of storage.catalog are read as ``Any``)."""

        agent: str
        timestamp: float
        threat_level: ThreatLevel = "none"
        temperature_reason: str | None = None
        findings: tuple[Finding, ...] = ()
        extra: dict[str, Any] = {}

        def __init__(self, **data: Any) -> None: ...

        def __getattr__(self, name: str) -> Any: ...

else:
    Sample = create_model(
        "Sample",
        __base__=_Record,
        __module__=__name__,
        __doc__="One stored sample: the contract's fields first, then the details (fields: storage.catalog).",
        **_sample_fields(),
    )


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
    # what every backend can hold (MySQL: BIGINT, an ASCII VARCHAR(32)); a sealed record with other values is
    # none of an agent's (its seal is a plain hash: anyone can make one), and one row refused would block the
    # spool behind it
    seq: int = Field(ge=0, le=2**63 - 1)
    hash: str = Field(pattern=HASH_PATTERN)
    prev: str = Field(pattern=HASH_PATTERN)
    time: str = Field(default="", max_length=32, pattern=r"^[\x20-\x7e]*$")
    line: str = Field(min_length=2, max_length=MAX_AUDIT_LINE, pattern=r"^[\x20-\x7e]*$")
    new_copy: bool = False
    closes: str | None = Field(default=None, max_length=64)
    broke_at: float | None = Field(default=None, ge=0)  # when the break was found: names the copy kept


class AuditTail(NamedTuple):
    """The last record of an agent's current central copy."""

    hash: str
    seq: int
    time: str


SAMPLE_COLUMNS: tuple[str, ...] = tuple(
    name for name in _sample_fields() if name not in ("findings", "extra")
)
"""Columns of the frames that :meth:`storage.base.Store.query_samples` returns (findings are not in frames)."""

ALERT_COLUMNS: tuple[str, ...] = tuple(Alert.model_fields)
STATUS_COLUMNS: tuple[str, ...] = tuple(AgentStatus.model_fields)
