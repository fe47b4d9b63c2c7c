"""The exception tree of :mod:`secure_agent` (errors of :mod:`pki` pass through unchanged)::

    AgentError              root of everything this package raises
    ├── StartupError        the agent cannot start: bad config, unusable material, port in use (one line)
    └── AuditError          the audit log cannot be opened, read back or written; calls are refused

Every message is one line fit for stderr; none holds key material.
"""

from __future__ import annotations


class AgentError(Exception):
    """Root of every error raised by :mod:`secure_agent`."""


class StartupError(AgentError):
    """The agent cannot start; the message names the file, key or address at fault."""


class AuditError(AgentError):
    """The audit log cannot be used. The agent refuses calls rather than serve them unrecorded."""
