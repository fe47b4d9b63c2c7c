"""The XML-RPC methods of the contract and nothing else: ping, get_metrics, get_info, get_audit, get_samples.

Built on :class:`xmlrpc.server.SimpleXMLRPCDispatcher` with plain registered functions: no
instance is registered (so no attribute walking and no dotted names), no introspection or
multicall (so no ``system.*``), and a name is looked up only if it is in :data:`METHODS`. Every
fault carries one of the generic codes and messages of :data:`FAULTS` (the XML-RPC fault-code
interoperability values); what went wrong inside goes to the log only.

``get_metrics`` is answered by :meth:`MetricsSource.snapshot_response`, which writes the XML-RPC
response itself (the same document ``xmlrpc.client.dumps`` would write for ``snapshot()``, most of it
rendered once per background scan): marshalling the whole struct on every call was the largest single
cost of a call (docs/fast-paths.md).
"""

from __future__ import annotations

import logging
import xmlrpc.client
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple, Protocol
from xmlrpc.server import SimpleXMLRPCDispatcher

from secure_agent import xmlwire
from secure_agent.audit_reader import ParamsError, check_params
from secure_agent.xmlsafe import Call, XMLRefused, parse_call

logger = logging.getLogger(__name__)

METHODS: Mapping[str, int] = {  # name -> parameters
    "ping": 0, "get_metrics": 0, "get_info": 0, "get_audit": 2, "get_samples": 2,
}
MAX_SAMPLES_LIMIT = 1000

FAULTS: Mapping[str, tuple[int, str]] = {
    "parse": (-32700, "parse error"),
    "not_found": (-32601, "method not found"),
    "params": (-32602, "invalid method parameters"),
    "internal": (-32603, "internal error"),
}


# The exact bytes ``xmlrpc.client`` (the collector's client and the stdlib's) sends for each of our
# calls, none of which takes a parameter: a body equal to one of them is the call it names without
# running the XML parser (what the parser makes of these very bytes is pinned by a test).
KNOWN_BODIES: Mapping[bytes, str] = {
    xmlrpc.client.dumps((), name).encode("utf-8"): name for name, arity in METHODS.items() if arity == 0
}


class MetricsSource(Protocol):
    """What the dispatcher needs of :class:`secure_agent.metrics.MetricsService`."""

    def snapshot(self) -> dict[str, Any]: ...

    def snapshot_response(self) -> bytes: ...

    def info(self) -> dict[str, Any]: ...

    def samples(self, after: int, limit: int) -> dict[str, Any]: ...


class AuditSource(Protocol):
    """What the dispatcher needs of :class:`secure_agent.audit_reader.AuditReader`."""

    def get_audit(self, after: str, limit: int) -> dict[str, Any]: ...


class Outcome(NamedTuple):
    body: bytes  # the XML-RPC response (a result or a fault)
    method: str | None  # as the client named it (for the audit log), None if the body did not parse
    fault: str | None  # None when served; else why, in one word for the audit log


def fault_body(kind: str) -> bytes:
    code, message = FAULTS[kind]
    return xmlrpc.client.dumps(xmlrpc.client.Fault(code, message), methodresponse=True).encode("utf-8")


def _ping() -> str:
    return "pong"


class PreparedAnswer:
    """A registered method whose XML-RPC response is written by ``respond`` (no marshalling here).

    Called like the plain function (``value()``), so the stdlib dispatcher can still run it.
    """

    def __init__(self, value: Callable[[], Any], respond: Callable[[], bytes]) -> None:
        self.value = value
        self.respond = respond

    def __call__(self) -> Any:
        return self.value()


def register_contract(dispatcher: SimpleXMLRPCDispatcher, metrics: MetricsSource, audit: AuditSource) -> None:
    """Register the contract's methods, and only those, on ``dispatcher`` (the agent's method table)."""
    dispatcher.register_function(_ping, "ping")
    dispatcher.register_function(PreparedAnswer(metrics.snapshot, metrics.snapshot_response), "get_metrics")
    dispatcher.register_function(metrics.info, "get_info")

    def get_audit(*params: Any) -> dict[str, Any]:
        return audit.get_audit(*check_params(params))

    dispatcher.register_function(get_audit, "get_audit")

    def get_samples(*params: Any) -> dict[str, Any]:
        return metrics.samples(*check_sample_params(params))

    dispatcher.register_function(get_samples, "get_samples")
    if set(dispatcher.funcs) != set(METHODS):
        raise RuntimeError("the registered methods differ from the contract")


def check_sample_params(params: tuple[Any, ...]) -> tuple[int, int]:
    """``get_samples(after, limit)``: ``after`` a sequence number (0 or ``""``: from the oldest), 1..1000."""
    after, limit = params
    if after == "":
        after = 0
    if type(after) is not int or after < 0:
        raise ParamsError("after")
    if type(limit) is not int or not 1 <= limit <= MAX_SAMPLES_LIMIT:
        raise ParamsError("limit")
    return after, limit


def handle_call(dispatcher: SimpleXMLRPCDispatcher, body: bytes) -> Outcome:
    """Parse, check and run one call; never raises for anything the client sent."""
    known = KNOWN_BODIES.get(body)
    if known is not None:
        call = Call(known, ())
    else:
        try:
            call = parse_call(body)
        except XMLRefused as refused:
            return Outcome(fault_body("parse"), None, f"xml_{refused.reason}")
    name = call.method
    arity = METHODS.get(name)
    if arity is None or name not in dispatcher.funcs:
        return Outcome(fault_body("not_found"), name, "not_found")
    if len(call.params) != arity:
        return Outcome(fault_body("params"), name, "params")
    function = dispatcher.funcs[name]
    try:
        if isinstance(function, PreparedAnswer):
            return Outcome(function.respond(), name, None)
        result = function(*call.params)
        return Outcome(xmlwire.method_response(result), name, None)
    except ParamsError:
        return Outcome(fault_body("params"), name, "params")
    except Exception:  # a failing probe or an unmarshallable value: log it, tell the client nothing
        logger.exception("method %s failed", name)
        return Outcome(fault_body("internal"), name, "internal")
