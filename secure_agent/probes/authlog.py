"""Parse sshd authentication failures out of auth-log lines, without trusting what the client chose.

Recognised (daemon ``sshd``, ``sshd-session`` or ``sshd-auth``; syslog ``May  1 12:34:56`` or ISO-8601
timestamps; IPv4 and IPv6 sources; rsyslog's ``message repeated N times: [ ... ]`` counts N):

- ``Failed password for [invalid user] USER from ADDR port N ssh2`` (also keyboard-interactive/pam, none)
- ``Invalid user USER from ADDR [port N]`` (``Illegal user`` on old releases)
- ``pam_unix(sshd:auth): authentication failure; logname= uid=0 euid=0 tty=ssh ruser= rhost=ADDR  user=USER``
- ``error: PAM: Authentication failure for [illegal user] USER from ADDR``

The user name is chosen by the client and may contain anything, including `` from 1.2.3.4 port 22 ssh2``.
So the source is never searched for: sshd writes the user name *before* the source, and the source is
taken only from the fixed trailing part (after the last `` from ``, which must be exactly
``ADDR port N ssh2``), or, in the PAM line, from the fixed field sequence before ``user=``. A line that
does not fit exactly is not counted. The address must be an IP literal: a host name came from DNS,
which whoever controls the source's reverse zone controls.
"""

from __future__ import annotations

import ipaddress
import re
from datetime import datetime
from typing import Literal, NamedTuple

from secure_agent.probes._text import clean_text

MAX_LINE = 4096
"""Longer lines are not sshd's (its user names are short); they are skipped unparsed."""

MAX_USER = 64
EventKind = Literal["failed_password", "invalid_user", "pam_failure"]

_DAEMON = r"(?:sshd|sshd-session|sshd-auth)(?:\[\d{1,10}\])?: "
_SYSLOG = re.compile(
    r"(?P<month>[A-Z][a-z]{2}) {1,2}(?P<day>\d{1,2}) (?P<clock>\d\d:\d\d:\d\d)(?:\.\d{1,9})? \S+ " + _DAEMON
)
_ISO = re.compile(
    r"(?P<date>\d{4}-\d\d-\d\d)[T ](?P<clock>\d\d:\d\d:\d\d)(?P<fraction>\.\d{1,9})?"
    r"(?P<zone>Z|[+-]\d\d:?\d\d)? \S+ " + _DAEMON
)
_MONTHS = {name: index for index, name in enumerate(
    ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"), start=1
)}
_REPEATED = re.compile(r"message repeated (?P<times>\d{1,6}) times: \[ ?(?P<message>.*)\]")

_FAILED_HEAD = re.compile(r"Failed (?:password|keyboard-interactive/pam|none) for (?:invalid user )?(?P<user>.*)")
_INVALID_HEAD = re.compile(r"(?:Invalid|Illegal) user ?(?P<user>.*)")
_PAM_ERROR_HEAD = re.compile(r"error: PAM: Authentication failure for (?:illegal user )?(?P<user>.*)")
_ADDRESS = r"(?P<address>[0-9A-Fa-f:.]{2,45}(?:%[A-Za-z0-9_.-]{1,16})?)"
_FAILED_TAIL = re.compile(_ADDRESS + r" port \d{1,5}(?: ssh[12])?(?: \[preauth\])?")
_INVALID_TAIL = re.compile(_ADDRESS + r"(?: port \d{1,5})?(?: \[preauth\])?")
_PAM_ERROR_TAIL = re.compile(_ADDRESS + r"(?: port \d{1,5})?")
_PAM_UNIX = re.compile(
    r"pam_unix\((?:sshd|sshd-session):auth\): authentication failure; logname=\S* uid=\d* euid=\d* "
    r"tty=\S* ruser=\S* rhost=" + _ADDRESS + r"(?: +user=(?P<user>.*))?"
)
# (head pattern, tail pattern, kind) for the messages of the form "<head> from <tail>"
_FROM_FORMS: tuple[tuple[re.Pattern[str], re.Pattern[str], EventKind], ...] = (
    (_FAILED_HEAD, _FAILED_TAIL, "failed_password"),
    (_INVALID_HEAD, _INVALID_TAIL, "invalid_user"),
    (_PAM_ERROR_HEAD, _PAM_ERROR_TAIL, "pam_failure"),
)
_SYSLOG_FUTURE_SLACK = 86_400.0


