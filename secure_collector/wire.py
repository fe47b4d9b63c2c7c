"""XML-RPC on the collector's side: pre-built request bodies and a strict parser for untrusted answers.

Two decisions matter:

- **Hostile XML is refused on the raw bytes, before any tree exists**: anything holding ``<!`` (so no DTD,
  hence no entity can be declared), NUL bytes, byte order marks, an encoding other than UTF-8, any
  processing instruction. This is what defusedxml's ``forbid_dtd`` enforces, decided once instead of in a
  callback. The tree is then read strictly: only the XML-RPC types we send, ASCII digits only, no duplicate
  struct keys, no non-finite numbers, bounded elements, depth and strings.
- **A fast path for our own layout** (:func:`_fast_value`): an agent's answer is what ``xmlrpc.client.dumps``
  writes, so two regular expression passes and a loop read it without building a tree; on anything else it
  gives up and the tree reader decides (docs/fast-paths.md).

The reference is ``defusedxml.xmlrpc``: whatever either reader accepts, the reference accepts with the same
value, and what the reference accepts that they refuse is one of the refusals above
(tests/collector/test_wire_reference.py). docs/hostile-inputs.md lists the inputs.
"""

from __future__ import annotations

import re
import xmlrpc.client
from typing import Any, Final, NamedTuple
from xml.etree.ElementTree import Element, ParseError, XMLParser
from xml.parsers.expat import errors as expat_errors

MAX_ELEMENTS = 100_000
MAX_DEPTH = 32
MAX_STRING = 16_384
"""Audit records (``get_audit``) are at most 16 KiB lines; other strings are at most 512 characters (validated
later): this cap only bounds work before validation."""
MAX_NUMBER_TEXT = 40


class WireError(ValueError):
    """The answer is not a well-formed XML-RPC response of the types we accept."""


class Answer(NamedTuple):
    """A parsed ``methodResponse``: the single value, or the fault struct when ``fault`` is True."""

    value: Any
    fault: bool


def request_body(method: str, *params: Any) -> bytes:
    """The XML-RPC body of a call (one without parameters is built once and reused for every call)."""
    return xmlrpc.client.dumps(params, method, encoding="utf-8").encode("utf-8")


def parse_response(body: bytes) -> Answer:
    """Parse an XML-RPC ``methodResponse``; raise :class:`WireError` on anything else."""
    if b"\x00" in body or body[:2] in (b"\xff\xfe", b"\xfe\xff"):
        # expat honours a UTF-16 byte order mark even over a forced encoding, and there "<!" is "<\0!\0"
        raise WireError("malformed XML (not UTF-8)")
    if b"<!" in body:
        raise WireError("DTDs, entities, comments and CDATA are not accepted")
    if body.count(b"<") > 2 * MAX_ELEMENTS:
        raise WireError("too many elements")
    _check_declaration(body)
    value = _fast_value(body)
    if value is not _GIVE_UP:
        return Answer(value, False)
    return _tree_answer(body)


def _tree_answer(body: bytes) -> Answer:
    """The reader for any layout, after :func:`parse_response`'s checks on the raw bytes."""
    # S314: no "<!" and a forced encoding mean no DTD and so no entity declaration (module docstring)
    parser = XMLParser(encoding="utf-8")  # noqa: S314 - also overrides any encoding the document declares
    try:
        parser.feed(body)
        root = parser.close()
    except ParseError as exc:
        if exc.code == _UNBOUND_PREFIX:  # a prefix without its xmlns: the reference would read on
            raise WireError("namespaces are not accepted") from None
        raise WireError(f"malformed XML (line {exc.position[0]})") from None
    except (ValueError, LookupError) as exc:
        raise WireError(f"not XML-RPC ({type(exc).__name__})") from None
    if root.tag != "methodResponse" or len(root) != 1:
        raise WireError("not a methodResponse")
    section = root[0]
    if section.tag == "params":
        if len(section) != 1 or section[0].tag != "param" or len(section[0]) != 1:
            raise WireError("a response holds exactly one param")
        return Answer(_value(section[0][0], 4), False)
    if section.tag == "fault":
        if len(section) != 1:
            raise WireError("malformed fault")
        value = _value(section[0], 3)
        if (
            not isinstance(value, dict)
            or value.keys() != {"faultCode", "faultString"}
            or type(value["faultCode"]) is not int
            or type(value["faultString"]) is not str
        ):
            raise WireError("a fault is a struct of faultCode and faultString")
        return Answer(value, True)
    raise WireError("not a methodResponse")


_DECLARATION = re.compile(rb"(?:\xef\xbb\xbf)?<\?xml[ \t\r\n]([^>]*)\?>")
_ENCODING = re.compile(rb"encoding[ \t\r\n]*=[ \t\r\n]*(?:\"([^\"]*)\"|'([^']*)')")
_INTEGER = re.compile(r"[ \t\n\r]*[+-]?[0-9]+[ \t\n\r]*")
_DOUBLE = re.compile(r"[ \t\n\r]*[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?[ \t\n\r]*")
"""What ``repr(float)`` writes for finite numbers, and XML-RPC's own ``[+-]digits.digits``: ASCII only."""


