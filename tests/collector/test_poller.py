"""Scheduling: shards, timestamps, backoff and recovery, and a dead agent that delays no one."""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections.abc import Iterator

import pytest

from pki import tokens
from secure_collector.alerts import AlertEngine
from secure_collector.config import AgentEntry, Thresholds
from secure_collector.engine import UNEXPECTED_DETAIL, Stamper
from secure_collector.poller import Poller, parse_shard, select_shard, shard_of
from secure_collector.sink import Delivery, Recorder
from secure_collector.spool import Spool
from secure_collector.transport import AgentConnection
from storage.memory import MemoryStore
from tests.collector.answers import good_answer
from tests.collector.fakeagent import FakeAgent, Responder, answering, http, xmlrpc_answer
from tests.plugins.agent import client_context
from tests.plugins.pki import TestPKI


def _agents(count: int) -> list[AgentEntry]:
    return [AgentEntry(name=f"host-{i:04d}", host="127.0.0.1", port=8000) for i in range(count)]


def test_shards_partition_the_fleet_deterministically_and_evenly() -> None:
    agents = _agents(600)
    shards = [select_shard(agents, index, 3) for index in (1, 2, 3)]
    names = [a.name for shard in shards for a in shard]
    assert sorted(names) == sorted(a.name for a in agents)  # each agent exactly once
    assert all(150 <= len(shard) <= 250 for shard in shards)
    assert select_shard(agents, 2, 3) == shards[1]  # another collector computes the same split


def test_growing_the_fleet_of_collectors_moves_few_agents() -> None:
    names = [a.name for a in _agents(1000)]
    before = {name: shard_of(name, 4) for name in names}
    after = {name: shard_of(name, 5) for name in names}
    moved = [name for name in names if before[name] != after[name]]
    assert all(after[name] == 5 for name in moved)  # only to the new collector
    assert 100 <= len(moved) <= 300  # about a fifth


@pytest.mark.parametrize("text", ["0/3", "4/3", "1", "a/b", "1/0", "-1/2", "1/5000"])
def test_bad_shard(text: str) -> None:
    with pytest.raises(ValueError, match="--shard"):
        parse_shard(text)


def test_stamps_are_milliseconds_and_never_repeat_for_an_agent() -> None:
    ticks: Iterator[float] = iter([100.0004, 100.0001, 99.6, 100.5, 100.5])
    stamp = Stamper(clock=lambda: next(ticks), monotonic=lambda: 0.0)
    assert [stamp("a") for _ in range(4)] == [100.0, 100.001, 100.002, 100.5]  # sub-second collisions nudged
    assert stamp("b") == 100.5  # another agent has its own sequence


def test_a_clock_step_either_way_is_logged_and_stamps_follow_the_clock_at_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Issue 15: after a 1 h step back every sample was stamped ~3,599 s ahead until real time caught up."""
    wall, mono = [1_800_000_000.0], [0.0]
    stamp = Stamper(clock=lambda: wall[0], monotonic=lambda: mono[0])

    def poll(seconds: float = 30.0) -> float:
        wall[0] += seconds
        mono[0] += seconds
        return stamp("a")

    first = poll()
    with caplog.at_level(logging.WARNING, logger="secure_collector.engine"):
        wall[0] -= 3600  # stepped back an hour
        back = [poll() for _ in range(3)]
        assert back == [first - 3600 + 30 * n for n in (1, 2, 3)]  # the clock's time, not the last stamp's
        wall[0] += 7200  # and forward two hours
        ahead = poll()
        assert ahead == back[-1] + 7200 + 30
    messages = [r.getMessage() for r in caplog.records]
    assert [m.split(" by ")[0] for m in messages] == [
        "the wall clock was stepped back",
        "the wall clock was stepped forward",
    ]
    assert "3600.000 s" in messages[0] and "7200.000 s" in messages[1]
    assert stamp.steps == 2
    # a step back of less than a second is a collision, not a step: nudged, and not logged
    wall[0] -= 0.5
    assert stamp("a") == round(ahead + 0.001, 3)


def _poller(
    pki: TestPKI, peers: dict[str, FakeAgent], interval: float, workers: int, timeout: float = 2.0
) -> tuple[Poller, MemoryStore]:
    key = tokens.load_key(pki.collector_files()[2])
    context = client_context(pki)
    connections = [
        AgentConnection(name, "127.0.0.1", peer.port, context, "collector", key, timeout=timeout)
        for name, peer in peers.items()
    ]
    store = MemoryStore()
    spool = Spool(pki.root.parent / f"spool-{next(_spools)}", 8 * 1024 * 1024)
    recorder = Recorder(Delivery(store, spool), AlertEngine(Thresholds()))
    return Poller(connections, recorder, poll_interval=interval, max_workers=workers), store


_spools = itertools.count()


def _run(poller: Poller, sweeps: int) -> None:
    runner = threading.Thread(target=poller.run, kwargs={"max_sweeps": sweeps})
    runner.start()
    runner.join(timeout=60)
    assert not runner.is_alive()
    poller.close()


def test_failing_agent_backs_off_and_recovers_on_first_good_poll(test_pki: TestPKI) -> None:
    calls = itertools.count()

    def flaky(body: bytes) -> bytes:
        if next(calls) < 3:
            return http(b"<garbage", status="200 OK")
        return xmlrpc_answer(good_answer("flaky"))

    peer = FakeAgent(test_pki, flaky)
    try:
        poller, store = _poller(test_pki, {"flaky": peer}, interval=0.05, workers=2)
        _run(poller, 40)
    finally:
        peer.stop()
    states = [s.state for s in sorted(store.statuses, key=lambda s: s.timestamp)]
    assert states[:3] == ["bad_response"] * 3
    assert set(states[3:]) == {"up"}
    # backoff: 3 failures cost 1 + 2 + 4 intervals (plus ticks), so fewer attempts than sweeps
    assert len(states) < 40
    samples = sorted(s.timestamp for s in store.samples)
    assert len(samples) == len(states) - 3
    gaps = [b - a for a, b in itertools.pairwise(samples)]
    assert max(gaps) < 0.05 * 3  # once up, polled every tick again
    assert poller.states == {"flaky": "up"}


def test_a_silent_agent_does_not_delay_the_others(test_pki: TestPKI) -> None:
    silent = FakeAgent(test_pki, lambda body: None)
    good = [FakeAgent(test_pki, answering(good_answer(f"good{n}"))) for n in range(3)]
    try:
        peers = {"silent": silent} | {f"good{n}": peer for n, peer in enumerate(good)}
        poller, store = _poller(test_pki, peers, interval=0.1, workers=2, timeout=1.0)
        _run(poller, 8)
    finally:
        for peer in [silent, *good]:
            peer.stop()
    for n in range(3):
        stamps = sorted(s.timestamp for s in store.samples if s.agent == f"good{n}")
        assert len(stamps) == 8
        assert max(b - a for a, b in itertools.pairwise(stamps)) < 0.1 * 2.5
    silent_states = [s.state for s in store.statuses if s.agent == "silent"]
    assert silent_states and set(silent_states) == {"timeout"}


def _slow(name: str, delay: float) -> Responder:
    """A valid answer, just before the collector's deadline: what a slow but healthy-looking agent does."""

    def answer(body: bytes) -> bytes:
        time.sleep(delay)  # the peer's behaviour under test, not synchronisation
        return xmlrpc_answer(good_answer(name))

    return answer


