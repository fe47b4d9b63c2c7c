"""XML-RPC on the collector's side: pre-built request bodies and a strict parser for untrusted answers.

The answer is parsed by defusedxml's expat parser with DTDs, entity declarations and external references
forbidden (never through ``defusedxml.xmlrpc.monkey_patch``, which would change the whole process). The
target that builds values is ours and accepts only what docs/protocol.md uses: ``methodResponse`` with one
``param`` or a ``fault``, and ``string``, ``int``/``i4``/``i8``, ``double``, ``boolean``, ``nil``, ``struct``,
``array``. ``dateTime``, ``base64``, extension types and unknown tags are refused, as are duplicate struct
keys, non-finite numbers, more than :data:`MAX_ELEMENTS` elements, nesting deeper than :data:`MAX_DEPTH`
and any string longer than :data:`MAX_STRING` characters. The size cap is the transport's.
"""

from __future__ import annotations

import math
import xmlrpc.client
from typing import Any, NamedTuple
from xml.parsers.expat import ExpatError, errors

from defusedxml.common import DefusedXmlException
from defusedxml.xmlrpc import DefusedExpatParser

MAX_ELEMENTS = 100_000
MAX_DEPTH = 32
MAX_STRING = 4096
"""Protocol strings are at most 512 characters; this cap only bounds work before validation."""
MAX_NUMBER_TEXT = 40


class WireError(ValueError):
    """The answer is not a well-formed XML-RPC response of the types we accept."""


class Answer(NamedTuple):
    """A parsed ``methodResponse``: the single value, or the fault struct when ``fault`` is True."""

    value: Any
    fault: bool


def request_body(method: str) -> bytes:
    """The XML-RPC body of a call without parameters (built once, reused for every call)."""
    return xmlrpc.client.dumps((), method, encoding="utf-8").encode("utf-8")


_STRUCTURE = frozenset({"methodResponse", "params", "param", "data", "member", "fault"})


class _Builder:
    """An expat target that builds the one value of a response with a stack of open containers."""

    __slots__ = ("_buffer", "_count", "_depth", "_frames", "_names", "_typed", "fault")

    def __init__(self) -> None:
        self._frames: list[list[Any] | dict[str, Any]] = [[]]
        self._names: list[str | None] = [None]
        self._buffer: list[str] = []
        self._typed = True
        self._count = 0
        self._depth = 0
        self.fault = False

    # -- the ExpatParser target interface --------------------------------------------------------
    def xml(self, encoding: str | None, standalone: object) -> None:
        """The XML declaration: nothing to do (expat has already chosen the decoder)."""

    def data(self, text: str) -> None:
        self._buffer.append(text)

    def start(self, tag: str, attrs: object) -> None:
        self._count += 1
        self._depth += 1
        if self._count > MAX_ELEMENTS or self._depth > MAX_DEPTH:
            raise WireError("too many or too deeply nested elements")
        self._buffer = []
        if self._count == 1 and tag != "methodResponse":
            raise WireError("not a methodResponse")
        if tag == "value":
            self._typed = False
            return
        self._typed = True
        if tag == "struct":
            self._frames.append({})
            self._names.append(None)
        elif tag == "array":
            self._frames.append([])
            self._names.append(None)
        elif tag == "fault":
            if self._count != 2:
                raise WireError("misplaced fault")
            self.fault = True
        elif tag == "methodResponse":
            if self._count != 1:
                raise WireError("misplaced methodResponse")
        elif tag not in _LEAVES and tag not in _STRUCTURE:
            raise WireError("unsupported element")

    def end(self, tag: str) -> None:
        self._depth -= 1
        handler = _END.get(tag)
        if handler is not None:
            handler(self)

    # -- value handling --------------------------------------------------------------------------
    def _text(self) -> str:
        text = "".join(self._buffer)
        if len(text) > MAX_STRING:
            raise WireError("string too long")
        return text

    def _emit(self, value: Any) -> None:
        frame = self._frames[-1]
        if type(frame) is dict:
            name = self._names[-1]
            if name is None:
                raise WireError("struct value without a name")
            if name in frame:
                raise WireError("duplicate struct member")
            frame[name] = value
            self._names[-1] = None
        else:
            frame.append(value)  # type: ignore[union-attr]

    def _end_value(self) -> None:
        if not self._typed:  # <value>text</value> is a string
            self._emit(self._text())
        self._typed = True

    def _end_string(self) -> None:
        self._emit(self._text())

    def _end_name(self) -> None:
        if type(self._frames[-1]) is not dict or self._names[-1] is not None:
            raise WireError("misplaced member name")
        self._names[-1] = self._text()

    def _end_int(self) -> None:
        text = "".join(self._buffer).strip()
        if len(text) > MAX_NUMBER_TEXT:
            raise WireError("integer too long")
        try:
            self._emit(int(text))
        except ValueError:
            raise WireError("not an integer") from None

    def _end_double(self) -> None:
        text = "".join(self._buffer).strip()
        if len(text) > MAX_NUMBER_TEXT:
            raise WireError("number too long")
        try:
            number = float(text)
        except ValueError:
            raise WireError("not a number") from None
        if not math.isfinite(number):
            raise WireError("not a finite number")
        self._emit(number)

    def _end_boolean(self) -> None:
        text = "".join(self._buffer).strip()
        if text not in ("0", "1"):
            raise WireError("not a boolean")
        self._emit(text == "1")

    def _end_nil(self) -> None:
        self._emit(None)

    def _end_container(self) -> None:
        if self._names.pop() is not None:
            raise WireError("struct member without a value")
        container = self._frames.pop()
        if len(self._frames) < 1:
            raise WireError("unbalanced containers")
        self._emit(container)

    def result(self) -> Answer:
        if len(self._frames) != 1 or len(self._frames[0]) != 1:
            raise WireError("a response holds exactly one value")
        (value,) = self._frames[0]
        if self.fault and not isinstance(value, dict):
            raise WireError("a fault is a struct")
        return Answer(value, self.fault)


_LEAVES = frozenset({"string", "name", "int", "i4", "i8", "double", "boolean", "nil"})
_END = {
    "value": _Builder._end_value,
    "string": _Builder._end_string,
    "name": _Builder._end_name,
    "int": _Builder._end_int,
    "i4": _Builder._end_int,
    "i8": _Builder._end_int,
    "double": _Builder._end_double,
    "boolean": _Builder._end_boolean,
    "nil": _Builder._end_nil,
    "struct": _Builder._end_container,
    "array": _Builder._end_container,
}


def parse_response(body: bytes) -> Answer:
    """Parse an XML-RPC ``methodResponse``; raise :class:`WireError` on anything else."""
    builder = _Builder()
    # Whitespace between tags is insignificant in XML-RPC, and ">\n<" cannot occur inside text (a raw
    # "<" is not allowed there), so dropping it halves the parser's callbacks without changing a value.
    body = body.replace(b">\n<", b"><")
    parser = DefusedExpatParser(builder, forbid_dtd=True, forbid_entities=True, forbid_external=True)
    try:
        parser.feed(body)
        parser.close()
    except WireError:
        raise
    except DefusedXmlException:
        raise WireError("DTDs and entities are not accepted") from None
    except ExpatError as exc:
        raise WireError(f"malformed XML ({errors.messages.get(exc.code, 'error')})") from None
    except (ValueError, TypeError) as exc:  # e.g. an encoding expat cannot decode
        raise WireError(f"not XML-RPC ({type(exc).__name__})") from None
    return builder.result()
