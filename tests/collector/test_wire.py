"""The XML-RPC answer parser: exact values for what the protocol uses, refusal for everything else."""

from __future__ import annotations

import time
import xmlrpc.client
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pki import tokens
from secure_collector.wire import MAX_DEPTH, MAX_STRING, WireError, parse_response, request_body
from tests.collector.answers import good_answer, xmlrpc_values
from tests.plugins.agent import StartAgent, connect
from tests.plugins.pki import TestPKI


def _response(value: Any) -> bytes:
    return xmlrpc.client.dumps((value,), methodresponse=True, allow_none=True).encode("utf-8")


def _wrap(value_xml: str) -> bytes:
    return f"<?xml version='1.0'?><methodResponse><params><param>{value_xml}</param></params></methodResponse>".encode()


def test_real_shaped_answer_round_trips() -> None:
    answer = good_answer()
    parsed = parse_response(_response(answer))
    assert parsed.fault is False
    assert parsed.value == answer


def test_fault_is_reported_as_fault() -> None:
    body = xmlrpc.client.dumps(xmlrpc.client.Fault(7, "no such method"), methodresponse=True).encode()
    parsed = parse_response(body)
    assert parsed.fault is True
    assert parsed.value == {"faultCode": 7, "faultString": "no such method"}


def test_request_body_is_a_call_without_params() -> None:
    assert xmlrpc.client.loads(request_body("get_metrics")) == ((), "get_metrics")


def test_untyped_value_is_a_string_and_whitespace_is_kept() -> None:
    assert parse_response(_wrap("<value>  plain text </value>")).value == "  plain text "
    assert parse_response(_wrap("<value><string></string></value>")).value == ""
    assert parse_response(_wrap("<value><string>a &amp; b &#x41;</string></value>")).value == "a & b A"


BILLION_LAUGHS = b"""<?xml version="1.0"?>
<!DOCTYPE lolz [<!ENTITY lol "lol"><!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">
<!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">]>
<methodResponse><params><param><value><string>&lol3;</string></value></param></params></methodResponse>"""
EXTERNAL_ENTITY = b"""<?xml version="1.0"?><!DOCTYPE r [<!ENTITY x SYSTEM "file:///etc/passwd">]>
<methodResponse><params><param><value><string>&x;</string></value></param></params></methodResponse>"""
EXTERNAL_DTD = b"""<?xml version="1.0"?><!DOCTYPE r SYSTEM "http://127.0.0.1:9/evil.dtd">
<methodResponse><params><param><value><string>x</string></value></param></params></methodResponse>"""
UTF16_DOCTYPE = BILLION_LAUGHS.decode().replace('version="1.0"', 'version="1.0" encoding="UTF-16"').encode("utf-16")
UTF16_NO_BOM = BILLION_LAUGHS.decode().encode("utf-16-le")


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (BILLION_LAUGHS, "DTD"),
        (EXTERNAL_ENTITY, "DTD"),
        (EXTERNAL_DTD, "DTD"),
        (UTF16_DOCTYPE, "not UTF-8"),
        (UTF16_NO_BOM, "not UTF-8"),
        (BILLION_LAUGHS.decode().encode("utf-32"), "not UTF-8"),
        (_wrap("<value><string><![CDATA[x]]></string></value>"), "DTD"),
        (_wrap("<value><string>&undefined;</string></value>"), "malformed"),
        (_wrap("<value><dateTime.iso8601>20240101T00:00:00</dateTime.iso8601></value>"), "unsupported"),
        (_wrap("<value><base64>AAAA</base64></value>"), "unsupported"),
        (_wrap("<value><ex:nil xmlns:ex='x'/></value>"), "unsupported"),
        (_wrap("<value><double>nan</double></value>"), "finite"),
        (_wrap("<value><double>inf</double></value>"), "finite"),
        (_wrap("<value><double>1e999</double></value>"), "finite"),
        (_wrap("<value><double>twelve</double></value>"), "number"),
        (_wrap("<value><int>1.5</int></value>"), "integer"),
        (_wrap(f"<value><int>{'9' * (MAX_STRING + 1)}</int></value>"), "too long"),
        (_wrap("<value><boolean>yes</boolean></value>"), "boolean"),
        (_wrap("<value><string>a</string><string>b</string></value>"), "one type"),
        (_wrap("<value><string>x<b>y</b></string></value>"), "unexpected"),
        (_wrap(f"<value><string>{'x' * (MAX_STRING + 1)}</string></value>"), "too long"),
        (
            _wrap(
                "<value><struct><member><name>a</name><value>1</value></member>"
                "<member><name>a</name><value>2</value></member></struct></value>"
            ),
            "duplicate",
        ),
        (_wrap("<value><struct><member><value>1</value><name>a</name></member></struct></value>"), "member"),
        (_wrap("<value><struct><value>1</value></struct></value>"), "member"),
        (_wrap("<value><array><value>1</value></array></value>"), "array"),
        (b"<methodCall><methodName>x</methodName></methodCall>", "methodResponse"),
        (b"<methodResponse><params></params></methodResponse>", "one param"),
        (b"<methodResponse><params><param><value>1</value><value>2</value></param></params></methodResponse>", "one"),
        (b"<methodResponse><fault><value><string>x</string></value></fault></methodResponse>", "struct"),
        (b"not xml at all", "malformed"),
        (b"", "malformed"),
        (b"\xff\xfe<\x00m\x00", "malformed"),
    ],
)
def test_hostile_or_malformed_answers_are_refused(body: bytes, reason: str) -> None:
    with pytest.raises(WireError) as refused:
        parse_response(body)
    assert reason in str(refused.value)