def test_slow_but_valid_agents_share_a_quarter_of_the_workers(test_pki: TestPKI) -> None:
    """Why #5: with max_workers 2, two agents answering validly near the timeout starved a healthy one."""
    interval, timeout = 0.2, 1.0
    slow = [FakeAgent(test_pki, _slow(f"slow{n}", 0.6 * timeout)) for n in range(2)]
    good = FakeAgent(test_pki, lambda body: xmlrpc_answer(good_answer("good")))
    try:
        peers = {"slow0": slow[0], "slow1": slow[1], "good": good}
        poller, store = _poller(test_pki, peers, interval=interval, workers=2, timeout=timeout)
        assert poller.restricted_limit == 1
        _run(poller, 15)
    finally:
        for peer in [*slow, good]:
            peer.stop()
    stamps = sorted(s.timestamp for s in store.samples if s.agent == "good")
    # the first sweep judges the slow agents (both start before anyone knows); from then on the healthy
    # agent is polled at every tick
    settled = [t for t in stamps if t >= stamps[0] + timeout]
    assert len(settled) >= 5
    assert max(b - a for a, b in itertools.pairwise(settled)) < interval * 2
    assert {s.state for s in store.statuses if s.agent.startswith("slow")} == {"up"}  # slow is not failing
    assert poller._slots["slow0"].slow and not poller._slots["good"].slow


class _BuggyConnection(AgentConnection):
    """A connection whose answer reading has a bug that some answer reaches (what the defence is for)."""

    def finish(self, body: bytes) -> object:
        raise ValueError("invalid literal for int() with base 10: '\u00b2'")


def test_an_unexpected_error_in_one_call_is_that_agents_bad_response_logged_once(
    test_pki: TestPKI, caplog: pytest.LogCaptureFixture
) -> None:
    key = tokens.load_key(test_pki.collector_files()[2])
    good = FakeAgent(test_pki, lambda body: xmlrpc_answer(good_answer("good")))
    broken = FakeAgent(test_pki, lambda body: xmlrpc_answer(good_answer("broken")))
    try:
        connections = [
            _BuggyConnection("broken", "127.0.0.1", broken.port, client_context(test_pki), "collector", key),
            AgentConnection("good", "127.0.0.1", good.port, client_context(test_pki), "collector", key),
        ]
        store = MemoryStore()
        spool = Spool(test_pki.root.parent / f"spool-{next(_spools)}", 8 * 1024 * 1024)
        poller = Poller(
            connections, Recorder(Delivery(store, spool), AlertEngine(Thresholds())), poll_interval=1, max_workers=2
        )
        with caplog.at_level(logging.INFO, logger="secure_collector"):
            sweeps = [poller.poll_once() for _ in range(3)]
        poller.close()
    finally:
        good.stop()
        broken.stop()
    for results in sweeps:
        assert [(r.agent, r.state, r.detail) for r in results] == [
            ("broken", "bad_response", UNEXPECTED_DETAIL),
            ("good", "up", ""),
        ]
    assert poller._engine.unexpected == 3
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert [r.getMessage() for r in errors] == [
        "broken: unexpected ValueError while polling it; counted as bad_response (logged once per agent)"
    ]
    assert all(r.exc_info is None for r in errors)  # no traceback at ERROR; DEBUG has it
    assert len(store.samples) == 3
