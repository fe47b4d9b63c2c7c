"""Making untrusted text and numbers safe for the wire and for the people who read them.

Paths, process names and user names come from hostile sources (an attacker chooses the name of the
binary they drop in /tmp, or the user name they try over SSH). Everything that leaves a probe as text goes
through :func:`clean_text`: non-printable characters (controls, format characters such as bidi overrides,
lone surrogates left by undecodable file names) become visible escapes, so the text is valid XML, cannot
forge lines in a log, and cannot spoof what a dashboard shows. Integers that XML-RPC cannot carry
(it has 32-bit ``int`` only) become floats.
"""

from __future__ import annotations

from pathlib import Path

MAX_TEXT = 512
"""The collector refuses longer strings (docs/protocol.md), so nothing longer leaves the agent."""

INT32_MAX = 2**31 - 1
INT32_MIN = -(2**31)
_ELLIPSIS = "..."
_SURROGATE_ESCAPE_FIRST = 0xDC80
_SURROGATE_ESCAPE_LAST = 0xDCFF


def _escape(char: str) -> str:
    code = ord(char)
    if _SURROGATE_ESCAPE_FIRST <= code <= _SURROGATE_ESCAPE_LAST:
        # a byte that was not UTF-8 in a file name (os.fsdecode's surrogateescape): show the byte
        return f"\\x{code - 0xDC00:02x}"
    if code <= 0xFF:
        return f"\\x{code:02x}"
    if code <= 0xFFFF:
        return f"\\u{code:04x}"
    return f"\\U{code:08x}"


def clean_text(value: str, limit: int = MAX_TEXT) -> str:
    """Return ``value`` with every non-printable character escaped, cut to at most ``limit`` characters."""
    if not value.isprintable():
        value = "".join(char if char.isprintable() else _escape(char) for char in value)
    if len(value) > limit:
        value = value[: max(0, limit - len(_ELLIPSIS))] + _ELLIPSIS
    return value


def clean_path(path: str | Path, limit: int = MAX_TEXT) -> str:
    return clean_text(str(path), limit)


def wire_int(value: int) -> int | float:
    """``value`` as an int when XML-RPC can carry it, else as a float."""
    if INT32_MIN <= value <= INT32_MAX:
        return value
    return float(value)
