"""The get_metrics answer written by secure_agent.xmlwire: the very bytes xmlrpc.client.dumps writes."""

from __future__ import annotations

import shutil
import xmlrpc.client
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from secure_agent import xmlwire
from secure_agent.config import AgentConfig
from secure_agent.metrics import MetricsService

NOW = datetime(2026, 3, 10, 3, 22).timestamp()
NEW = "203.0.113.99"  # an address the fixture log does not hold

scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=xmlrpc.client.MININT, max_value=xmlrpc.client.MAXINT)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(alphabet=st.characters(blacklist_categories=["Cs"]), max_size=20)
)


def struct_of(answer: bytes) -> dict[str, Any]:
    """The one struct an XML-RPC answer carries (the stubs type a loaded value as any marshallable)."""
    (value,), method = xmlrpc.client.loads(answer)
    assert method is None and isinstance(value, dict)
    return value


values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=20,
)


def stdlib(value: Any) -> bytes:
    return xmlrpc.client.dumps((value,), methodresponse=True, allow_none=True, encoding="utf-8").encode("utf-8")


@settings(max_examples=150, deadline=None)
@given(values)
def test_same_bytes_as_the_stdlib(value: Any) -> None:
    assert xmlwire.method_response(value) == stdlib(value)


@settings(max_examples=50, deadline=None)
@given(st.dictionaries(st.text(max_size=8), values, max_size=4), values)
def test_a_fragment_splices_in_as_its_value(struct: dict[str, Any], part: Any) -> None:
    spliced = {**struct, "part": xmlwire.fragment(part)}
    assert xmlwire.method_response(spliced) == stdlib({**struct, "part": part})


def test_markup_in_strings_is_escaped() -> None:
    value = {"a<b>&": "</string><int>1</int>&amp;", "tuple": (1, "x")}
    assert xmlwire.method_response(value) == stdlib(value)
    assert xmlrpc.client.loads(xmlwire.method_response(value))[0][0] == {**value, "tuple": [1, "x"]}


@pytest.mark.parametrize("value", [2**31, -(2**31) - 1])
def test_ints_beyond_32_bits_are_refused_as_the_stdlib_does(value: int) -> None:
    with pytest.raises(OverflowError):
        stdlib(value)
    with pytest.raises(OverflowError):
        xmlwire.method_response(value)


@pytest.mark.parametrize("value", [{1: "x"}, b"bytes", {1, 2}, object()])
def test_what_the_metrics_never_hold_is_refused(value: Any) -> None:
    with pytest.raises(TypeError):
        xmlwire.method_response(value)


@pytest.fixture
def fixture_service(
    copy_tree: Callable[[str], Path], fixtures: Path, tmp_path: Path, make_config: Callable[..., AgentConfig]
) -> MetricsService:
    """Findings of every kind, a temperature and disks, at a frozen clock: two answers are alike."""
    root = copy_tree("proc/host")
    for name in ("stat", "loadavg", "meminfo", "filesystems", "mounts"):
        shutil.copy(fixtures / "proc" / "basic" / name, root / name)
    log = tmp_path / "auth.log"
    shutil.copy(fixtures / "auth" / "auth.log", log)
    config = make_config(auth_log_paths=[str(log)])
    service = MetricsService(config, proc_root=root, sys_root=fixtures / "sys" / "coretemp", clock=lambda: NOW)
    service.refresh()
    return service


def test_snapshot_response_is_the_snapshot_marshalled(fixture_service: MetricsService) -> None:
    expected = fixture_service.snapshot()
    answer = fixture_service.snapshot_response()
    assert answer == stdlib(expected)  # byte for byte what the stdlib writes for snapshot()
    loaded = struct_of(answer)
    assert loaded == expected
    assert len(loaded["security"]["findings"]) >= 5 and loaded["disks"] and loaded["temperature"]["celsius"] == 64.0


def test_snapshot_response_follows_each_scan(fixture_service: MetricsService, tmp_path: Path) -> None:
    before = struct_of(fixture_service.snapshot_response())
    with (tmp_path / "auth.log").open("a") as log:  # more failures from a new address: a new finding
        for second in range(10):
            log.write(f"Mar 10 03:21:{second:02d} host sshd[9]: Failed password for root from {NEW} port 22 ssh2\n")
    fixture_service.refresh()
    after = struct_of(fixture_service.snapshot_response())
    assert after == fixture_service.snapshot()
    assert after["security"]["issues"] == before["security"]["issues"] + 1


def test_snapshot_response_on_this_machine(make_config: Callable[..., AgentConfig]) -> None:
    service = MetricsService(make_config())
    service.refresh()
    loaded = struct_of(service.snapshot_response())
    expected = service.snapshot()
    assert set(loaded) == set(expected)
    for key in ("temperature", "disks", "unavailable", "agent", "version"):
        assert loaded[key] == expected[key], key
    assert loaded["security"]["findings"] == expected["security"]["findings"]


everything = st.recursive(
    scalars | st.floats(),  # NaN and infinities too: the stdlib writes them as it writes any float
    lambda inner: st.lists(inner, max_size=4)
    | st.lists(inner, max_size=3).map(tuple)
    | st.dictionaries(st.text(alphabet=st.characters(blacklist_categories=["Cs"]), max_size=8), inner, max_size=4),
    max_leaves=30,
)


@settings(max_examples=300, deadline=None)
@given(everything)
def test_same_bytes_as_the_stdlib_over_everything_both_marshal(value: Any) -> None:
    """Every value of the types the answer may hold (the stdlib marshals more: bytes, dates, Binary;
    xmlwire refuses those with TypeError, test_what_the_metrics_never_hold_is_refused)."""
    assert xmlwire.method_response(value) == stdlib(value)
