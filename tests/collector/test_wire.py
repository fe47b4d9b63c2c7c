"""The XML-RPC answer parser: exact values for what the protocol uses, refusal for everything else."""

from __future__ import annotations

import time
import xmlrpc.client
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pki import tokens
from secure_collector import wire
from secure_collector.wire import MAX_DEPTH, MAX_STRING, WireError, parse_response, request_body
from tests.collector.answers import good_answer
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
    started = time.perf_counter()
    with pytest.raises(WireError, match="deep"):
        parse_response(body)
    assert time.perf_counter() - started < 2.0
    shallow = _wrap("<value><array><data>" * (MAX_DEPTH // 4) + "</data></array></value>" * (MAX_DEPTH // 4))
    assert parse_response(shallow).value is not None


def test_billion_laughs_refused_in_milliseconds() -> None:
    started = time.perf_counter()
    for _ in range(100):
        with pytest.raises(WireError):
            parse_response(BILLION_LAUGHS)
    assert time.perf_counter() - started < 1.0


_text = st.text(alphabet=st.characters(blacklist_categories=("Cs", "Cc")), max_size=50)
_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**31), max_value=2**31 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | _text
)
_values = st.recursive(
    _scalars,
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(_text, inner, max_size=5),
    max_leaves=30,
)


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


# -- the fast path: a strict subset of the tree reader --------------------------------------------
def _layout(value_xml: str) -> bytes:
    """A response in the exact layout of xmlrpc.client.dumps around hand-written value markup."""
    head = "<?xml version='1.0'?>\n<methodResponse>\n<params>\n<param>\n"
    return (head + value_xml + "</param>\n</params>\n</methodResponse>\n").encode("utf-8")


def _tree_or_refusal(body: bytes) -> Any:
    try:
        return wire._tree_answer(body).value
    except WireError:
        return _REFUSED


_REFUSED = object()


def _agrees(body: bytes) -> Any:
    """The fast path gives up or reads what the tree reader reads (never accepts what it refuses)."""
    fast = wire._fast_value(body)
    if fast is not wire._GIVE_UP:
        tree = _tree_or_refusal(body)
        assert tree is not _REFUSED, body[:200]
        assert fast == tree and type(fast) is type(tree)
    return fast


def test_a_real_agents_answer_takes_the_fast_path(test_pki: TestPKI, start_agent: StartAgent) -> None:
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
    fast = _agrees(answer)
    if b"&" not in answer:  # host text with markup characters is escaped: the tree reader's case
        assert fast is not wire._GIVE_UP and fast["agent"] == agent.name


def test_an_answer_in_the_agents_layout_takes_the_fast_path() -> None:
    answer = good_answer(unavailable={"cpu_temperature": None, "processes": "disabled by configuration"})
    body = _response(answer)
    assert _agrees(body) == answer
    assert parse_response(body).value == answer


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (_response("x" * (MAX_STRING + 1)), "too long"),
        (_response(float("nan")), "finite"),
        (_response([1] * 3).replace(b"<int>1</int>", b"<int>1.5</int>", 1), "integer"),
        (_layout("<value><int>" + " " * (MAX_STRING + 1) + "7</int></value>\n"), "too long"),
        (_layout("<value><boolean>2</boolean></value>\n"), "boolean"),
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
    ],
)
def test_hostile_answers_in_the_agents_layout_are_refused(body: bytes, reason: str) -> None:
    assert wire._fast_value(body) is wire._GIVE_UP
    with pytest.raises(WireError) as refused:
        parse_response(body)
    assert reason in str(refused.value)


def test_fast_path_nesting_stays_within_the_tree_readers_limit() -> None:
    for depth in range(1, MAX_DEPTH):
        for shape in ("array", "struct"):
            value: Any = 1
            for _ in range(depth):
                value = [value] if shape == "array" else {"k": value}
            fast = _agrees(_response(value))
            assert (fast is wire._GIVE_UP) == (depth > wire._FAST_CONTAINERS)
    deep = _response(json_nested(60))
    assert _agrees(deep) is wire._GIVE_UP
    with pytest.raises(WireError, match="deep"):
        parse_response(deep)


def json_nested(depth: int) -> Any:
    value: Any = []
    for _ in range(depth):
        value = [value]
    return value


_any_text = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=40)


@settings(max_examples=150, deadline=None)
@given(_values)
def test_fast_path_reads_what_the_tree_reads(value: Any) -> None:
    body = _response(value)
    fast = _agrees(body)
    if b"&" not in body and b"\r" not in body and "\ufffe" not in body.decode() and "\uffff" not in body.decode():
        assert fast is not wire._GIVE_UP  # the layout is covered: no answer falls back without a reason


@settings(max_examples=150, deadline=None)
@given(_any_text, _any_text, st.sampled_from(["string", "int", "double", "boolean", "i8"]))
def test_fast_path_text_rules_match_expat(name: str, text: str, tag: str) -> None:
    body = _layout(
        f"<value><struct>\n<member>\n<name>{name}</name>\n<value><{tag}>{text}</{tag}></value>\n</member>\n"
        "</struct></value>\n"
    )
    _agrees(body)


@settings(max_examples=200, deadline=None)
@given(st.data())
def test_mutated_answers_never_make_the_fast_path_disagree(data: st.DataObject) -> None:
    body = bytearray(_response(good_answer()))
    for _ in range(data.draw(st.integers(1, 3))):
        position = data.draw(st.integers(0, len(body) - 1))
        action = data.draw(st.sampled_from(["replace", "insert", "delete"]))
        byte = data.draw(st.sampled_from(list(b"<>/&;!\r\n\x00\x01 ]0a.-")) | st.integers(0, 255))
        if action == "replace":
            body[position] = byte
        elif action == "insert":
            body.insert(position, byte)
        else:
            del body[position]
    _agrees(bytes(body))
