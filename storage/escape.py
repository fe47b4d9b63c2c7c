"""One function that makes text an agent chose safe for a line of output: :func:`escape`.

Every place that prints or logs text from an agent (the ``--once`` status table, log records, the human
metrics log, alert messages) passes it through :func:`escape`, so one record stays one line and nothing
reaches a terminal that could move its cursor, recolour it or reorder what it shows. It lives in
:mod:`storage` because both the collector and the file backend's metrics log need it, and ``storage``
imports no other package of ours.

Decisions:

- Everything :meth:`str.isprintable` refuses is escaped: C0 and C1 controls (``\\n``, ``\\r``, ESC,
  NEL ``\\x85``), line and paragraph separators, bidirectional overrides and isolates and every other
  format character (Cf), spaces other than U+0020, surrogates, private-use and unassigned code points.
  Python's :meth:`str.splitlines` finds no break in the result, and neither does any terminal.
- The backslash itself is **not** escaped. That makes :func:`escape` idempotent (escaping twice is
  escaping once), so text escaped where it was made (an error detail) can be escaped again where it is
  printed without turning ``\\x0a`` into ``\\\\x0a``. The price: an agent's literal ``\\x0a`` reads like an
  escaped newline; it still cannot break a line.
"""

from __future__ import annotations

ELLIPSIS = "..."


def _escape_char(ch: str) -> str:
    code = ord(ch)
    if code < 0x100:
        return f"\\x{code:02x}"
    if code < 0x10000:
        return f"\\u{code:04x}"
    return f"\\U{code:08x}"


def escape(text: str, limit: int | None = None) -> str:
    """``text`` with every non-printable character written as a ``\\x``/``\\u``/``\\U`` escape.

    With ``limit``, at most that many characters of ``text`` are kept (before escaping), and a cut is
    marked with ``...``.
    """
    if limit is not None and len(text) > limit:
        text = text[:limit] + ELLIPSIS
    if text.isprintable():
        return text
    return "".join(ch if ch.isprintable() else _escape_char(ch) for ch in text)
