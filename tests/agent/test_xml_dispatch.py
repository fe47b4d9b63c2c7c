"""docs/hostile-inputs.md "XML" and "Dispatch" (cases 19 to 22): signed bodies attacking parser or dispatcher."""

from __future__ import annotations

import socket
import time
import tracemalloc
import xmlrpc.client
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from secure_agent.dispatch import FAULTS, KNOWN_BODIES
from secure_agent.xmlsafe import XMLRefused, parse_call
from tests.agent import wire
from tests.plugins.agent import RunningAgent, StartAgent, rpc_call
from tests.plugins.pki import TestPKI

GENERIC_MESSAGES = {message for _, message in FAULTS.values()}

BILLION_LAUGHS = b"""<?xml version="1.0"?>
<!DOCTYPE lolz [
 <!ENTITY lol "lol">
 <!ENTITY lol1 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">
 <!ENTITY lol2 "&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;">
 <!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">
 <!ENTITY lol4 "&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;">
 <!ENTITY lol5 "&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;">
 <!ENTITY lol6 "&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;">
 <!ENTITY lol7 "&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;">
 <!ENTITY lol8 "&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;">
 <!ENTITY lol9 "&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;">
]>
<methodCall><methodName>&lol9;</methodName></methodCall>"""


def _quadratic() -> bytes:
    entity = "A" * 4000
    refs = "&a;" * 1000
    return (
        f'<?xml version="1.0"?><!DOCTYPE m [<!ENTITY a "{entity}">]>'
        f"<methodCall><methodName>ping</methodName><params><param><value>{refs}</value></param></params></methodCall>"
    ).encode()


def _external(url: str) -> list[bytes]:
    return [
        f'<?xml version="1.0"?><!DOCTYPE m [<!ENTITY x SYSTEM "{url}">]><methodCall><methodName>&x;</methodName>'
        "</methodCall>".encode(),
        f'<?xml version="1.0"?><!DOCTYPE m SYSTEM "{url}"><methodCall><methodName>ping</methodName>'
        "</methodCall>".encode(),
        f'<?xml version="1.0"?><!DOCTYPE m [<!ENTITY % p SYSTEM "{url}"> %p;]><methodCall/>'.encode(),
    ]


def _signed_call(agent: RunningAgent, pki: TestPKI, body: bytes) -> wire.Reply:
    data = wire.request_bytes(body, authorization=wire.signed_headers(agent, pki, body))
    return wire.send_once(agent, pki, data)


def _fault(reply: wire.Reply) -> xmlrpc.client.Fault:
    assert reply.status == 200
    with pytest.raises(xmlrpc.client.Fault) as fault:
        xmlrpc.client.loads(reply.body)
    assert fault.value.faultString in GENERIC_MESSAGES
    for leak in (b"Traceback", b"Error", b"Exception", b"/", b"defused", b"expat", b"secure_agent"):
        assert leak not in reply.body.replace(b"<?xml version='1.0'?>", b"").replace(b"</", b"")
    return fault.value


def test_entity_attacks_refused_fast_without_memory_or_network(start_agent: StartAgent, test_pki: TestPKI) -> None:
    agent = start_agent(test_pki, server={"max_body_bytes": 65536})
    with socket.create_server(("127.0.0.1", 0)) as bait:  # where an external reference would call home
        bait.settimeout(0.0)
        url = f"http://127.0.0.1:{bait.getsockname()[1]}/evil.dtd"
        bodies = [BILLION_LAUGHS, _quadratic(), *_external(url), *_external(f"file://{agent.config_path}")]
        for body in bodies:
            # the parser alone: refused in milliseconds, with no memory worth measuring
            tracemalloc.start()
            started = time.thread_time()  # CPU time of this thread: a busy machine cannot inflate it
            with pytest.raises(XMLRefused):
                parse_call(body, max_depth=32, max_elements=2048)
            elapsed = time.thread_time() - started
            _, peak = tracemalloc.get_traced_memory()
            tracemalloc.stop()
            assert elapsed < 0.25, f"parse took {elapsed:.4f} s of CPU"  # the memory peak proves no expansion
            assert peak < 256 * 1024, f"parse peak {peak} bytes"
            # and through the agent: a fault, fast, with bounded memory for the whole round trip
            tracemalloc.start()
            reply = _signed_call(agent, test_pki, body)
            _, peak = tracemalloc.get_traced_memory()
            tracemalloc.stop()
            assert _fault(reply).faultCode == FAULTS["parse"][0]
            assert peak < 4 * 1024 * 1024, f"peak {peak} bytes"
            with pytest.raises(BlockingIOError):
                bait.accept()  # nobody ever dialled out
    faulted = [r for r in wire.records(agent) if r["event"] == "call"]
    assert len(faulted) == len(bodies)
    assert {r["reason"] for r in faulted} == {"xml_forbidden"}
    assert all(r["outcome"] == "faulted" for r in faulted)


