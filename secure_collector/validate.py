"""The ``get_metrics`` answer as the collector accepts it: an agent is untrusted input.

:class:`MetricsAnswer` is a strict pydantic model of docs/protocol.md: exact types (an ``int`` is not a
``str``, a ``bool`` is not a number), ranges, no NaN or infinity, strings of at most :data:`MAX_TEXT`
characters, at most :data:`MAX_FINDINGS` findings, :data:`MAX_DISKS` disks and :data:`MAX_CORES` per-core
values. Unknown keys are ignored (a newer agent may send more) and never stored. Identifiers an agent
chooses -- finding kinds, evidence keys, the keys of ``unavailable``, the version -- are held to strict
patterns (:data:`IDENTIFIER`), so they can appear in metric names and log lines as they are; free text
(summaries, mounts, reasons) is escaped wherever it is printed (:func:`storage.escape.escape`). Anything
else makes the whole answer a "bad response": nothing of it is stored, and the error names the field
by a path whose agent-chosen parts are escaped too.

:func:`to_sample` turns a valid answer into a :class:`storage.models.Sample`. Its timestamp is the
**collector's** clock when the answer arrived, not the agent's: the agent's clock is as untrusted as the
rest of its answer, and a dedup key (agent, timestamp) chosen by the agent would let it overwrite or hide
samples. The agent's own timestamp is kept in ``extra["agent_timestamp"]`` with the skew between the
clocks (``extra["clock_skew"]``, agent minus collector, seconds).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model

from storage.catalog import METRICS
from storage.escape import escape
from storage.models import AGENT_NAME_PATTERN, Finding, Sample, metric_field

MAX_TEXT = 512
MAX_FINDINGS = 256
MAX_DISKS = 256
MAX_CORES = 1024
MAX_EVIDENCE = 32
MAX_UNAVAILABLE = 64
MAX_BYTES = 2.0**64
MAX_REASON = 256
"""Sample.temperature_reason's length; a longer reason (the wire allows 512) is cut short."""
STORED_DISKS = 16
"""The fullest disks kept in a sample's ``extra["disks"]`` (mount and percent)."""

IDENTIFIER = r"^[a-z][a-z0-9_]{0,63}$"
"""Finding kinds and evidence keys: lower-case letters, digits and underscores, as the agent's own."""
METRIC_KEY = r"^[a-z][a-z0-9_.]{0,63}$"
VERSION = r"^[A-Za-z0-9.+_-]{0,64}$"

Text = Annotated[str, Field(max_length=MAX_TEXT)]
Percent = Annotated[float, Field(ge=0, le=100)]
Celsius = Annotated[float, Field(ge=-100, le=250)]
Load = Annotated[float, Field(ge=0, le=1e6)]
Bytes = Annotated[float, Field(ge=0, le=MAX_BYTES)]
Count = Annotated[int, Field(ge=0, le=2**31 - 1)]
Level = Literal["none", "low", "medium", "high"]
EvidenceKey = Annotated[str, Field(pattern=IDENTIFIER)]
EvidenceValue = Annotated[str, Field(max_length=MAX_TEXT)] | Annotated[int, Field(ge=-(2**63), le=2**63)] | float | None


class _Wire(BaseModel):
    model_config = ConfigDict(strict=True, frozen=True, extra="ignore", allow_inf_nan=False)


class TemperatureSection(_Wire):
    celsius: Celsius | None = None
    reason: Text | None = None
    sensor: Text | None = None
    high: Celsius | None = None
    critical: Celsius | None = None


class CPUSection(_Wire):
    percent: Percent | None = None
    per_core: Annotated[list[Percent], Field(max_length=MAX_CORES)] = []
    count: Annotated[int, Field(ge=1, le=1_000_000)] | None = None


class LoadSection(_Wire):
    load_1: Load | None = None
    load_5: Load | None = None
    load_15: Load | None = None
    per_core_1: Load | None = None


