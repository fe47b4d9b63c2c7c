"""The agent's connection threads: reused while they wait, bounded, and ended on close."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from secure_agent.slots import MAX_IDLE_WORKERS, Workers

TIMEOUT = 5.0


class Recorder:
    """The ``run`` of a pool under test: records which thread ran each job; ``hold`` keeps jobs running."""

    def __init__(self) -> None:
        self.threads: list[int] = []
        self.done = threading.Semaphore(0)
        self.hold = threading.Event()
        self.hold.set()
        self._lock = threading.Lock()

    def __call__(self, request: socket.socket, client_address: Any) -> None:
        assert self.hold.wait(TIMEOUT)
        with self._lock:
            self.threads.append(threading.get_ident())
        self.done.release()

    def wait_done(self, count: int) -> None:
        for _ in range(count):
            assert self.done.acquire(timeout=TIMEOUT)


def _wait_waiting(workers: Workers[socket.socket], count: int) -> None:
    """Until ``count`` workers wait on the queue (bounded; a worker registers right after its job)."""
    finished = threading.Event()
    for _ in range(500):
        if workers.waiting == count:
            return
        finished.wait(0.01)
    assert workers.waiting == count


@pytest.fixture
def pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    a, b = socket.socketpair()
    yield a, b
    a.close()
    b.close()


def test_a_finished_worker_takes_the_next_connection(pair: tuple[socket.socket, socket.socket]) -> None:
    run = Recorder()
    workers = Workers(run)
    before = threading.active_count()
    for _ in range(5):  # one after another: one thread serves them all
        workers.submit(pair[0], ("127.0.0.1", 1))
        run.wait_done(1)
        _wait_waiting(workers, 1)
    assert len(set(run.threads)) == 1
    assert threading.active_count() == before + 1
    workers.close()
    _wait_gone(before)


def _wait_gone(count: int) -> None:
    finished = threading.Event()
    for _ in range(500):
        if threading.active_count() <= count:
            return
        finished.wait(0.01)
    assert threading.active_count() <= count


def test_at_most_a_few_workers_stay_after_a_burst(pair: tuple[socket.socket, socket.socket]) -> None:
    run = Recorder()
    run.hold.clear()  # all run at once: each needs a thread of its own
    workers = Workers(run)
    before = threading.active_count()
    burst = MAX_IDLE_WORKERS + 6
    for _ in range(burst):
        workers.submit(pair[0], ("127.0.0.1", 1))
    assert threading.active_count() == before + burst
    run.hold.set()
    run.wait_done(burst)
    _wait_gone(before + MAX_IDLE_WORKERS)
    _wait_waiting(workers, MAX_IDLE_WORKERS)
    workers.close()
    _wait_gone(before)
    with pytest.raises(RuntimeError):
        workers.submit(pair[0], ("127.0.0.1", 1))
