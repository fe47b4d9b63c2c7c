"""Small, deliberate fixture data for the viz tests: a few agents, one without a sensor, alerts, states."""

from __future__ import annotations

import math

from storage.base import Batch
from storage.models import AgentStatus, Alert, Sample

STEP = 60.0
HOURS = 3.0
HOSTILE_AGENT = "x--script-onerror"
"""A legal agent name (the pattern forbids markup), used with a hostile alert message."""
HOSTILE_MESSAGE = "<script>alert('x')</script><img src=x onerror=alert(1)> & \"quoted\" $\\frac{1}{0}$"
HOSTILE_REASON = "no sensor <b>bold</b> $\\frac{1}{$ {braces} \\$ \\"


def fleet(now: float, agents: tuple[str, ...] = ("web-1", "db-1", "edge-1"), *, hours: float = HOURS,
          step: float = STEP, no_sensor: tuple[str, ...] = ("db-1",)) -> Batch:
    """Samples every ``step`` seconds for ``hours`` up to ``now``, plus alerts and statuses.

    Each agent's values follow its own smooth curve (so plots have content and differ); agents in
    ``no_sensor`` report no temperature and a reason.
    """
    samples: list[Sample] = []
    statuses: list[AgentStatus] = []
    count = int(hours * 3600 / step)
    for index, agent in enumerate(agents):
        for tick in range(count):
            timestamp = now - (count - tick) * step + index  # agents polled a second apart
            phase = tick / 30.0 + index
            wave = (math.sin(phase) + 1.0) / 2.0
            temperature = None if agent in no_sensor else 45.0 + 30.0 * wave
            samples.append(
                Sample(
                    agent=agent,
                    timestamp=timestamp,
                    cpu_usage=10.0 + 80.0 * wave,
                    cpu_temperature=temperature,
                    temperature_reason=HOSTILE_REASON if agent in no_sensor else None,
                    temperature_high=80.0 if temperature is not None else None,
                    load_1=3.0 * wave,
                    load_5=2.0 * wave + 0.2,
                    load_15=1.0 * wave + 0.4,
                    memory_usage=30.0 + 40.0 * wave,
                    swap_usage=5.0 + 10.0 * wave,
                    disk_usage=50.0 + 10.0 * index,
                    security_issues=tick % 7 if index == 0 else 0,
                    threat_level=("none", "low", "medium", "high")[(tick // 40 + index) % 4],
                    ssh_failures=(tick * (index + 1)) % 11,
                )
            )
            statuses.append(AgentStatus(agent=agent, timestamp=timestamp, state="up", latency_ms=5.0))
    last = now - 1.0
    statuses.append(AgentStatus(agent=agents[-1], timestamp=last, state="timeout", detail="no answer in 10 s"))
    second = agents[min(1, len(agents) - 1)]
    alerts = [
        Alert(agent=agents[0], timestamp=now - 3000, metric="cpu_usage", value=91.0, threshold=80.0,
              severity="warning", message="CPU usage above threshold"),
        Alert(agent=second, timestamp=now - 2000, metric="memory_usage", value=90.0, threshold=85.0,
              severity="warning", message="memory high"),
        Alert(agent=second, timestamp=now - 1000, metric="memory_usage", value=60.0, threshold=85.0,
              severity="info", state="cleared", message="memory back to normal"),
    ]
    return Batch(samples=samples, alerts=alerts, statuses=statuses)


def operator_fleet(now: float) -> Batch:
    """What an operator's first look meets: five agents over three hours, one of them down for the last
    forty minutes, one with an outage in the middle, one without a temperature sensor, one whose SSH
    failures are not monitored (a journald-only host before the fix), a brute force and open alerts."""
    names = ("web-1", "web-2", "db-1", "edge-1", "backup-1")
    count = int(HOURS * 3600 / STEP)
    samples: list[Sample] = []
    statuses: list[AgentStatus] = []
    for index, agent in enumerate(names):
        for tick in range(count):
            timestamp = now - (count - tick) * STEP + index
            if agent == "edge-1" and tick >= count - 40:  # down: no answers for the last 40 minutes
                statuses.append(AgentStatus(agent=agent, timestamp=timestamp, state="timeout",
                                            detail="no answer within 10 s"))
                continue
            if agent == "web-2" and 70 <= tick < 95:  # an outage in the middle: a gap, not a line
                statuses.append(AgentStatus(agent=agent, timestamp=timestamp, state="unreachable",
                                            detail="connect: ECONNREFUSED"))
                continue
            wave = (math.sin(tick / 25.0 + index) + 1.0) / 2.0
            brute = agent == "web-1" and tick > count - 30
            samples.append(Sample(
                agent=agent, timestamp=timestamp,
                cpu_usage=15.0 + 60.0 * wave + (20.0 if agent == "db-1" else 0.0),
                cpu_temperature=None if agent == "db-1" else 48.0 + 20.0 * wave,
                temperature_reason="no hwmon or thermal zone (virtual machine)" if agent == "db-1" else None,
                temperature_high=82.0 if agent != "db-1" else None,
                load_1=0.3 + 2.5 * wave * (1.5 if agent == "db-1" else 1.0), load_5=0.3 + 1.5 * wave,
                load_15=0.3 + wave, memory_usage=35.0 + 30.0 * wave + 5.0 * index,
                swap_usage=2.0 + 6.0 * wave + (30.0 if agent == "db-1" else 0.0),
                disk_usage=(93.0 if agent == "backup-1" else 40.0 + 8.0 * index),
                security_issues=1 if brute else 0,
                threat_level="high" if brute else ("low" if agent == "web-2" and tick > 100 else "none"),
                ssh_failures=None if agent == "backup-1" else (12 + tick % 9 if brute else tick % 3),
            ))
            statuses.append(AgentStatus(agent=agent, timestamp=timestamp, state="up", latency_ms=4.0))
    alerts = [
        Alert(agent="web-1", timestamp=now - 1700, metric="security.ssh_bruteforce.0a1b2c3d4e", value=12.0,
              severity="critical", technique="T1110", message="ssh_bruteforce: 12 failed SSH logins from 203.0.113.9"),
        Alert(agent="backup-1", timestamp=now - 7000, metric="disk_usage", value=93.0, threshold=90.0,
              severity="warning", message="disk_usage 93 % at or above 90 %"),
        Alert(agent="edge-1", timestamp=now - 2380, metric="agent_state", severity="warning",
              message="agent stopped answering: timeout"),
    ]
    return Batch(samples=samples, alerts=alerts, statuses=statuses)


def hostile(now: float) -> Batch:
    """One agent with a hostile alert message and temperature reason (names cannot hold markup)."""
    sample = Sample(agent=HOSTILE_AGENT, timestamp=now - 60, cpu_usage=50.0, temperature_reason=HOSTILE_REASON)
    alert = Alert(agent=HOSTILE_AGENT, timestamp=now - 30, metric="security<b>", severity="critical",
                  message=HOSTILE_MESSAGE)
    status = AgentStatus(agent=HOSTILE_AGENT, timestamp=now - 60, state="bad_response", detail=HOSTILE_MESSAGE[:200])
    return Batch(samples=[sample], alerts=[alert], statuses=[status])