class MemorySection(_Wire):
    total: Bytes | None = None
    available: Bytes | None = None
    used: Bytes | None = None
    percent: Percent | None = None
    swap_total: Bytes | None = None
    swap_used: Bytes | None = None
    swap_percent: Percent | None = None


class DiskSection(_Wire):
    mount: Text
    device: Text = ""
    fstype: Text = ""
    total: Bytes | None = None
    used: Bytes | None = None
    free: Bytes | None = None
    percent: Percent | None = None


class FindingSection(_Wire):
    kind: Annotated[str, Field(pattern=IDENTIFIER)]
    severity: Literal["low", "medium", "high"]
    technique: Annotated[str, Field(max_length=32, pattern=r"^T\d{4}(\.\d{3})?$")] | None = None
    summary: Text = ""
    evidence: Annotated[dict[EvidenceKey, EvidenceValue], Field(max_length=MAX_EVIDENCE)] = {}


class SecuritySection(_Wire):
    threat_level: Level = "none"
    issues: Count = 0
    scanned_at: Annotated[float, Field(ge=0)] | None = None
    age: Annotated[float, Field(ge=0)] | None = None
    ssh_failures: Count | None = 0  # None: the agent has no SSH log source it can read
    findings: Annotated[list[FindingSection], Field(max_length=MAX_FINDINGS)] = []


_SECTIONS: dict[str, Any] = {
    "temperature": (TemperatureSection, TemperatureSection()),
    "cpu": (CPUSection, CPUSection()),
    "load": (LoadSection, LoadSection()),
    "memory": (MemorySection | None, MemorySection()),  # None: memory unreadable or metrics.enable_memory off
    "disks": (Annotated[list[DiskSection], Field(max_length=MAX_DISKS)], []),
    "security": (SecuritySection, SecuritySection()),
    "unavailable": (
        Annotated[dict[Annotated[str, Field(pattern=METRIC_KEY)], Text | None], Field(max_length=MAX_UNAVAILABLE)],
        {},
    ),
    # the newest sample in the agent's buffer (get_samples); absent from agents without one
    "sample_seq": (Annotated[int, Field(ge=0, le=2**31 - 1)] | None, None),
}


def _answer_fields() -> dict[str, Any]:
    """The answer's members: its identity, every top-level metric of storage.catalog, the detail sections."""
    fields: dict[str, Any] = {
        "agent": (Annotated[str, Field(pattern=AGENT_NAME_PATTERN)], ...),
        "timestamp": (Annotated[float, Field(ge=0, le=1e11)], ...),
        "version": (Annotated[str, Field(pattern=VERSION)], ""),
    }
    fields.update((m.name, metric_field(m)) for m in METRICS if not m.source and m.contract and not m.by_collector)
    fields["threat_level"] = (Level, "none")
    fields.update(_SECTIONS)
    fields.update((m.name, metric_field(m)) for m in METRICS if not m.source and not m.contract and not m.by_collector)
    return fields


if TYPE_CHECKING:

    class MetricsAnswer(_Wire):
        """One ``get_metrics()`` answer (for type checkers: its metrics are read as ``Any``)."""

        agent: str
        timestamp: float
        version: str = ""
        threat_level: Level = "none"
        temperature: TemperatureSection = TemperatureSection()
        cpu: CPUSection = CPUSection()
        load: LoadSection = LoadSection()
        memory: MemorySection | None = MemorySection()
        disks: list[DiskSection] = []
        security: SecuritySection = SecuritySection()
        unavailable: dict[str, str | None] = {}

        def __getattr__(self, name: str) -> Any: ...

else:
    MetricsAnswer = create_model(
        "MetricsAnswer",
        __base__=_Wire,
        __module__=__name__,
        __doc__="One ``get_metrics()`` answer (docs/protocol.md); its metrics are storage.catalog's.",
        **_answer_fields(),
    )