def test_deep_nesting_is_refused_quickly() -> None:
    depth = 5000
    body = _wrap("<value><array><data>" * depth + "</data></array></value>" * depth)
    started = time.thread_time()  # this thread's CPU time: a busy machine cannot inflate it
    with pytest.raises(WireError, match="deep"):
        parse_response(body)
    assert time.thread_time() - started < 2.0
    shallow = _wrap("<value><array><data>" * (MAX_DEPTH // 4) + "</data></array></value>" * (MAX_DEPTH // 4))
    assert parse_response(shallow).value is not None


def test_billion_laughs_refused_in_milliseconds() -> None:
    started = time.thread_time()  # this thread's CPU time: a busy machine cannot inflate it
    for _ in range(100):
        with pytest.raises(WireError):
            parse_response(BILLION_LAUGHS)
    assert time.thread_time() - started < 1.0


_text = st.text(alphabet=st.characters(blacklist_categories=("Cs", "Cc")), max_size=50)
_values = xmlrpc_values(_text)


@settings(max_examples=150, deadline=None)
@given(_values)
def test_round_trip_matches_the_standard_library(value: Any) -> None:
    body = _response(value)
    expected = xmlrpc.client.loads(body)[0][0]
    assert parse_response(body).value == expected


@settings(max_examples=150, deadline=None)
@given(st.binary(max_size=300))
def test_arbitrary_bytes_never_escape_as_another_exception(data: bytes) -> None:
    try:
        answer = parse_response(data)
    except WireError as exc:
        assert str(exc)  # refused, with a reason
    else:
        assert isinstance(answer.fault, bool)


# -- the agent's own layout: what xmlrpc.client.dumps writes, and hostile answers in it ----------------
def _layout(value_xml: str) -> bytes:
    """A response in the exact layout of xmlrpc.client.dumps around hand-written value markup."""
    head = "<?xml version='1.0'?>\n<methodResponse>\n<params>\n<param>\n"
    return (head + value_xml + "</param>\n</params>\n</methodResponse>\n").encode("utf-8")


def test_a_real_agents_answer_is_read(test_pki: TestPKI, start_agent: StartAgent) -> None:
    agent = start_agent(test_pki)
    body = request_body("get_metrics")
    key = tokens.load_key(test_pki.collector_files()[2])
    connection = connect(agent, test_pki)
    try:
        connection.request("POST", "/RPC2", body, {"Authorization": tokens.sign("collector", key, agent.name, body)})
        response = connection.getresponse()
        answer = response.read()
    finally:
        connection.close()
    assert response.status == 200
    parsed = parse_response(answer)
    assert parsed.fault is False and parsed.value["agent"] == agent.name
    assert parsed.value == xmlrpc.client.loads(answer, use_builtin_types=True)[0][0]


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (_response("x" * (MAX_STRING + 1)), "too long"),
        (_response(float("nan")), "finite"),
        (_response([1] * 3).replace(b"<int>1</int>", b"<int>1.5</int>", 1), "integer"),
        (_layout("<value><int>" + " " * (MAX_STRING + 1) + "7</int></value>\n"), "too long"),
        (_layout("<value><boolean>2</boolean></value>\n"), "boolean"),
        (_layout("<value><boolean> 1</boolean></value>\n"), "boolean"),
        (_layout("<value><double></double></value>\n"), "number"),
        (_layout(f"<value><double>{'1' * 50}</double></value>\n"), "number"),
        (_layout("<value><string>a]]>b</string></value>\n"), "malformed"),
        (_layout("<value><string>a\x01b</string></value>\n"), "malformed"),
        (_layout("<value><string>a\ufffeb</string></value>\n"), "malformed"),
        (_layout("<value><string>x</int></value>\n"), "malformed"),
        (_layout("<value><struct>\n</array></value>\n"), "malformed"),
        (_layout("<value><struct>\n<member>\n<name>a</name>\n</member>\n</struct></value>\n"), "member"),
        (
            _layout(
                "<value><struct>\n<member>\n<name>a</name>\n<value><int>1</int></value>\n</member>\n"
                "<member>\n<name>a</name>\n<value><int>2</int></value>\n</member>\n</struct></value>\n"
            ),
            "duplicate",
        ),
        (
            _layout(
                f"<value><struct>\n<member>\n<name>{'k' * (MAX_STRING + 1)}</name>\n<value><nil/></value></member>\n"
                "</struct></value>\n"
            ),
            "too long",
        ),
        (_layout("<value><array><data>\n<value><int>1</int></value>\n</data></array></value>\n" * 2), "one"),
        (_layout(""), "one param"),
        (_layout("<value><dateTime.iso8601>20240101T00:00:00</dateTime.iso8601></value>\n"), "unsupported"),
        (_layout("<value><string>a<?pi x?>b</string></value>\n"), "processing instructions"),
        (
            _layout("<value><string>x</string></value>\n").replace(
                b"version='1.0'", b"version='1.0' encoding='latin-1'"
            ),
            "not UTF-8",
        ),
    ],
)
def test_hostile_answers_in_the_agents_layout_are_refused(body: bytes, reason: str) -> None:
    with pytest.raises(WireError) as refused:
        parse_response(body)
    assert reason in str(refused.value)


