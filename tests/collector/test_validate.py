"""The answer model: exact types and ranges, nothing of a bad answer kept, samples that storage accepts."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from secure_collector.validate import MAX_FINDINGS, AnswerInvalid, to_sample, validate_answer
from storage.models import Sample
from tests.collector.answers import good_answer


def test_good_answer_becomes_a_sample_stamped_by_the_collector() -> None:
    sample = to_sample(validate_answer(good_answer(), "localhost"), 1_800_000_000.123)
    assert sample.agent == "localhost"
    assert sample.timestamp == 1_800_000_000.123
    assert sample.extra["agent_timestamp"] == 1_700_000_000.25
    assert sample.extra["clock_skew"] == pytest.approx(-99_999_999.873)
    assert (sample.cpu_usage, sample.load_1, sample.memory_usage, sample.disk_usage) == (12.5, 0.5, 41.2, 63.0)
    assert (sample.temperature_high, sample.temperature_critical, sample.cpu_count) == (84.0, 100.0, 2)
    assert sample.swap_usage == 5.0 and sample.ssh_failures == 7 and sample.security_age == 0.25
    assert [f.technique for f in sample.findings] == ["T1110", "T1059"]
    assert sample.extra["disks"][0] == {"mount": "/", "percent": 63.0}
    assert Sample.model_validate(sample.model_dump()) == sample


def _nested(path: str, value: Any) -> dict[str, Any]:
    answer = good_answer()
    target = answer
    keys = path.split(".")
    for key in keys[:-1]:
        target = target[int(key)] if isinstance(target, list) else target[key]
    if isinstance(target, list):
        target[int(keys[-1])] = value
    else:
        target[keys[-1]] = value
    return answer


@pytest.mark.parametrize(
    ("path", "value", "where"),
    [
        ("cpu_usage", 100.5, "cpu_usage"),
        ("cpu_usage", -1.0, "cpu_usage"),
        ("cpu_usage", True, "cpu_usage"),
        ("cpu_usage", "12", "cpu_usage"),
        ("load_1", -0.1, "load_1"),
        ("memory_usage", 1e300, "memory_usage"),
        ("cpu_temperature", 999.0, "cpu_temperature"),
        ("security_issues", -1, "security_issues"),
        ("security_issues", 1.5, "security_issues"),
        ("threat_level", "apocalyptic", "threat_level"),
        ("agent", "../../etc", "agent"),
        ("timestamp", "now", "timestamp"),
        ("version", "v" * 513, "version"),
        ("temperature.high", "hot", "temperature.high"),
        ("cpu.per_core", [1.0] * 1025, "cpu.per_core"),
        ("cpu.count", 0, "cpu.count"),
        ("disks", [{"mount": "/"}] * 257, "disks"),
        ("disks.0.percent", 101.0, "disks.0.percent"),
        ("security.findings", [good_answer()["security"]["findings"][0]] * (MAX_FINDINGS + 1), "security.findings"),
        ("security.findings.0.severity", "catastrophic", "security.findings.0.severity"),
        ("security.findings.0.technique", "rm -rf", "security.findings.0.technique"),
        ("security.findings.0.evidence", {"pid": [1, 2]}, "security.findings.0.evidence"),
        ("security.findings.0.evidence", {f"k{i}": 1 for i in range(33)}, "security.findings.0.evidence"),
        ("security.findings.0.summary", "s" * 600, "security.findings.0.summary"),
        ("memory", "lots", "memory"),
    ],
)
def test_bad_fields_make_the_whole_answer_invalid(path: str, value: Any, where: str) -> None:
    with pytest.raises(AnswerInvalid) as refused:
        validate_answer(_nested(path, value), "localhost")
    assert f"invalid field {where}" in str(refused.value)
    assert repr(value)[:20] not in str(refused.value) or isinstance(value, bool | int | float)


def test_answer_must_name_the_agent_we_called_and_be_a_struct() -> None:
    with pytest.raises(AnswerInvalid, match="another agent"):
        validate_answer(good_answer("other"), "localhost")
    with pytest.raises(AnswerInvalid, match="struct"):
        validate_answer(["not", "a", "struct"], "localhost")
    with pytest.raises(AnswerInvalid, match="agent"):
        validate_answer({k: v for k, v in good_answer().items() if k != "agent"}, "localhost")


def test_unknown_keys_are_ignored_and_not_stored() -> None:
    sample = to_sample(validate_answer(good_answer(surprise={"x": 1}), "localhost"), 1.0)
    assert "surprise" not in sample.model_dump_json()


def test_host_without_sensors_or_findings() -> None:
    answer = good_answer(cpu_temperature=None, security_issues=0, threat_level="none")
    answer["temperature"] = {"celsius": None, "reason": "no sensor", "sensor": None, "high": None, "critical": None}
    answer["security"] = {"threat_level": "none", "issues": 0, "findings": [], "ssh_failures": 0}
    sample = to_sample(validate_answer(answer, "localhost"), 1.0)
    assert sample.cpu_temperature is None and sample.temperature_reason == "no sensor" and sample.findings == ()


_maybe_percent = st.none() | st.floats(min_value=0, max_value=100)
_maybe_load = st.none() | st.floats(min_value=0, max_value=1e6)
_maybe_celsius = st.none() | st.floats(min_value=-100, max_value=250)


@settings(max_examples=60, deadline=None)
@given(
    cpu=_maybe_percent,
    memory=_maybe_percent,
    disk=_maybe_percent,
    load=_maybe_load,
    celsius=_maybe_celsius,
    high=_maybe_celsius,
    issues=st.integers(min_value=0, max_value=2**31 - 1),
    level=st.sampled_from(["none", "low", "medium", "high"]),
    summary=st.text(max_size=512),
    stamp=st.floats(min_value=0, max_value=4e9),
)
def test_every_valid_answer_gives_a_sample_storage_accepts(
    cpu: float | None,
    memory: float | None,
    disk: float | None,
    load: float | None,
    celsius: float | None,
    high: float | None,
    issues: int,
    level: str,
    summary: str,
    stamp: float,
) -> None:
    answer = good_answer(
        cpu_usage=cpu,
        memory_usage=memory,
        disk_usage=disk,
        load_1=load,
        cpu_temperature=celsius,
        security_issues=issues,
        threat_level=level,
    )
    answer["temperature"]["high"] = high
    answer["security"]["findings"][0]["summary"] = summary
    sample = to_sample(validate_answer(answer, "localhost"), stamp)
    # the answer model must be as strict as Sample: to_sample refuses what Sample refuses
    assert Sample.model_validate(sample.model_dump()) == sample


def test_a_long_temperature_reason_is_cut_to_what_storage_keeps() -> None:
    answer = good_answer()
    answer["temperature"]["reason"] = "r" * 512  # the wire allows 512, a stored sample 256
    sample = to_sample(validate_answer(answer, "localhost"), 1.0)
    assert sample.temperature_reason == "r" * 256
    assert Sample.model_validate(sample.model_dump()) == sample


@pytest.mark.parametrize(
    ("path", "value"),
    [
        ("security.findings.0.kind", "ssh_bruteforce\n2024-01-01 WARNING forged"),
        ("security.findings.0.kind", "SSH-Bruteforce"),
        ("security.findings.0.kind", "x" * 65),
        ("security.findings.0.kind", ""),
        ("version", "0.1.0\x1b[2J"),
        ("version", "0.1.0 \u202e"),
    ],
)
def test_identifiers_are_held_to_strict_patterns(path: str, value: str) -> None:
    with pytest.raises(AnswerInvalid) as refused:
        validate_answer(_nested(path, value), "localhost")
    assert str(refused.value).isprintable()


@pytest.mark.parametrize(
    ("path", "key"),
    [("security.findings.0.evidence", "pid\ndb-01 up"), ("unavailable", "cpu\r\x85\u2028x"), ("unavailable", "A")],
)
def test_agent_chosen_keys_are_held_to_patterns_and_escaped_in_the_error(path: str, key: str) -> None:
    with pytest.raises(AnswerInvalid) as refused:
        validate_answer(_nested(path, {key: "v"}), "localhost")
    message = str(refused.value)
    assert message.isprintable() and len(message.splitlines()) == 1
