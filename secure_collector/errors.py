"""The exception tree of :mod:`secure_collector`::

    CollectorError               root of everything this package raises
    ├── PollError                one poll of one agent failed; ``state`` is the stored agent state
    │   ├── AgentUnreachable     connection refused, no route, name does not resolve    -> "unreachable"
    │   ├── AgentTimeout         connect, handshake or answer exceeded ``timeout``      -> "timeout"
    │   ├── AgentTLSFailure      a certificate was rejected, by us or by the agent      -> "tls_failure"
    │   ├── AgentAuthRefused     HTTP 401/403: token or client identity refused         -> "auth_refused"
    │   ├── AgentRateLimited     HTTP 429; ``retry_after`` in seconds when the agent said -> "rate_limited"
    │   └── AgentBadResponse     anything malformed, oversized, hostile or invalid      -> "bad_response"
    ├── SpoolError               the spool directory cannot be used
    └── AlertHookError           ``alert_command`` cannot be used

``OSError`` and ``ssl.SSLError`` are translated into these where they enter (:mod:`.transport`), with the
agent's name kept. Messages never carry text an agent chose without it being escaped and cut short.
"""

from __future__ import annotations

from typing import ClassVar

from storage.models import AgentState


class CollectorError(Exception):
    """Root of every error raised by :mod:`secure_collector`."""


class PollError(CollectorError):
    """One poll of one agent failed."""

    state: ClassVar[AgentState]

    def __init__(self, agent: str, detail: str) -> None:
        super().__init__(f"{agent}: {self.state}: {detail}")
        self.agent = agent
        self.detail = detail


class AgentUnreachable(PollError):
    state = "unreachable"


class AgentTimeout(PollError):
    state = "timeout"


class AgentTLSFailure(PollError):
    state = "tls_failure"


class AgentAuthRefused(PollError):
    state = "auth_refused"


class AgentRateLimited(PollError):
    state = "rate_limited"

    def __init__(self, agent: str, detail: str, retry_after: float | None = None) -> None:
        super().__init__(agent, detail)
        self.retry_after = retry_after


class AgentBadResponse(PollError):
    state = "bad_response"


class SpoolError(CollectorError):
    """The spool directory is unusable (names the path)."""


class AlertHookError(CollectorError):
    """The alert command is unusable (names the program)."""
