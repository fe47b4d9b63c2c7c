"""One thread drives every call in flight: a selector over the agents' non-blocking connections.

:class:`Engine` starts calls (:meth:`Engine.start`), and each :meth:`Engine.poll` waits for socket events,
advances the calls they concern, expires calls past their deadline and returns the finished ones as
:class:`~secure_collector.sink.PollResult` records (validated, stamped with the collector's clock).
A thread per agent would spend more CPU handing the interpreter lock around than polling; here a poll
costs its own work only (docs/benchmarks.md).

Host names (not IP literals) are resolved on a small thread pool, so a slow DNS server delays only the
agents it serves; :meth:`Engine.wake` (safe from other threads and signal handlers) interrupts a wait.

The last line of defence: whatever one agent's call raises that is not a
:class:`~secure_collector.errors.PollError` (a bug of ours that some answer reached) ends that call as
``bad_response`` with a generic detail, logged once per agent and run; the other calls go on. It is the
one place where ``except Exception`` decides anything, and it decides only that the agent failed.

A :class:`FollowUp` (the audit trail, :mod:`.audittrail`) may make more calls on the same connection once
``get_metrics`` has answered, each under its own deadline; the poll's result waits for them and carries what
they brought. A failing follow-up call never turns a good poll into a failed one.
"""

from __future__ import annotations

import contextlib
import functools
import heapq
import itertools
import logging
import queue
import selectors
import socket
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, NamedTuple, Protocol

from pki.validity import days_left
from secure_collector.errors import AgentBadResponse, AgentTimeout, AgentUnreachable, PollError
from secure_collector.sink import PollResult
from secure_collector.transport import Address, AgentConnection, is_ip_literal, os_detail, resolve
from secure_collector.validate import AnswerInvalid, to_sample, validate_answer
from storage.models import Sample

logger = logging.getLogger(__name__)

METHOD = "get_metrics"
RESOLVER_THREADS = 2
UNEXPECTED_DETAIL = "answer could not be read (internal error)"


class Stamper:
    """Collector-clock timestamps, rounded to the millisecond, following the wall clock.

    (agent, timestamp) identifies a sample in storage, so two polls of one agent must not share one: a
    stamp at or below the agent's last one by less than :data:`STEP` (two polls within a millisecond, a
    clock slewed back a little) is nudged just past it. A larger difference is the wall clock being stepped
    (by hand, or by NTP at boot): the step is logged, in either direction (the wall clock compared with the
    monotonic one), and stamps follow the clock at once, so a clock set back an hour does not stamp every
    sample an hour in the future until real time catches up (SECURITY.md).
    """

    STEP = 1.0  # seconds: a jump of the wall clock against the monotonic one at least this big is a step

    def __init__(
        self, clock: Callable[[], float] = time.time, monotonic: Callable[[], float] = time.monotonic
    ) -> None:
        self._clock = clock
        self._monotonic = monotonic
        self._last: dict[str, float] = {}
        self._anchor: tuple[float, float] | None = None  # (wall, monotonic) at the last stamp
        self.steps = 0

    def __call__(self, agent: str) -> float:
        wall, mono = self._clock(), self._monotonic()
        if self._anchor is not None:
            step = wall - (self._anchor[0] + (mono - self._anchor[1]))
            if abs(step) >= self.STEP:
                self.steps += 1
                logger.warning(
                    "the wall clock was stepped %s by %.3f s; samples are stamped by it from now on",
                    "back" if step < 0 else "forward",
                    abs(step),
                )
        self._anchor = (wall, mono)
        now = round(wall, 3)
        last = self._last.get(agent)
        if last is not None and now <= last < now + self.STEP:
            now = round(last + 0.001, 3)
        self._last[agent] = now
        return now


class FollowUp(Protocol):
    """More calls after a good ``get_metrics``: ``(method, params)`` to make next, or None when done."""

    def first_call(self, agent: str, sample: Sample | None = None) -> tuple[str, tuple[Any, ...]] | None: ...

    def answer(self, agent: str, value: object) -> tuple[str, tuple[Any, ...]] | None: ...

    def failed(self, agent: str, error: PollError) -> None: ...

    def finish(self, agent: str) -> Any:
        """What the follow-ups brought: a mapping of PollResult fields, or the audit trail's outcome."""


class _Call(NamedTuple):
    connection: AgentConnection
    started: float
    deadline: float
    pending: PollResult | None = None  # the poll's result, once get_metrics answered and follow-ups run


