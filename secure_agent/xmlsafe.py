"""Parsing an XML-RPC call safely: defusedxml's expat parser, and caps on depth and element count.

DTDs (so every billion-laughs, quadratic-blowup and external-DTD attack), entity declarations and
external references are refused the moment expat reports them, before any expansion. The parser is
built here, per request; we never call defusedxml's global ``monkey_patch`` (that would change
``xmlrpc`` for the whole process). Nothing here opens a file or a connection.
"""

from __future__ import annotations

import xmlrpc.client
from typing import Any, Literal, NamedTuple
from xml.parsers.expat import ExpatError

from defusedxml.common import DefusedXmlException
from defusedxml.xmlrpc import DefusedExpatParser

DEFAULT_MAX_DEPTH = 32  # a call of ours is 4 deep; arrays and structs add 3 a level
DEFAULT_MAX_ELEMENTS = 2048

XMLRefusal = Literal["forbidden", "malformed", "too_deep", "too_many_elements", "not_a_call"]


class XMLRefused(Exception):
    """The body is not an acceptable XML-RPC call; ``reason`` is one word for the audit log."""

    def __init__(self, reason: XMLRefusal) -> None:
        super().__init__(reason)
        self.reason: XMLRefusal = reason


class Call(NamedTuple):
    method: str
    params: tuple[Any, ...]


class _BoundedUnmarshaller(xmlrpc.client.Unmarshaller):
    """xmlrpc's unmarshaller, counting elements and depth as expat reports them."""

    def __init__(self, max_depth: int, max_elements: int) -> None:
        super().__init__(use_datetime=False, use_builtin_types=False)
        self._max_depth = max_depth
        self._max_elements = max_elements
        self._depth = 0
        self._elements = 0

    def start(self, tag: str, attrs: dict[str, str]) -> None:
        if self._elements == 0 and tag != "methodCall":
            raise XMLRefused("not_a_call")
        self._depth += 1
        self._elements += 1
        if self._depth > self._max_depth:
            raise XMLRefused("too_deep")
        if self._elements > self._max_elements:
            raise XMLRefused("too_many_elements")
        super().start(tag, attrs)

    def end(self, tag: str) -> None:
        self._depth -= 1
        super().end(tag)


def parse_call(
    body: bytes, *, max_depth: int = DEFAULT_MAX_DEPTH, max_elements: int = DEFAULT_MAX_ELEMENTS
) -> Call:
    """The method name and parameters of an XML-RPC ``methodCall``, or :class:`XMLRefused`."""
    target = _BoundedUnmarshaller(max_depth, max_elements)
    parser = DefusedExpatParser(target, forbid_dtd=True, forbid_entities=True, forbid_external=True)
    try:
        parser.feed(body)
        parser.close()
        params = target.close()
    except XMLRefused:
        raise
    except DefusedXmlException:
        raise XMLRefused("forbidden") from None
    except xmlrpc.client.ResponseError:
        # no <params> element at all: some clients send none for a call without arguments
        if target.getmethodname() is None or target._marks or target._stack:
            raise XMLRefused("malformed") from None
        params = ()
    except (ExpatError, xmlrpc.client.Fault, ValueError, TypeError, KeyError, IndexError, OverflowError):
        # what the unmarshaller raises on bad values: bad ints, bad base64, stray tags, a fault as a call
        raise XMLRefused("malformed") from None
    method = target.getmethodname()
    if target._elements == 0 or method is None:
        raise XMLRefused("not_a_call")
    return Call(method, tuple(params))
