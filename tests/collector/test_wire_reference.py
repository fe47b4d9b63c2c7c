"""The answer reader against its reference, ``defusedxml.xmlrpc``: differential property tests.

The reference is expat through defusedxml's ``DefusedExpatParser`` (its defaults), unmarshalled by
``xmlrpc.client.Unmarshaller``, read as a response: one param, or a fault. For every document generated
here (answers of every shape ``xmlrpc.client.dumps`` writes, hand-built documents that bend the grammar,
and both of those mutated byte by byte and token by token):

- when :func:`secure_collector.wire.parse_response` accepts, the reference accepts with the same value
  (same types too: ``True`` is not ``1``, ``-0.0`` is not ``0.0``);
- when the reference accepts and our reader refuses, the refusal is one the reader's docstring lists
  (:data:`DELIBERATE`), never an accident.
"""

from __future__ import annotations

import math
import re
import xmlrpc.client
from typing import Any

from defusedxml.xmlrpc import DefusedExpatParser
from hypothesis import given, settings
from hypothesis import strategies as st

from secure_collector import wire
from secure_collector.wire import WireError, parse_response
from tests.collector.answers import good_answer, xmlrpc_values

REFUSED = ("refused", None)

DELIBERATE = re.compile(
    "|".join(
        re.escape(reason)
        for reason in (
            "not UTF-8",  # the bytes are UTF-8 and no declaration says otherwise
            "DTDs, entities, comments and CDATA are not accepted",
            "processing instructions are not accepted",
            "namespaces are not accepted",
            "not a methodResponse",  # the reference reads any root element
            "a response holds exactly one param",
            "malformed fault",
            "a fault is a struct of faultCode and faultString",  # typed, not just named
            "unsupported type",  # dateTime, base64, i1, i2, bigint, ex:nil ...
            "unexpected element",
            "expected <value>",
            "a value holds one type",
            "malformed struct member",  # the reference pairs up whatever it finds
            "duplicate struct member",  # the reference keeps the last
            "malformed array",  # the reference takes an array without <data>
            "text inside <nil/>",
            "not an integer",  # ASCII digits only
            "not a number",
            "not a finite number",
            "not a boolean",  # exactly 0 or 1, as the reference; what differs is white space it never strips
            "number too long",
            "string too long",
            "nested too deeply",
            "too many elements",
        )
    )
)


def reference(body: bytes) -> tuple[str, Any]:
    """What ``defusedxml.xmlrpc`` makes of ``body`` as an XML-RPC response."""
    unmarshaller = xmlrpc.client.Unmarshaller(use_builtin_types=True)
    parser = DefusedExpatParser(unmarshaller)
    try:
        parser.feed(body)
        parser.close()
        values = unmarshaller.close()
    except xmlrpc.client.Fault as fault:
        return ("fault", {"faultCode": fault.faultCode, "faultString": fault.faultString})
    except Exception:  # whatever the reference raises is its refusal
        return REFUSED
    if unmarshaller.getmethodname() is not None or len(values) != 1:
        return REFUSED
    return ("value", values[0])


def ours(body: bytes) -> tuple[str, Any]:
    try:
        answer = parse_response(body)
    except WireError as exc:
        return ("refused", str(exc))
    return ("fault" if answer.fault else "value", answer.value)


def same(a: Any, b: Any) -> bool:
    if type(a) is not type(b):
        return False
    if isinstance(a, float):
        return math.copysign(1.0, a) == math.copysign(1.0, b) and (a == b or (a != a and b != b))
    if isinstance(a, list):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    return bool(a == b)


def check(body: bytes) -> tuple[str, Any]:
    mine, theirs = ours(body), reference(body)
    if mine[0] != "refused":
        assert theirs[0] == mine[0], (body[:300], mine, theirs)
        assert same(mine[1], theirs[1]), (body[:300], mine, theirs)
    elif theirs[0] != "refused":
        assert DELIBERATE.search(mine[1]), (body[:300], mine[1], theirs)
    return mine


