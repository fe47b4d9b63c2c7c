"""Hypothesis strategies for the stored records (modest, but reaching the awkward corners)."""

from __future__ import annotations

from hypothesis import strategies as st

from storage.models import AgentStatus, Alert, Finding, Sample

agents = st.from_regex(r"[A-Za-z0-9][A-Za-z0-9._-]{0,12}", fullmatch=True) | st.sampled_from(["null", "NaN", "NA"])
timestamps = st.floats(min_value=0, max_value=4e9, allow_nan=False, allow_infinity=False)
# text that stresses the JSON-lines reader: quotes, backslashes, commas, colons, newlines, "null", unicode
texts = st.text(max_size=40) | st.sampled_from(
    ["", "null", '"', "\\", 'a":b', ":", "x,y", "\n", "ünï", "'", "\x00", "\x1a", "%s", "'); DROP TABLE metrics; --"]
)


def _percent() -> st.SearchStrategy[float | None]:
    return st.none() | st.floats(min_value=0, max_value=100, allow_nan=False)


def _positive() -> st.SearchStrategy[float | None]:
    return st.none() | st.floats(min_value=0, max_value=1e6, allow_nan=False)


findings = st.builds(
    Finding,
    kind=st.sampled_from(["exec_from_tmp", "ssh_bruteforce"]),
    severity=st.sampled_from(["low", "medium", "high"]),
    technique=st.none() | st.just("T1110"),
    summary=texts,
    evidence=st.dictionaries(
        st.sampled_from(["path", "pid", "agent"]), st.none() | st.integers(0, 99) | texts, max_size=3
    ),
)

samples = st.builds(
    Sample,
    agent=agents,
    timestamp=timestamps,
    cpu_usage=_percent(),
    cpu_temperature=st.none() | st.floats(min_value=-100, max_value=250, allow_nan=False),
    load_1=_positive(),
    load_5=_positive(),
    load_15=_positive(),
    memory_usage=_percent(),
    disk_usage=_percent(),
    security_issues=st.integers(0, 10**6),
    threat_level=st.sampled_from(["none", "low", "medium", "high"]),
    temperature_reason=st.none() | texts,
    temperature_high=st.none() | st.floats(min_value=-100, max_value=250, allow_nan=False),
    temperature_critical=st.none(),
    swap_usage=_percent(),
    cpu_count=st.none() | st.integers(1, 4096),
    ssh_failures=st.integers(0, 10**6),
    security_age=_positive(),
    findings=st.lists(findings, max_size=2).map(tuple),
    extra=st.dictionaries(st.sampled_from(["agent", "k", "x,y"]), st.none() | st.integers() | texts, max_size=2),
)

alerts = st.builds(
    Alert,
    agent=agents,
    timestamp=timestamps,
    metric=st.sampled_from(["cpu_usage", "disk_usage", "security"]),
    value=st.none() | st.floats(allow_nan=False, allow_infinity=False),
    threshold=st.none() | st.floats(allow_nan=False, allow_infinity=False),
    severity=st.sampled_from(["info", "warning", "critical"]),
    state=st.sampled_from(["firing", "cleared"]),
    technique=st.none() | st.just("T1110"),
    message=texts,
)

statuses = st.builds(
    AgentStatus,
    agent=agents,
    timestamp=timestamps,
    state=st.sampled_from(["up", "timeout", "bad_response"]),
    detail=texts,
    latency_ms=_positive(),
)