@pytest.mark.parametrize(
    ("body", "kind"),
    [
        (b"", "parse"),
        (b"not xml at all", "parse"),
        (b"<methodCall><methodName>ping</methodName>", "parse"),
        (b"<methodResponse><params><param><value>x</value></param></params></methodResponse>", "parse"),
        (b"<methodCall>" + b"<value><array><data>" * 40 + b"</data></array></value>" * 40 + b"</methodCall>", "parse"),
        (
            b"<methodCall><methodName>ping</methodName><params>" + b"<param/>" * 3000 + b"</params></methodCall>",
            "parse",
        ),
        (xmlrpc.client.dumps((1,), "ping").encode(), "params"),
        (xmlrpc.client.dumps(("x", 2), "get_metrics").encode(), "params"),
        (
            b"<methodCall><methodName>ping</methodName><params><param><value><int>x</int></value></param>"
            b"</params></methodCall>",
            "parse",
        ),
        (
            b"<methodCall><methodName>ping</methodName><params><param><value><int>"
            + b"9" * 5000
            + b"</int></value></param></params></methodCall>",
            "parse",
        ),
        (
            b"<methodCall><methodName>ping</methodName><params><param><value><struct><member><name>a</name>"
            b"</member></struct></value></param></params></methodCall>",
            "parse",
        ),
    ],
)
def test_malformed_calls_get_generic_faults(start_agent: StartAgent, test_pki: TestPKI, body: bytes, kind: str) -> None:
    agent = start_agent(test_pki, server={"max_body_bytes": 65536})
    fault = _fault(_signed_call(agent, test_pki, body))
    assert (fault.faultCode, fault.faultString) == FAULTS[kind]
    record = wire.wait_for_record(agent, wire.event("call", outcome="faulted"))
    assert record["key_id"] == "collector"


@pytest.mark.parametrize(
    "method",
    [
        "system.listMethods",
        "system.multicall",
        "system.methodHelp",
        "system.methodSignature",
        "_dispatch",
        "__class__",
        "ping.__class__",
        "get_info.__globals__",
        "_ping",
        "__init__",
        "register_function",
        "server_close",
        "shutdown",
        "PING",
        "ping ",
        "x" * 5000,
        "ping\nforged",
    ],
)
def test_only_the_contract_is_callable(start_agent: StartAgent, test_pki: TestPKI, method: str) -> None:
    agent = start_agent(test_pki)
    with pytest.raises(xmlrpc.client.Fault) as fault:
        rpc_call(agent, test_pki, method)
    assert (fault.value.faultCode, fault.value.faultString) == FAULTS["not_found"]
    record = wire.wait_for_record(agent, wire.event("call", outcome="faulted"))
    assert record["reason"] == "not_found"
    assert len(record["method"]) < 200  # client strings are clipped in the audit log
    assert "\n" not in agent.audit_log.read_text().rstrip("\n").split("\n")[-1]
    assert rpc_call(agent, test_pki, "ping") == "pong"  # and the agent is none the worse
    wire.assert_chain_intact(agent)


def test_multicall_cannot_smuggle_calls(start_agent: StartAgent, test_pki: TestPKI) -> None:
    agent = start_agent(test_pki)
    with pytest.raises(xmlrpc.client.Fault):
        rpc_call(agent, test_pki, "system.multicall", [{"methodName": "ping", "params": []}])
    assert [r["method"] for r in wire.records(agent) if r["event"] == "call"] == ["system.multicall"]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=2048))
def test_parser_never_raises_anything_but_a_refusal(body: bytes) -> None:
    try:
        call = parse_call(body)
    except XMLRefused as refused:
        assert refused.reason in {"forbidden", "malformed", "too_deep", "too_many_elements", "not_a_call"}
    else:
        assert isinstance(call.method, str)


XML_TEXT = st.characters(blacklist_categories=("Cs", "Cc"))  # what XML 1.0 can carry unchanged


@settings(max_examples=60, deadline=None)
@given(
    st.recursive(
        st.none() | st.booleans() | st.integers(-(2**31), 2**31 - 1) | st.text(XML_TEXT, max_size=20),
        lambda children: (
            st.lists(children, max_size=4) | st.dictionaries(st.text(XML_TEXT, max_size=5), children, max_size=4)
        ),
        max_leaves=30,
    )
)
def test_parser_round_trips_what_xmlrpc_marshals(value: Any) -> None:
    body = xmlrpc.client.dumps((value,), "ping", allow_none=True).encode()
    try:
        call = parse_call(body)
    except XMLRefused as refused:
        assert refused.reason == "too_deep"  # deeply nested values are what the caps are for
        return
    assert call.method == "ping"
    assert call.params == xmlrpc.client.loads(body)[0]


def test_the_known_bodies_are_what_the_parser_makes_of_them() -> None:
    """handle_call answers these exact bodies without parsing them: the parser must agree."""
    assert sorted(KNOWN_BODIES.values()) == ["get_info", "get_metrics", "ping"]
    for body, name in KNOWN_BODIES.items():
        assert parse_call(body) == (name, ())


def test_a_body_that_differs_from_a_known_one_is_parsed(start_agent: StartAgent, test_pki: TestPKI) -> None:
    agent = start_agent(test_pki)
    known = next(body for body, name in KNOWN_BODIES.items() if name == "ping")
    variant = known.replace(b"<params>", b"<params><param><value><int>1</int></value></param>")
    reply = wire.send_once(
        agent, test_pki, wire.request_bytes(variant, authorization=wire.signed_headers(agent, test_pki, variant))
    )
    assert reply.status == 200 and b"invalid method parameters" in reply.body
    assert [r.get("reason") for r in wire.records(agent) if r["event"] == "call"] == ["params"]