class Engine:
    """Runs calls to many agents concurrently on the calling thread. Not thread-safe but for :meth:`wake`."""

    def __init__(self, stamp: Stamper | None = None, follow_up: FollowUp | None = None) -> None:
        self.stamp = stamp or Stamper()
        self._follow_up = follow_up
        self._selector = selectors.DefaultSelector()
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._selector.register(self._wake_r, selectors.EVENT_READ, None)
        self._calls: dict[str, _Call] = {}
        self._deadlines: list[tuple[float, int, str]] = []
        self._sequence = itertools.count()
        self._resolver: ThreadPoolExecutor | None = None
        self._resolved: queue.SimpleQueue[tuple[str, list[Address] | OSError]] = queue.SimpleQueue()
        self._finished: list[PollResult] = []
        self._reported: set[str] = set()
        self.unexpected = 0
        """Calls ended by the last line of defence (:meth:`_unexpected`)."""

    def __len__(self) -> int:
        """Calls in flight."""
        return len(self._calls)

    def busy(self, name: str) -> bool:
        return name in self._calls

    def wake(self) -> None:
        """Make a :meth:`poll` in progress return early (any thread, or a signal handler)."""
        with contextlib.suppress(OSError):  # already woken (buffer full) or closing: either way it wakes
            self._wake_w.send(b"\x00")

    # -- starting calls --------------------------------------------------------------------------
    def start(self, connection: AgentConnection) -> None:
        """Begin a ``get_metrics`` call to ``connection``'s agent (at most one per agent at a time)."""
        now = time.monotonic()
        name = connection.name
        if name in self._calls:
            raise ValueError(f"{name}: a call is already in flight")
        self._calls[name] = _Call(connection, now, now + connection.timeout)
        heapq.heappush(self._deadlines, (now + connection.timeout, next(self._sequence), name))
        if not connection.connected and not is_ip_literal(connection.host):
            resolver = self._resolver or ThreadPoolExecutor(RESOLVER_THREADS, thread_name_prefix="resolve")
            self._resolver = resolver
            future = resolver.submit(resolve, connection.host, connection.port)
            future.add_done_callback(functools.partial(self._on_resolved, name))
            connection.deadline = now + connection.timeout
            return
        self._begin(connection, None, now)

    def _on_resolved(self, name: str, future: Future[list[Address]]) -> None:
        error = future.exception()
        if isinstance(error, OSError):
            self._resolved.put((name, error))
        elif error is None:
            self._resolved.put((name, future.result()))
        else:
            self._resolved.put((name, OSError(0, "resolver failed")))
        self.wake()

    def _begin(self, connection: AgentConnection, addresses: list[Address] | None, now: float) -> None:
        try:
            connection.begin(METHOD, addresses, now)
            self._watch(connection)
        except PollError as exc:
            self._fail(connection.name, exc)
        except Exception as exc:  # the last line of defence (module docstring)
            self._fail(connection.name, self._unexpected(connection.name, exc))

    def _watch(self, connection: AgentConnection) -> None:
        fd = connection.fileno()
        if fd >= 0 and connection.busy:
            self._selector.register(fd, connection.interest, connection.name)

    # -- progress ---------------------------------------------------------------------------------
    def poll(self, timeout: float | None) -> list[PollResult]:
        """Wait up to ``timeout`` seconds for progress; return the calls that finished (maybe none)."""
        if not self._finished:
            wait = timeout
            if self._deadlines:
                until = max(0.0, self._deadlines[0][0] - time.monotonic())
                wait = until if wait is None else min(wait, until)
            for key, _ in self._selector.select(wait):
                name = key.data
                if name is None:
                    self._drain_wake()
                    continue
                call = self._calls.get(name)
                self._selector.unregister(key.fileobj)
                if call is not None:
                    self._advance(call.connection)
            self._take_resolved()
            self._expire(time.monotonic())
        finished, self._finished = self._finished, []
        return finished

    def _advance(self, connection: AgentConnection) -> None:
        name = connection.name
        call = self._calls[name]
        try:
            body = connection.step()
            if body is None:
                self._watch(connection)
                return
            value = connection.finish(body)
            if call.pending is None:
                timestamp = self.stamp(name)
                try:
                    after = connection.not_after
                    measured = {
                        "cert_days_left": None if after is None else days_left(after, timestamp),
                        "cert_lifetime_days": None if connection.lifetime_days is None
                        else round(connection.lifetime_days, 2),
                    }
                    sample = to_sample(validate_answer(value, name), timestamp, measured)
                except AnswerInvalid as exc:
                    raise AgentBadResponse(name, str(exc)) from None
                latency = (time.monotonic() - call.started) * 1000
                result = PollResult(name, timestamp, "up", "", latency, sample)
                follow = self._follow_up.first_call(name, sample) if self._follow_up is not None else None
            else:
                result = call.pending
                follow = self._follow_up.answer(name, value) if self._follow_up is not None else None
        except PollError as exc:
            self._fail(name, exc)
            return
        except Exception as exc:  # the last line of defence (module docstring)
            self._fail(name, self._unexpected(name, exc))
            return
        if follow is not None:
            self._follow(connection, call, result, follow)
        else:
            self._done(name, result)

    def _follow(
        self, connection: AgentConnection, call: _Call, result: PollResult, follow: tuple[str, tuple[Any, ...]]
    ) -> None:
        """Make the next follow-up call on the connection, under a deadline of its own.

        An agent that answered with ``Connection: close`` (its ``server.max_requests_per_connection``
        reached, or set to 1) is connected to again, at the addresses of the connection it closed: a
        follow-up skipped there would leave its audit trail uncollected, sweep after sweep, in silence.
        """
        name = connection.name
        now = time.monotonic()
        self._calls[name] = _Call(connection, call.started, now + connection.timeout, result)
        heapq.heappush(self._deadlines, (now + connection.timeout, next(self._sequence), name))
        method, params = follow
        try:
            connection.begin(method, None if connection.connected else connection.addresses, now, params=params)
        except PollError as exc:
            self._fail(name, exc)
            return
        except Exception as exc:  # the last line of defence (module docstring)
            self._fail(name, self._unexpected(name, exc))
            return
        self._watch(connection)

    def _done(self, name: str, result: PollResult) -> None:
        self._calls.pop(name, None)
        if self._follow_up is not None:
            brought = self._follow_up.finish(name)
            result = result._replace(**brought) if isinstance(brought, dict) else result._replace(audit=brought)
        self._finished.append(result)

    def _unexpected(self, name: str, exc: Exception) -> PollError:
        """The failure an unexpected exception in ``name``'s call stands for; logged once per agent."""
        self.unexpected += 1
        if name not in self._reported:
            self._reported.add(name)
            logger.error(
                "%s: unexpected %s while polling it; counted as bad_response (logged once per agent)",
                name,
                type(exc).__name__,
            )
            logger.debug("%s: the unexpected error", name, exc_info=exc)
        return AgentBadResponse(name, UNEXPECTED_DETAIL)

    def _fail(self, name: str, exc: PollError) -> None:
        call = self._calls.get(name)
        if call is None:
            return
        fd = call.connection.fileno()
        if fd >= 0 and fd in self._selector.get_map():
            self._selector.unregister(fd)
        call.connection.close()
        if call.pending is not None and self._follow_up is not None:  # a follow-up failed: the poll was good
            self._follow_up.failed(name, exc)
            self._done(name, call.pending)
            return
        self._calls.pop(name, None)
        latency = (time.monotonic() - call.started) * 1000
        retry_after = getattr(exc, "retry_after", None)
        self._finished.append(PollResult(name, self.stamp(name), exc.state, exc.detail, latency, None, retry_after))

    def _expire(self, now: float) -> None:
        while self._deadlines and self._deadlines[0][0] <= now:
            deadline, _, name = heapq.heappop(self._deadlines)
            call = self._calls.get(name)
            if call is None or call.deadline != deadline:
                continue  # that call is over; a newer one has its own entry
            try:
                call.connection.expire(now)
                raise AgentTimeout(name, f"no answer within {call.connection.timeout:g} s")
            except PollError as exc:
                self._fail(name, exc)
            except Exception as exc:  # the last line of defence (module docstring)
                self._fail(name, self._unexpected(name, exc))

    def _take_resolved(self) -> None:
        while True:
            try:
                name, outcome = self._resolved.get_nowait()
            except queue.Empty:
                return
            call = self._calls.get(name)
            if call is None or call.connection.busy or call.connection.connected:
                continue  # expired meanwhile
            if isinstance(outcome, OSError):
                self._fail(name, AgentUnreachable(name, os_detail(outcome, "resolve")))
            else:
                self._begin(call.connection, outcome, call.started)

    def _drain_wake(self) -> None:
        try:
            while self._wake_r.recv(4096):
                pass
        except (BlockingIOError, OSError):
            return

    def close(self) -> None:
        for name in list(self._calls):
            self._fail(name, AgentTimeout(name, "collector stopping"))
        self._finished = []
        if self._resolver is not None:
            self._resolver.shutdown(wait=False, cancel_futures=True)
        self._selector.close()
        self._wake_r.close()
        self._wake_w.close()
