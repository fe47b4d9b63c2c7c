"""SSH brute force: failures per source address over a sliding window, with a threshold.

Like fail2ban (whose defaults ``security.ssh_max_failures`` = 5 and ``security.ssh_find_time`` = 600 s
follow), every matching log line counts: one password attempt can produce both a PAM line and a
``Failed password`` line, exactly as fail2ban's ``sshd`` filter counts them. A source reaching the
threshold within the window is a ``ssh_bruteforce`` finding (T1110): ``medium``, ``high`` from
:data:`HIGH_FACTOR` times the threshold.

The failures come from one source at a time, the first readable one of ``security.auth_sources`` (by
default the auth log files, else the systemd journal): on a host where rsyslog copies journald into
``auth.log`` both hold the same failure, and counting it twice would halve the threshold. When no source
is readable, :attr:`SshScan.failures` is ``None`` (not monitored) and :attr:`SshScan.reason` says why.

Memory is bounded whatever an attacker does: at most :data:`MAX_SOURCES` addresses are tracked (the
least recently seen is forgotten first) and at most :data:`MAX_EVENTS_PER_SOURCE` events per address.
"""

from __future__ import annotations

import time
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Literal, NamedTuple

from secure_agent.probes.authlog import AuthEvent, parse_line, parse_message
from secure_agent.probes.findings import SSH_BRUTEFORCE, Finding, Severity, make_finding
from secure_agent.probes.journal import SYSTEM_JOURNAL_DIRS, JournalFollower
from secure_agent.probes.logfollow import LogFollower

AuthSource = Literal["files", "journal"]
DEFAULT_SOURCES: tuple[AuthSource, ...] = ("files", "journal")

MAX_SOURCES = 16384
MAX_EVENTS_PER_SOURCE = 4096
HIGH_FACTOR = 4


class SourceCount(NamedTuple):
    address: str
    failures: int
    first_seen: float
    last_seen: float
    last_user: str | None
    users: int


class SshScan(NamedTuple):
    findings: tuple[Finding, ...]
    failures: int | None  # in the window, all source addresses; None: no log source readable (not monitored)
    sources: int  # distinct source addresses with failures in the window
    reason: str | None  # why no log source could be read (None when one was)
    problems: tuple[str, ...]  # per-path trouble worth logging
    skipped: int  # bytes skipped this scan because a log grew faster than a scan reads
    source: AuthSource | None = None  # which source was read this scan


class FailureWindow:
    """Failure events per source address; counts what falls within ``find_time`` of ``now``."""

    def __init__(self, find_time: float, max_sources: int = MAX_SOURCES) -> None:
        self.find_time = find_time
        self._max_sources = max_sources
        self._events: OrderedDict[str, deque[AuthEvent]] = OrderedDict()

    def add(self, event: AuthEvent) -> None:
        events = self._events.get(event.address)
        if events is None:
            if len(self._events) >= self._max_sources:
                self._events.popitem(last=False)
            events = self._events[event.address] = deque(maxlen=MAX_EVENTS_PER_SOURCE)
        else:
            self._events.move_to_end(event.address)
        events.append(event)

    def counts(self, now: float) -> list[SourceCount]:
        """Per source, the failures within the window ending at ``now``; forgets older events."""
        cutoff = now - self.find_time
        result: list[SourceCount] = []
        for address in list(self._events):
            events = self._events[address]
            while events and events[0].timestamp < cutoff:
                events.popleft()
            recent = [event for event in events if event.timestamp >= cutoff]
            if not recent:
                del self._events[address]
                continue
            result.append(
                SourceCount(
                    address,
                    sum(event.times for event in recent),
                    min(event.timestamp for event in recent),
                    max(event.timestamp for event in recent),
                    recent[-1].user,
                    len({event.user for event in recent}),
                )
            )
        return result


def bruteforce_findings(counts: Iterable[SourceCount], max_failures: int, find_time: float) -> list[Finding]:
    """One finding per source at or over the threshold, most failures first."""
    findings: list[Finding] = []
    for source in sorted(counts, key=lambda source: -source.failures):
        if source.failures < max_failures:
            continue
        severity: Severity = "high" if source.failures >= HIGH_FACTOR * max_failures else "medium"
        summary = (
            f"{source.failures} failed SSH logins from {source.address} within {int(find_time)} s "
            f"(threshold {max_failures})"
        )
        evidence = {
            "address": source.address, "count": source.failures, "first_seen": source.first_seen,
            "last_seen": source.last_seen, "user": source.last_user, "users": source.users,
            "window": int(find_time), "threshold": max_failures,
        }
        findings.append(make_finding(SSH_BRUTEFORCE, severity, summary, evidence))
    return findings


class SshMonitor:
    """Follows the auth logs or the journal and keeps the failure window; :meth:`scan` is called by one thread."""

    def __init__(
        self,
        paths: Iterable[Path],
        *,
        max_failures: int,
        find_time: float,
        clock: Callable[[], float] = time.time,
        follower: Callable[[Path], LogFollower] = LogFollower,
        sources: Sequence[AuthSource] = DEFAULT_SOURCES,
        journal: JournalFollower | None = None,
    ) -> None:
        self._followers = [follower(path) for path in dict.fromkeys(paths)] if "files" in sources else []
        self._sources = tuple(dict.fromkeys(sources))
        if "journal" in self._sources and journal is None:
            journal = JournalFollower(initial_since=find_time, clock=clock)
        self._journal = journal if "journal" in self._sources else None
        self._max_failures = max_failures
        self._window = FailureWindow(find_time)
        self._clock = clock

    def scan(self) -> SshScan:
        now = self._clock()
        problems: list[str] = []
        reasons: list[str] = []
        skipped = 0
        used: AuthSource | None = None
        for source in self._sources:
            if source == "files":
                readable, skipped, why = self._scan_files(now, problems)
            else:
                readable, why = self._scan_journal(problems)
            if readable:
                used = source
                break
            reasons.append(why)
        counts = self._window.counts(now)
        findings = bruteforce_findings(counts, self._max_failures, self._window.find_time)
        failures = sum(c.failures for c in counts) if used is not None else None
        reason = None if used is not None else "; ".join(reasons)
        return SshScan(tuple(findings), failures, len(counts), reason, tuple(problems), skipped, used)

    def _scan_files(self, now: float, problems: list[str]) -> tuple[bool, int, str]:
        errors: list[str] = []
        readable = skipped = 0
        for follower in self._followers:
            poll = follower.poll()
            skipped += poll.skipped
            if poll.error is not None:
                errors.append(f"{follower.path}: {poll.error}")
            elif not poll.missing:
                readable += 1
            for line in poll.lines:
                event = parse_line(line, now)
                if event is not None:
                    self._window.add(event)
        problems.extend(errors)
        names = ", ".join(str(follower.path) for follower in self._followers) or "none configured"
        why = "; ".join(errors) if errors else f"no auth log found ({names})"
        return readable > 0, skipped, why

    def _scan_journal(self, problems: list[str]) -> tuple[bool, str]:
        journal = self._journal
        if journal is None:
            return False, "no journal configured"
        poll = journal.poll()
        for entry in poll.entries:
            event = parse_message(entry.message, entry.timestamp)
            if event is not None:
                self._window.add(event)
        if poll.error is not None:
            problems.append(f"{journal.where}: {poll.error}")
            return False, f"{journal.where}: {poll.error}"
        if poll.missing:
            where = journal.directory or ", ".join(str(path) for path in SYSTEM_JOURNAL_DIRS)
            return False, f"no systemd journal found ({where})"
        return True, ""

    def close(self) -> None:
        for follower in self._followers:
            follower.close()