def _check_declaration(body: bytes) -> None:
    """Refuse an encoding other than UTF-8 named in the XML declaration, and every other ``<?``."""
    declaration = _DECLARATION.match(body)
    start = 0
    if declaration is not None:
        encoding = _ENCODING.search(declaration.group(1))
        if encoding is not None and (encoding.group(1) or encoding.group(2) or b"").lower() != b"utf-8":
            raise WireError("malformed XML (not UTF-8)")
        start = declaration.end()
    if body.find(b"<?", start) >= 0:
        raise WireError("processing instructions are not accepted")


def _text(element: Element) -> str:
    if len(element):
        raise WireError(f"unexpected element inside <{_tag(element)}>")
    text = element.text
    if text is None:
        return ""
    if len(text) > MAX_STRING:
        raise WireError("string too long")
    return text


def _value(element: Element, depth: int) -> Any:
    """The value of a ``<value>`` element."""
    if element.tag != "value":
        raise WireError(f"expected <value>, found <{_tag(element)}>")
    if not len(element):
        return _text(element)  # <value>text</value> is a string
    typed = element[0]
    if len(element) != 1 or len(typed):
        return _container(element, typed, depth)
    tag = typed.tag
    text = typed.text
    if tag == "string":  # the common leaves first, inline: this loop is most of the reader's Python time
        if text is None:
            return ""
        if len(text) > MAX_STRING:
            raise WireError("string too long")
        return text
    if tag == "double" and text is not None and len(text) <= MAX_NUMBER_TEXT and _DOUBLE.fullmatch(text):
        number = float(text)
        if number - number == 0.0:
            return number
    if tag == "nil":
        if text is not None and text.strip():
            raise WireError("text inside <nil/>")
        return None
    if tag == "struct":
        return {}
    if tag == "array":
        raise WireError("malformed array")
    return _scalar(tag, text or "", typed)


_NON_FINITE = ("nan", "inf", "infinity")
_UNBOUND_PREFIX = expat_errors.codes[expat_errors.XML_ERROR_UNBOUND_PREFIX]


def _scalar(tag: str, text: str, element: Element | None = None) -> Any:
    """The value of a leaf ``<tag>text</tag>``."""
    if tag == "string":
        if len(text) > MAX_STRING:
            raise WireError("string too long")
        return text
    if tag == "double":
        if len(text) > MAX_NUMBER_TEXT or _DOUBLE.fullmatch(text) is None:
            finite = text.strip().lower().lstrip("+-") not in _NON_FINITE
            raise WireError("not a number" if finite else "not a finite number")
        number = float(text)
        if number - number != 0.0:  # 1e999 is inf, and inf - inf is nan
            raise WireError("not a finite number")
        return number
    if tag == "int" or tag == "i4" or tag == "i8":
        if len(text) > MAX_STRING:
            raise WireError("string too long")
        if _INTEGER.fullmatch(text) is None:
            raise WireError("not an integer")
        if len(text.strip()) > MAX_NUMBER_TEXT:
            raise WireError("number too long")
        return int(text)
    if tag == "boolean":
        if text != "0" and text != "1":  # exactly, as xmlrpc.client reads it
            raise WireError("not a boolean")
        return text == "1"
    raise WireError(f"unsupported type <{_tag(element) if element is not None else '?'}>")


def _container(element: Element, typed: Element, depth: int) -> Any:
    """A ``<value>`` holding a ``struct`` or an ``array`` (or something malformed)."""
    if len(element) != 1:
        raise WireError("a value holds one type")
    if depth > MAX_DEPTH:
        raise WireError("nested too deeply")
    tag = typed.tag
    if tag == "struct":
        result: dict[str, Any] = {}
        inner = depth + 2
        for member in typed:
            if member.tag != "member" or len(member) != 2:
                raise WireError("malformed struct member")
            name_element, value_element = member
            if name_element.tag != "name" or len(name_element):
                raise WireError("malformed struct member")
            name = name_element.text or ""
            if name in result:
                raise WireError("duplicate struct member")
            if len(name) > MAX_STRING:
                raise WireError("string too long")
            result[name] = _value(value_element, inner)
        return result
    if tag == "array":
        if len(typed) != 1 or typed[0].tag != "data":
            raise WireError("malformed array")
        inner = depth + 3
        return [_value(item, inner) for item in typed[0]]
    raise WireError(f"unexpected element inside <{_tag(typed)}>")


def _tag(element: Element) -> str:
    return "".join(ch if ch.isalnum() or ch in ".:-_" else "?" for ch in str(element.tag)[:32])