class AuthEvent(NamedTuple):
    timestamp: float
    address: str
    user: str | None
    kind: EventKind
    times: int  # lines this one stands for (rsyslog's "message repeated N times")


def normalise_address(text: str) -> str | None:
    """The canonical text of an IP literal (IPv4-mapped IPv6 as IPv4, zone dropped), else ``None``."""
    try:
        address = ipaddress.ip_address(text.partition("%")[0])
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return str(address.ipv4_mapped)
    return str(address)


def _syslog_time(match: re.Match[str], now: float) -> float | None:
    """Syslog stamps carry no year or zone: local time, in the year that puts them not in the future."""
    month = _MONTHS.get(match["month"])
    if month is None:
        return None
    hour, minute, second = (int(part) for part in match["clock"].split(":"))
    year = datetime.fromtimestamp(now).year
    for candidate_year in (year, year - 1):
        try:
            stamp = datetime(candidate_year, month, int(match["day"]), hour, minute, second).timestamp()
        except (ValueError, OverflowError):
            continue  # 29 February of a common year, or a nonsense date
        if stamp <= now + _SYSLOG_FUTURE_SLACK:
            return stamp
    return None


def _iso_time(match: re.Match[str]) -> float | None:
    fraction = (match["fraction"] or "")[:7]  # datetime takes microseconds at most
    zone = match["zone"] or ""
    if zone and zone != "Z" and ":" not in zone:
        zone = f"{zone[:3]}:{zone[3:]}"
    try:
        return datetime.fromisoformat(f"{match['date']}T{match['clock']}{fraction}{zone}").timestamp()
    except (ValueError, OverflowError):
        return None


def _parse_message(message: str) -> tuple[str, str | None, EventKind] | None:
    """(address, user, kind) of one sshd message, or ``None``."""
    pam = _PAM_UNIX.fullmatch(message)
    if pam is not None:
        address = normalise_address(pam["address"])
        return (address, pam["user"], "pam_failure") if address else None
    head, separator, tail = message.rpartition(" from ")
    if not separator:
        return None
    for head_pattern, tail_pattern, kind in _FROM_FORMS:
        head_match = head_pattern.fullmatch(head)
        if head_match is None:
            continue
        tail_match = tail_pattern.fullmatch(tail)
        if tail_match is None:
            return None
        address = normalise_address(tail_match["address"])
        return (address, head_match["user"], kind) if address else None
    return None


def parse_message(message: str, timestamp: float) -> AuthEvent | None:
    """The sshd authentication failure a bare message (a journal entry's ``MESSAGE``) records, or ``None``."""
    if len(message) > MAX_LINE:
        return None
    parsed = _parse_message(message.rstrip("\r\n"))
    if parsed is None:
        return None
    address, user, kind = parsed
    return AuthEvent(timestamp, address, clean_text(user, MAX_USER) if user is not None else None, kind, 1)


def parse_line(line: str, now: float) -> AuthEvent | None:
    """The sshd authentication failure ``line`` records, or ``None``; never raises."""
    line = line.rstrip("\r\n")
    if len(line) > MAX_LINE:
        return None
    header = _SYSLOG.match(line)
    if header is not None:
        timestamp = _syslog_time(header, now)
    else:
        header = _ISO.match(line)
        if header is None:
            return None
        timestamp = _iso_time(header)
    if timestamp is None:
        return None
    message = line[header.end() :]
    times = 1
    repeated = _REPEATED.fullmatch(message)
    if repeated is not None:
        times, message = max(1, int(repeated["times"])), repeated["message"]
    parsed = _parse_message(message)
    if parsed is None:
        return None
    address, user, kind = parsed
    return AuthEvent(timestamp, address, clean_text(user, MAX_USER) if user is not None else None, kind, times)