# -- documents -----------------------------------------------------------------------------------
_text = st.text(max_size=30)
_values = xmlrpc_values(_text, 4, 20)


def _dumps(value: Any) -> bytes:
    try:
        return xmlrpc.client.dumps((value,), methodresponse=True, allow_none=True).encode("utf-8", "surrogatepass")
    except (OverflowError, TypeError):
        return b""


_NUMBER_TEXT = st.text(
    alphabet=st.sampled_from([*"0123456789+-.eE _ \t\n", "\u0661", "\uff11", "\u00b2", "\u2003", "\u00a0"]),
    max_size=12,
) | st.sampled_from(["inf", "nan", "Infinity", "-1e999", "0x10", "1.5", "-7", "00", "+.5e-3"])
_TAGS = ["string", "int", "i4", "i8", "i1", "double", "boolean", "nil", "dateTime.iso8601", "base64", "ex:nil", "x"]


@st.composite
def _value_xml(draw: st.DrawFn, depth: int = 0) -> str:
    """A ``<value>`` element that bends the grammar: odd white space, untyped text, odd types and texts."""
    pad = draw(st.sampled_from(["", "", "", " ", "\n", "\r\n", "\t", "junk"]))
    kind = draw(st.sampled_from(["scalar", "untyped", "struct", "array", "empty"] if depth < 3 else ["scalar"]))
    if kind == "untyped":
        return f"<value>{draw(_xml_text)}</value>"
    if kind == "empty":
        return draw(
            st.sampled_from(["<value/>", "<value></value>", "<value><nil/></value>", "<value><struct/></value>"])
        )
    if kind == "struct":
        members = []
        for _ in range(draw(st.integers(0, 3))):
            name = draw(st.sampled_from(["a", "b", "a", "", "faultCode", "faultString"]))
            inner = draw(_value_xml(depth + 1))
            shape = draw(st.sampled_from(["ok", "ok", "ok", "swapped", "no-name", "two-values"]))
            if shape == "swapped":
                members.append(f"<member>{inner}<name>{name}</name></member>")
            elif shape == "no-name":
                members.append(f"<member>{inner}</member>")
            elif shape == "two-values":
                members.append(f"<member><name>{name}</name>{inner}{inner}</member>")
            else:
                members.append(f"<member>{pad}<name>{name}</name>{pad}{inner}{pad}</member>")
        return f"<value><struct>{pad.join(members)}</struct></value>"
    if kind == "array":
        items = pad.join(draw(_value_xml(depth + 1)) for _ in range(draw(st.integers(0, 3))))
        data = draw(st.booleans())
        return f"<value><array>{'<data>' if data else ''}{items}{'</data>' if data else ''}</array></value>"
    tag = draw(st.sampled_from(_TAGS[:6]) if draw(st.integers(0, 3)) else st.sampled_from(_TAGS))
    text = draw(_NUMBER_TEXT if tag in ("int", "i4", "i8", "i1", "double", "boolean") else _xml_text)
    if tag == "boolean":
        text = draw(st.sampled_from(["0", "1", " 1", "1 ", "true", "2", ""]))
    if tag == "nil" and draw(st.booleans()):
        return f"<value>{pad}<nil/>{pad}</value>"
    return f"<value>{pad}<{tag}>{text}</{tag}>{pad}</value>"


_xml_text = st.one_of(
    st.text(alphabet=st.characters(blacklist_categories=("Cs", "Cc"), blacklist_characters="<&"), max_size=12),
    st.text(alphabet=st.characters(blacklist_categories=("Cs", "Cc"), blacklist_characters="<&"), max_size=12),
    st.text(alphabet=st.characters(blacklist_categories=["Cs"], blacklist_characters="<&"), max_size=12),
    st.sampled_from(["&amp;", "&lt;", "&#65;", "&#x661;", "&#0;", "&bogus;", "a&b", "]]>", "\r\n", "\u2028"]),
)

