"""What every connection of an agent shares: handed to each :class:`~secure_agent.connection.Connection`.

The listener (:mod:`secure_agent.server`) owns one :class:`Shared` and replaces its ``policy`` whole on a
reload; ``verifier`` and ``limiter`` are kept, so the replay cache and the rate-limit state survive a
reload. A connection reads only this, never the listener, so the two modules do not import each other.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from xmlrpc.server import SimpleXMLRPCDispatcher

from pki.tokens import Verifier
from secure_agent.audit import AuditLog
from secure_agent.config import ServerLimits
from secure_agent.guard import Policy
from secure_agent.ratelimit import RateLimiter
from secure_agent.refusals import RefusalRecorder
from secure_agent.slots import Slots


@dataclass
class Shared:
    policy: Policy  # replaced whole on reload; a kept-alive connection is judged again at its next request
    limits: ServerLimits
    audit: AuditLog
    refusals: RefusalRecorder  # refusal records, within their budget
    verifier: Verifier
    limiter: RateLimiter
    methods: SimpleXMLRPCDispatcher  # the contract's method table (secure_agent.dispatch)
    slots: Slots[Any]  # the listener's (of secure_agent.connection.Connection): establish() moves one
    stopping: bool = False  # set once by the listener's stop: no new request is started after it