@pytest.mark.parametrize(
    ("tag", "text"),
    [
        ("int", "\u0661\u0662"),  # Arabic-Indic digits: int() reads 12
        ("int", "\uff11\uff12"),  # full-width digits
        ("int", "1_000"),
        ("int", "\u00b2"),  # superscript two: isdigit() says yes, int() says no
        ("i8", "\u0967"),  # Devanagari one
        ("int", "\u20037"),  # an em space: str.strip() would take it away
        ("double", "\u0661.5"),
        ("double", "1_0.5"),
        ("double", "infinity"),
        ("double", "\uff11.0"),
        ("double", "\u00a01.5"),  # no-break space around a number
    ],
)
def test_numbers_are_ascii_digits_only(tag: str, text: str) -> None:
    body = _layout(f"<value><{tag}>{text}</{tag}></value>\n")
    with pytest.raises(WireError, match=r"not an integer|not a number|not a finite number"):
        parse_response(body)


@pytest.mark.parametrize(
    ("tag", "text", "value"),
    [("int", " 7\n", 7), ("int", "+12", 12), ("i8", "-0", 0), ("double", "1e+100", 1e100), ("double", " .5 ", 0.5)],
)
def test_ascii_numbers_with_xml_white_space_are_read(tag: str, text: str, value: Any) -> None:
    assert parse_response(_layout(f"<value><{tag}>{text}</{tag}></value>\n")).value == value


def test_a_fault_is_exactly_code_and_string() -> None:
    for members in (
        {"faultCode": 1},
        {"faultCode": "1", "faultString": "x"},
        {"faultCode": 1, "faultString": "x", "y": 2},
    ):
        body = xmlrpc.client.dumps((members,), methodresponse=True).replace("<params>\n<param>", "<fault>")
        body = body.replace("</param>\n</params>", "</fault>")
        with pytest.raises(WireError, match="fault"):
            parse_response(body.encode())


def test_nesting_up_to_the_limit_is_read() -> None:
    for depth in range(1, MAX_DEPTH // 3):
        for shape in ("array", "struct"):
            value: Any = 1
            for _ in range(depth):
                value = [value] if shape == "array" else {"k": value}
            assert parse_response(_response(value)).value == value
    with pytest.raises(WireError, match="deep"):
        parse_response(_response(json_nested(60)))


def json_nested(depth: int) -> Any:
    value: Any = []
    for _ in range(depth):
        value = [value]
    return value