_PROLOGS = [
    "<?xml version='1.0'?>\n",
    "",
    '<?xml version="1.0" encoding="UTF-8"?>',
    "<?xml version='1.0' encoding='latin-1'?>",
    "<?xml version='1.0' encoding='us-ascii'?>",
    "\ufeff<?xml version='1.0'?>",
    " <?xml version='1.0'?>",
    "<?xml version='1.0'?><?pi x?>",
    "<?xml version='1.0'?><!-- c -->",
    "<?xml version='1.0'?><!DOCTYPE methodResponse>",
]


@st.composite
def _documents(draw: st.DrawFn) -> bytes:
    prolog = draw(st.sampled_from(_PROLOGS[:3]) if draw(st.integers(0, 3)) else st.sampled_from(_PROLOGS))
    root = "methodResponse" if draw(st.integers(0, 5)) else draw(st.sampled_from(["methodCall", "x"]))
    section = draw(st.sampled_from(["params", "params", "params", "params", "fault", "params-two", "params-none"]))
    value = draw(_value_xml())
    if section == "fault":
        inner = f"<fault>{value}</fault>"
    elif section == "params-two":
        inner = f"<params><param>{value}</param><param>{value}</param></params>"
    elif section == "params-none":
        inner = "<params></params>"
    else:
        inner = f"<params><param>{value}</param></params>"
    encoding = "utf-8" if draw(st.integers(0, 7)) else draw(st.sampled_from(["latin-1", "utf-16"]))
    text = prolog + f"<{root}>{inner}</{root}>"
    try:
        return text.encode(encoding, "surrogatepass")
    except UnicodeEncodeError:
        return text.encode("utf-8", "surrogatepass")


_SNIPPETS = [
    b"<",
    b">",
    b"/",
    b"&",
    b";",
    b"!",
    b"\r",
    b"\n",
    b"\x00",
    b"\x01",
    b" ",
    b"]",
    b"0",
    b".",
    b"-",
    b"_",
    "\u0661".encode(),
    "\u00b2".encode(),
    b"\xff",
    b"<value>",
    b"</value>",
    b"<nil/>",
    b"<string>x</string>",
    b"<int>1</int>",
    b"<?pi?>",
    b"<!--c-->",
    b"<![CDATA[x]]>",
    b"&#65;",
    b" xmlns='u'",
    b"<p:x/>",
]


@st.composite
def _mutated(draw: st.DrawFn, base: st.SearchStrategy[bytes]) -> bytes:
    body = bytearray(draw(base))
    for _ in range(draw(st.integers(1, 2))):
        position = draw(st.integers(0, len(body)))
        action = draw(st.sampled_from(["insert", "replace", "delete"]))
        snippet = draw(st.sampled_from(_SNIPPETS) | st.binary(min_size=1, max_size=2))
        if action == "insert" or position == len(body):
            body[position:position] = snippet
        elif action == "replace":
            body[position : position + len(snippet)] = snippet
        else:
            del body[position : position + draw(st.integers(1, 8))]
    return bytes(body)


# -- the properties --------------------------------------------------------------------------------
@settings(max_examples=300, deadline=None)
@given(_values)
def test_every_answer_dumps_writes_is_read_as_the_reference_reads_it(value: Any) -> None:
    body = _dumps(value)
    mine = check(body)
    if body and "\ufffe" not in value.__repr__() and not _has_xml_illegal(body):
        assert mine[0] == "value"  # the agent's own layout of our types is never refused


def _has_xml_illegal(body: bytes) -> bool:
    text = body.decode("utf-8", "surrogatepass")
    illegal = {chr(c) for c in range(32)} - set("\t\n\r") | {"\ufffe", "\uffff"}
    return any(ch in illegal or 0xD800 <= ord(ch) < 0xE000 for ch in text)