# -- the fast path: the layout xmlrpc.client.dumps writes (module docstring) -----------------------------
_FAST_PROLOG: Final = b"<?xml version='1.0'?>\n<methodResponse>\n<params>\n<param>\n"
_FAST_EPILOG: Final = b"</param>\n</params>\n</methodResponse>\n"
_FAST_CONTAINERS: Final = (MAX_DEPTH - 4) // 3 + 1
"""Open structs and arrays at most: even as nested arrays (3 levels each) the tree reader allows them."""
_MEMBER_END: Final = "</member>\n"
_STRUCT: Final = "<value><struct>\n"
_STRUCT_END: Final = "</struct></value>\n"
_ARRAY: Final = "<value><array><data>\n"
_ARRAY_END: Final = "</data></array></value>\n"
_TEXT = r"[^<&\r\x00-\x08\x0b\x0c\x0e-\x1f\ufffe\uffff]*"
"""Character data without markup, references, carriage returns or characters XML 1.0 forbids."""
_TYPES = ("string", "int", "i4", "i8", "double", "boolean")
_TYPE = "(" + "|".join(_TYPES) + ")"
_MARKS = "|".join(re.escape(mark) for mark in (_MEMBER_END, _STRUCT, _STRUCT_END, _ARRAY, _ARRAY_END))
# The tokens, alternatives factored by their common prefixes (sre tries them in order). Groups:
#  1 name, 2 type, 3 text   <member><name>N</name><value><T>X</T></value></member>
#  1 name, 4 marker         <member><name>N</name><value><nil/></value></member>
#  1 name, nothing else     <member><name>N</name>   (a struct or array follows)
#  5 type, 6 text           <value><T>X</T></value>  (an array item)
#  7 marker                 <value><nil/></value>    (an array item)
#  8 mark                   <value><struct>  <value><array><data>
#  9 mark                   </member>  </struct></value>  </data></array></value>
_FAST_TOKEN = re.compile(
    rf"<(?:member>\n<name>({_TEXT})</name>\n"
    rf"(?:<value><{_TYPE}>({_TEXT})</\2></value>\n</member>\n|<value><nil/></value>(</member>)\n|)"
    rf"|value>(?:<{_TYPE}>({_TEXT})</\5></value>\n|(<nil/>)</value>|(<struct>\n|<array><data>\n))"
    r"|(/member>\n|/struct></value>\n|/data></array></value>\n))"
)
_LEAF = "(?:" + "|".join(f"<{tag}>{_TEXT}</{tag}>" for tag in _TYPES) + ")"
# The same tokens without groups, in a row from the first byte to the last: what makes findall's
# tokens the whole document (findall alone would skip what matches no token).
_FAST_WHOLE = re.compile(
    rf"(?:<member>\n<name>{_TEXT}</name>\n(?:<value>{_LEAF}</value>\n</member>\n|<value><nil/></value></member>\n|)"
    rf"|<value>{_LEAF}</value>\n"
    r"|<value><nil/></value>"
    rf"|{_MARKS})*+"
)
_GIVE_UP: Final = object()
_DONE: Final = object()


def _fast_value(body: bytes) -> Any:
    """The answer's value if ``body`` is in the layout of ``xmlrpc.client.dumps``; else :data:`_GIVE_UP`."""
    if not body.startswith(_FAST_PROLOG) or not body.endswith(_FAST_EPILOG):
        return _GIVE_UP
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        return _GIVE_UP
    if "]]>" in text:
        return _GIVE_UP
    start, end = len(_FAST_PROLOG), len(text) - len(_FAST_EPILOG)  # ASCII: as many characters as bytes
    if _FAST_WHOLE.fullmatch(text, start, end) is None:
        return _GIVE_UP  # something other than the layout's tokens, in a row
    stack: list[tuple[Any, Any]] = []
    container: Any = None  # the innermost open struct (dict) or array (list); None outside both
    key: Any = None  # in a struct: the pending member's name, _DONE once its value is in, None between
    result: Any = _GIVE_UP
    try:
        for name, type_, leaf, nil_member, item_type, item, nil_item, opening, closing in _FAST_TOKEN.findall(
            text, start, end
        ):
            if type_ or nil_member or not (item_type or nil_item or opening or closing):  # a member
                if key is not None or type(container) is not dict or name in container or len(name) > MAX_STRING:
                    return _GIVE_UP
                if type_:
                    container[name] = _scalar(type_, leaf)
                elif nil_member:
                    container[name] = None
                else:
                    key = name  # its value follows
                continue
            if item_type:
                value = _scalar(item_type, item)
            elif nil_item:
                value = None
            elif opening:
                if len(stack) >= _FAST_CONTAINERS:
                    return _GIVE_UP
                stack.append((container, key))
                container = {} if opening == "<struct>\n" else []
                key = None
                continue
            elif closing == "/member>\n":
                if key is not _DONE:
                    return _GIVE_UP
                key = None
                continue
            else:  # the end of a struct or an array
                if key is not None or type(container) is not (dict if closing == "/struct></value>\n" else list):
                    return _GIVE_UP
                value = container
                container, key = stack.pop()
            if type(container) is dict:
                if key is None or key is _DONE:
                    return _GIVE_UP
                container[key] = value
                key = _DONE
            elif type(container) is list:
                container.append(value)
            elif result is _GIVE_UP:
                result = value
            else:
                return _GIVE_UP
    except WireError:
        return _GIVE_UP  # the tree reader says why
    return _GIVE_UP if stack else result
