"""Why #4: text an agent chooses never breaks a line of output (status table, log records, metrics log).

A property test: hostile strings (newlines, carriage returns, ANSI and C1 controls, bidi overrides, line
separators, the characters next to NUL that XML still allows; ESC and other C0 controls cannot travel in
XML 1.0 at all, C1 controls can) go into every agent-controlled string of a
``get_metrics`` answer, written as XML character references so the parser hands them over exactly. The
answer then takes the collector's real path in-process (wire, validation, alerts, the file store with its
metrics log, the log formatter of ``secure-collector``, the ``--once`` status line), and every record of
every output must be one printable line.
"""

from __future__ import annotations

import copy
import io
import logging
import tempfile
from pathlib import Path
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from secure_collector import wire
from secure_collector.alerts import AlertEngine
from secure_collector.cli import OneLineFormatter, status_line
from secure_collector.config import Thresholds
from secure_collector.errors import AgentBadResponse
from secure_collector.sink import Delivery, PollResult, Recorder
from secure_collector.spool import Spool
from secure_collector.validate import AnswerInvalid, to_sample, validate_answer
from storage.file import FileStore
from tests.collector.answers import good_answer

PIECES = [
    "\n",
    "\r",
    "\r\n",
    "\x9b2J",  # C1 CSI: ANSI without ESC (XML 1.0 forbids ESC itself, not C1)
    "\x9d0;title\x9c",  # C1 OSC ... ST: sets a terminal's title
    "\x85",
    "\x9b31m",
    "\u2028",
    "\u2029",
    "\u202e",
    "\u2066",
    "\u200f",
    "\ufeff",
    "\t",
    "\x7f",
    "\ud7ff",
    "\ue000",
    "\U0010fffd",
    "\\x0a",
    " db-01 up 1.0 ms",
    "2024-01-01 00:00:00,000 WARNING secure_collector: forged",
    "ssh_bruteforce",
]
_XML_ALLOWED = st.characters(blacklist_categories=["Cs"]).filter(
    lambda ch: ch in "\t\n\r" or (ord(ch) >= 0x20 and ch not in "\ufffe\uffff")
)
HOSTILE = st.lists(st.sampled_from(PIECES) | st.text(_XML_ALLOWED, max_size=6), min_size=1, max_size=6).map("".join)

# where a hostile string can go: a path into the answer (``*`` = a dict key there); free text is kept
# (and escaped where printed), identifiers are held to patterns (and the answer refused)
FREE_TEXT = {
    ("temperature", "reason"),
    ("temperature", "sensor"),
    ("disks", 0, "mount"),
    ("disks", 0, "device"),
    ("disks", 0, "fstype"),
    ("security", "findings", 0, "summary"),
    ("security", "findings", 1, "summary"),
    ("security", "findings", 0, "evidence", "address"),
    ("unavailable", "cpu_temperature"),
    ("*",),
    ("memory", "*"),
}
FIELDS = [
    ("version",),
    ("temperature", "reason"),
    ("temperature", "sensor"),
    ("disks", 0, "mount"),
    ("disks", 0, "device"),
    ("disks", 0, "fstype"),
    ("security", "findings", 0, "kind"),
    ("security", "findings", 0, "summary"),
    ("security", "findings", 1, "summary"),
    ("security", "findings", 0, "evidence", "address"),
    ("security", "findings", 1, "evidence", "*"),
    ("unavailable", "*"),
    ("unavailable", "cpu_temperature"),
    ("*",),
    ("memory", "*"),
]


def _inject(path: tuple[Any, ...], text: str) -> dict[str, Any]:
    answer = copy.deepcopy(good_answer())
    target: Any = answer
    for key in path[:-1]:
        target = target[key]
    if path[-1] == "*":
        target[text] = "x"
    else:
        target[path[-1]] = text
    return answer