@settings(max_examples=500, deadline=None)
@given(_documents())
def test_documents_that_bend_the_grammar_are_read_as_the_reference_reads_them_or_refused(body: bytes) -> None:
    check(body)


@settings(max_examples=400, deadline=None)
@given(_mutated(st.builds(_dumps, _values) | _documents() | st.just(_dumps(good_answer()))))
def test_mutated_answers_are_read_as_the_reference_reads_them_or_refused(body: bytes) -> None:
    check(body)


def test_the_reference_takes_what_we_refuse_on_purpose() -> None:
    """The deliberate refusals are real differences: the reference reads each of these."""
    cases = {"<int>\u0661\u0662</int>": 12, "<int>1_000</int>": 1000, "<double>1_0.5</double>": 10.5}
    for typed, value in cases.items():
        body = f"<methodResponse><params><param><value>{typed}</value></param></params></methodResponse>".encode()
        assert reference(body) == ("value", value)
        assert ours(body)[0] == "refused"


# -- the fast path for the agent's own layout, held to the same reference -------------------------------
def fast(body: bytes) -> tuple[str, Any]:
    """What the fast path alone makes of ``body`` (after parse_response's checks): a value, or it gives up."""
    try:
        wire.parse_response(body)  # the checks on the raw bytes come first, as in parse_response
    except WireError:
        return ("gave up", None)
    value = wire._fast_value(body)
    return ("gave up", None) if value is wire._GIVE_UP else ("value", value)


def tree(body: bytes) -> tuple[str, Any]:
    """What the tree reader alone makes of ``body``."""
    try:
        answer = wire._tree_answer(body)
    except WireError as exc:
        return ("refused", str(exc))
    return ("fault" if answer.fault else "value", answer.value)


def check_fast(body: bytes) -> str:
    """When the fast path reads ``body``, the reference and the tree reader read the same value."""
    mine = fast(body)
    if mine[0] == "value":
        for other in (reference(body), tree(body)):
            assert other[0] == "value", (body[:300], mine, other)
            assert same(mine[1], other[1]), (body[:300], mine, other)
    return mine[0]


def _plain(value: Any) -> bool:
    """Values whose text the layout writes without references, carriage returns or characters XML forbids."""
    if isinstance(value, str):
        return not any(ch in "&<>\r" or (ch < " " and ch not in "\t\n") or ch in "\ufffe\uffff" for ch in value) and (
            all(not 0xD800 <= ord(ch) < 0xE000 for ch in value) and "]]>" not in value
        )
    if isinstance(value, list):
        return all(_plain(item) for item in value)
    if isinstance(value, dict):
        return all(_plain(key) and _plain(item) for key, item in value.items())
    return True


@settings(max_examples=400, deadline=None)
@given(_values)
def test_the_fast_path_reads_the_agents_layout_as_the_reference_does(value: Any) -> None:
    body = _dumps(value)
    outcome = check_fast(body)
    if body and _plain(value) and _depth(value) <= 10:
        assert outcome == "value"  # it is really taken for the layout it exists for


def _depth(value: Any) -> int:
    if isinstance(value, list):
        return 1 + max((_depth(item) for item in value), default=0)
    if isinstance(value, dict):
        return 1 + max((_depth(item) for item in value.values()), default=0)
    return 0


@settings(max_examples=600, deadline=None)
@given(_mutated(st.builds(_dumps, _values) | st.just(_dumps(good_answer()))) | _documents())
def test_the_fast_path_never_reads_a_bent_or_mutated_answer_otherwise_than_the_reference(body: bytes) -> None:
    check_fast(body)


def test_the_fast_path_takes_a_real_answer() -> None:
    body = _dumps(good_answer())
    assert check_fast(body) == "value"
    assert check_fast(body.replace(b"<value><string>", b"<value> <string>", 1)) == "gave up"