class AnswerInvalid(ValueError):
    """The answer broke the model; the message names the first offending field, never its value."""


def validate_answer(value: Any, expected_agent: str) -> MetricsAnswer:
    """Validate a parsed answer; it must name the agent we called (an agent cannot answer for another)."""
    if not isinstance(value, dict):
        raise AnswerInvalid("answer is not a struct")
    try:
        answer = MetricsAnswer.model_validate(value)
    except ValidationError as exc:
        first = exc.errors(include_url=False, include_input=False)[0]
        where = escape(".".join(str(part) for part in first["loc"]), 120) or "(answer)"
        raise AnswerInvalid(f"invalid field {where}: {first['type']}") from None
    if answer.agent != expected_agent:
        raise AnswerInvalid("answer names another agent")
    return answer


_FINDINGS: dict[tuple[object, ...], Finding] = {}
_FINDINGS_CACHE = 4096


def _finding(section: FindingSection) -> Finding:
    """The stored finding of a validated one; an agent reports the same findings poll after poll, and a
    frozen record can be shared, so they are built once (a bounded cache, emptied when full)."""
    key = (section.kind, section.severity, section.technique, section.summary, *section.evidence.items())
    finding = _FINDINGS.get(key)
    if finding is None:
        if len(_FINDINGS) >= _FINDINGS_CACHE:
            _FINDINGS.clear()
        finding = _FINDINGS[key] = Finding.model_construct(
            kind=section.kind,
            severity=section.severity,
            technique=section.technique,
            summary=section.summary,
            evidence=dict(section.evidence),
        )
    return finding


def _pick(answer: MetricsAnswer, path: tuple[str, ...]) -> Any:
    """The value at ``path`` in a validated answer (None where a section is missing)."""
    value: Any = answer
    for name in path:
        if value is None:
            return None
        value = getattr(value, name)
    return value


def to_sample(answer: MetricsAnswer, timestamp: float, measured: Mapping[str, float | None] | None = None) -> Sample:
    """The stored sample of a valid answer, stamped with the collector's ``timestamp``.

    ``measured``: the metrics the collector measures itself (``by_collector`` in storage.catalog), such as
    the days left on the certificate the agent presented in its handshake.
    """
    findings = tuple(_finding(f) for f in answer.security.findings)
    disks = sorted((d for d in answer.disks if d.percent is not None), key=lambda d: d.percent or 0.0, reverse=True)[
        :STORED_DISKS
    ]
    extra: dict[str, Any] = {
        "agent_timestamp": answer.timestamp,
        "clock_skew": round(answer.timestamp - timestamp, 3),
        "agent_version": answer.version,
        "disks": [{"mount": d.mount, "percent": d.percent} for d in disks],
    }
    if answer.unavailable:
        extra["unavailable"] = sorted(answer.unavailable)
    if answer.sample_seq is not None:
        extra["sample_seq"] = answer.sample_seq
    reason = answer.temperature.reason
    values: dict[str, Any] = {
        "agent": answer.agent,
        "timestamp": timestamp,
        "threat_level": answer.threat_level,
        "temperature_reason": None if reason is None else reason[:MAX_REASON],
        "findings": findings,
        "extra": extra,
    }
    for metric in METRICS:
        if metric.by_collector:
            values[metric.name] = (measured or {}).get(metric.name)
        else:
            values[metric.name] = _pick(answer, metric.path)
    # Every field went through MetricsAnswer's ranges, which are those of Sample or narrower (tests check
    # that the two models agree); Sample's own validator, in pydantic-core, still costs less than
    # model_construct's Python loop, so the stored record is checked once more, for free.
    try:
        return Sample.model_validate(values)
    except ValidationError as exc:
        first = exc.errors(include_url=False, include_input=False)[0]
        where = escape(".".join(str(part) for part in first["loc"]), 120) or "(sample)"
        raise AnswerInvalid(f"invalid sample field {where}: {first['type']}") from None