def _xml(value: Any) -> str:
    """XML-RPC markup in which every character that is not plain printable ASCII is a character reference."""
    if value is None:
        return "<value><nil/></value>"
    if isinstance(value, bool):
        return f"<value><boolean>{int(value)}</boolean></value>"
    if isinstance(value, int):
        return f"<value><int>{value}</int></value>"
    if isinstance(value, float):
        return f"<value><double>{value!r}</double></value>"
    if isinstance(value, str):
        return f"<value><string>{_text(value)}</string></value>"
    if isinstance(value, list):
        return "<value><array><data>" + "".join(_xml(v) for v in value) + "</data></array></value>"
    members = "".join(f"<member><name>{_text(k)}</name>{_xml(v)}</member>" for k, v in value.items())
    return f"<value><struct>{members}</struct></value>"


def _text(text: str) -> str:
    return "".join(ch if 0x20 < ord(ch) < 0x7F and ch not in "<>&" else f"&#{ord(ch)};" for ch in text)


def _body(answer: dict[str, Any]) -> bytes:
    document = f"<methodResponse><params><param>{_xml(answer)}</param></params></methodResponse>"
    return document.encode()


def _one_line(text: str) -> bool:
    return text.isprintable() and len(text.splitlines()) <= 1


@settings(max_examples=150, deadline=None)
@given(st.sampled_from(FIELDS), HOSTILE)
def test_hostile_text_in_any_field_stays_one_line_everywhere(path: tuple[Any, ...], text: str) -> None:
    answer = _inject(path, text)
    parsed = wire.parse_response(_body(answer)).value
    assert parsed == answer  # the hostile string reached the collector exactly as the agent chose it
    try:
        sample = to_sample(validate_answer(parsed, "localhost"), 1_800_000_000.0)
        result = PollResult("localhost", 1_800_000_000.0, "up", "", 3.0, sample)
    except AnswerInvalid as exc:
        assert path not in FREE_TEXT, exc
        error = AgentBadResponse("localhost", str(exc))
        result = PollResult("localhost", 1_800_000_000.0, error.state, error.detail, 3.0)

    records: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    keep = Keep()
    logger = logging.getLogger("secure_collector")
    logger.addHandler(keep)
    previous = logger.level
    logger.setLevel(logging.INFO)
    try:
        with tempfile.TemporaryDirectory() as scratch:
            folder = Path(scratch)
            store = FileStore(folder / "metrics.json", metrics_file=folder / "metrics.log", fsync=False)
            recorder = Recorder(Delivery(store, Spool(folder / "spool", 1024 * 1024)), AlertEngine(Thresholds()))
            recorder.add(result)
            recorder.flush()
            store.close()
            human = (folder / "metrics.log").read_bytes().decode()
            written = len(FileStore(folder / "metrics.json", readonly=True).query_alerts(0, 2e9))
    finally:
        logger.removeHandler(keep)
        logger.setLevel(previous)

    line = status_line(result, 8)
    assert _one_line(line), line
    formatter = OneLineFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
    for record in records:
        assert _one_line(record.getMessage()), record.getMessage()  # escaped where it was logged
        assert _one_line(formatter.format(record))
    lines = human.split("\n")
    assert lines[-1] == ""
    assert len(lines) - 1 == (1 if result.sample else 0) + written  # one line per sample and per alert
    assert all(_one_line(h) for h in lines[:-1])
    if result.sample is None:
        assert _one_line(result.detail)  # the validation error escaped the field path it quotes


def test_a_formatter_line_cannot_be_forged_even_by_a_site_that_forgot_to_escape() -> None:
    record = logging.LogRecord("secure_collector.x", logging.INFO, __file__, 1, "%s", ("a\nb\x1b[2J\u202e",), None)
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(OneLineFormatter("%(levelname)s %(message)s"))
    handler.emit(record)
    assert out.getvalue() == "INFO a\\x0ab\\x1b[2J\\u202e\n"
