"""The exporter's own text encoding of the fleet equals ``prometheus_client``'s, for anything a view can hold.

:func:`secure_collector.exporter.encode_fleet` exists for speed (docs/fast-paths.md); the reference is the
library's ``generate_latest`` over the same series as metric families (:class:`FleetFamilies`). Agent names
are drawn from everything the collector's config accepts, values from every finite float and int a sample
field accepts (the model forbids inf and NaN), states and levels from their full sets.
"""

from __future__ import annotations

import typing
from collections.abc import Callable

from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.openmetrics.exposition import generate_latest as openmetrics_latest
from prometheus_client.parser import text_string_to_metric_families

from secure_collector.exporter import GAUGE_FIELDS, STATES, FleetEncoder, FleetFamilies, FleetView, Seen, encode_fleet
from storage.models import AGENT_NAME_PATTERN, Sample, ThreatLevel

names = st.from_regex(AGENT_NAME_PATTERN, fullmatch=True)
values = st.one_of(
    st.floats(allow_nan=False, allow_infinity=False, min_value=0, max_value=1e300),
    st.floats(allow_nan=False, allow_infinity=False, min_value=-100, max_value=100),
    st.integers(min_value=0, max_value=2**53),
    st.sampled_from([0.0, -0.0, 1e-300, 5e-324, 1234567.0, 12345678.9, 1e16, 99.99999999, 0.1]),
)


@st.composite
def samples(draw: st.DrawFn, agent: str) -> Sample:
    data: dict[str, object] = {"agent": agent, "timestamp": draw(st.floats(min_value=0, max_value=4e9))}
    for name in GAUGE_FIELDS:
        if draw(st.booleans()):
            data[name] = draw(values)
    data["threat_level"] = draw(st.sampled_from(typing.get_args(ThreatLevel)))
    # the model's bounds decide what a sample can hold: out-of-range draws are bent into it, not skipped
    fields = Sample.model_fields
    for name in GAUGE_FIELDS:
        if name in data:
            value = data[name]
            assert isinstance(value, (int, float))
            for meta in fields[name].metadata:
                low, high = getattr(meta, "ge", None), getattr(meta, "le", None)
                if low is not None and value < low:
                    value = low
                if high is not None and value > high:
                    value = high
            if fields[name].annotation in (int, int | None):
                value = int(value)
            data[name] = value
    return Sample.model_validate(data)


@st.composite
def fleets(draw: st.DrawFn) -> list[tuple[str, Seen]]:
    agents = draw(st.lists(names, max_size=6, unique=True))
    fleet = []
    for agent in agents:
        sample = draw(st.none() | samples(agent))
        seen = Seen(
            draw(st.floats(min_value=0, max_value=4e9)),
            draw(st.sampled_from(STATES)),
            sample,
            draw(st.integers(min_value=0, max_value=10_000)),
        )
        fleet.append((agent, seen))
    return fleet


def _reference(fleet: list[tuple[str, Seen]], encoder: Callable[[CollectorRegistry], bytes] = generate_latest) -> str:
    view = FleetView()
    view._seen = dict(fleet)  # the state observe() builds, set directly to cover every combination
    registry = CollectorRegistry(auto_describe=False)
    registry.register(FleetFamilies(view))
    return encoder(registry).decode()


@settings(max_examples=400, deadline=None)
@given(fleets())
def test_the_fast_encoding_equals_the_librarys(fleet: list[tuple[str, Seen]]) -> None:
    assert encode_fleet(fleet) == _reference(fleet)


@settings(max_examples=200, deadline=None)
@given(fleets())
def test_the_fast_encoding_is_also_the_librarys_openmetrics_before_its_end(fleet: list[tuple[str, Seen]]) -> None:
    # a scrape asking for OpenMetrics gets these lines, then the library's own OpenMetrics (ending in "# EOF")
    assert encode_fleet(fleet) + "# EOF\n" == _reference(fleet, openmetrics_latest)


@settings(max_examples=100, deadline=None)
@given(fleets())
def test_what_the_fast_encoding_writes_parses_back_to_the_same_values(fleet: list[tuple[str, Seen]]) -> None:
    parsed = {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(encode_fleet(fleet))
        for sample in family.samples
    }
    for agent, seen in fleet:
        assert parsed[("secure_monitor_last_poll_timestamp_seconds", (("agent", agent),))] == seen.polled
        if seen.sample is not None:
            for name in GAUGE_FIELDS:
                value = getattr(seen.sample, name)
                if value is not None:
                    assert parsed[(f"secure_monitor_{name}", (("agent", agent),))] == float(value)


@settings(max_examples=150, deadline=None)
@given(st.lists(fleets(), min_size=1, max_size=4), st.data())
def test_the_cached_encoding_equals_a_fresh_one_as_the_fleet_changes(
    steps: list[list[tuple[str, Seen]]], data: st.DataObject
) -> None:
    encoder = FleetEncoder()
    previous: dict[str, Seen] = {}
    for step in steps:
        # some agents keep the very outcome they had (the cache's case), the others change or come and go
        fleet = dict(step)
        for agent, seen in previous.items():
            if data.draw(st.booleans()):
                fleet[agent] = seen
        current = list(fleet.items())
        assert encoder.encode(current) == _reference(current)
        previous = fleet
