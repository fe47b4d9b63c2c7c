"""The sshd line parser: real-world lines, injection attempts, and properties under hypothesis."""

from __future__ import annotations

import ipaddress
from datetime import UTC, datetime

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from secure_agent.probes.authlog import normalise_address, parse_line

NOW = datetime(2026, 3, 10, 3, 22).timestamp()  # local time, like syslog stamps
HEADER = "Mar 10 03:18:00 web1 sshd[21070]: "


@pytest.mark.parametrize(
    ("message", "expected"),
    [
        ("Failed password for root from 203.0.113.5 port 51600 ssh2", ("203.0.113.5", "root", "failed_password", 1)),
        ("Failed password for invalid user admin from 203.0.113.5 port 51522 ssh2",
         ("203.0.113.5", "admin", "failed_password", 1)),
        ("Failed keyboard-interactive/pam for root from 2001:db8::42 port 50022 ssh2",
         ("2001:db8::42", "root", "failed_password", 1)),
        ("Failed none for invalid user ubnt from 203.0.113.77 port 41000 ssh2",
         ("203.0.113.77", "ubnt", "failed_password", 1)),
        ("Invalid user oracle from 2001:DB8::42 port 50024", ("2001:db8::42", "oracle", "invalid_user", 1)),
        ("Invalid user  from 198.51.100.3 port 1", ("198.51.100.3", "", "invalid_user", 1)),
        ("Illegal user test from 198.51.100.3", ("198.51.100.3", "test", "invalid_user", 1)),
        ("pam_unix(sshd:auth): authentication failure; logname= uid=0 euid=0 tty=ssh ruser= rhost=203.0.113.5",
         ("203.0.113.5", None, "pam_failure", 1)),
        ("pam_unix(sshd:auth): authentication failure; logname= uid=0 euid=0 tty=ssh ruser= rhost=::ffff:203.0.113.5"
         "  user=root", ("203.0.113.5", "root", "pam_failure", 1)),
        ("error: PAM: Authentication failure for illegal user test from 198.51.100.9",
         ("198.51.100.9", "test", "pam_failure", 1)),
        ("message repeated 25 times: [ Failed password for root from 198.51.100.66 port 60000 ssh2]",
         ("198.51.100.66", "root", "failed_password", 25)),
        ("Failed password for root from fe80::1%eth0 port 22 ssh2", ("fe80::1", "root", "failed_password", 1)),
    ],
)
def test_real_world_failures(message: str, expected: tuple[object, ...]) -> None:
    event = parse_line(HEADER + message, NOW)
    assert event is not None
    assert (event.address, event.user, event.kind, event.times) == expected
    assert event.timestamp == NOW - 240


@pytest.mark.parametrize(
    "message",
    [
        "Accepted password for alice from 10.0.0.9 port 50000 ssh2",
        "Accepted publickey for deploy from 198.51.100.20 port 40022 ssh2: ED25519 SHA256:Zm9v",
        "Connection closed by invalid user admin 203.0.113.5 port 51522 [preauth]",
        "PAM 2 more authentication failures; logname= uid=0 euid=0 tty=ssh ruser= rhost=203.0.113.5  user=root",
        "pam_unix(sshd:auth): check pass; user unknown",
        "Failed password for root from attacker.example.com port 1022 ssh2",  # a name, not an address
        "Failed password for root from 198.51.100.55 port 22 ssh2 trailing junk",
        "Failed password for root from 999.1.1.1 port 22 ssh2",
        "Failed publickey for root from 198.51.100.8 port 22 ssh2: RSA SHA256:x",  # key probes are not guesses
        # the brief's example: the crafted user name ends the line, so there is no anchored source at all
        "Failed password for invalid user x from 1.2.3.4 port 22 ssh2 from 5.6.7.8",
    ],
)
def test_lines_that_are_not_counted(message: str) -> None:
    assert parse_line(HEADER + message, NOW) is None


def test_crafted_user_names_cannot_inject_a_source() -> None:
    framed = "192.0.2.1"
    lines = [
        "Failed password for invalid user x from 192.0.2.1 port 22 ssh2 from 198.51.100.77 port 40100 ssh2",
        "Invalid user y from 192.0.2.1 port 22 from 198.51.100.77 port 40102",
        "pam_unix(sshd:auth): authentication failure; logname= uid=0 euid=0 tty=ssh ruser= rhost=198.51.100.77"
        "  user=root rhost=192.0.2.1",
    ]
    for message in lines:
        event = parse_line(HEADER + message, NOW)
        assert event is not None and event.address == "198.51.100.77", message
        assert event.user is not None and framed in event.user


@pytest.mark.parametrize(
    "line",
    [
        "Mar 10 03:16:30 web1 sshd-session[21040]: Failed password for root from 2001:db8::42 port 50022 ssh2",
        "Mar 10 03:16:30 web1 sshd-auth[21040]: Failed password for root from 2001:db8::42 port 50022 ssh2",
        "Mar 10 03:16:30 web1 sshd: Failed password for root from 2001:db8::42 port 50022 ssh2",
        "Mar 10 03:16:30.123456 web1 sshd[1]: Failed password for root from 2001:db8::42 port 50022 ssh2",
    ],
)
def test_daemon_names_and_syslog_variants(line: str) -> None:
    event = parse_line(line, NOW)
    assert event is not None and event.address == "2001:db8::42"


@pytest.mark.parametrize(
    "line",
    [
        "Mar 10 03:16:30 web1 fakesshd[1]: Failed password for root from 198.51.100.55 port 22 ssh2",
        "Mar 10 03:16:30 web1 su[1]: pam_unix(su:auth): authentication failure; logname=bob uid=1000 euid=0 "
        "tty=/dev/pts/0 ruser=bob rhost=  user=root",
        "Feb 30 03:16:30 web1 sshd[1]: Failed password for root from 198.51.100.55 port 22 ssh2",
        "web1 sshd[1]: Failed password for root from 198.51.100.55 port 22 ssh2",
        "",
        "Mar 10 03:16:30 web1 sshd[1]: Failed password for " + "a" * 5000 + " from 198.51.100.55 port 22 ssh2",
    ],
)
def test_other_programs_bad_dates_and_oversized_lines(line: str) -> None:
    assert parse_line(line, NOW) is None


@pytest.mark.parametrize(
    ("stamp", "expected"),
    [
        ("2026-03-10T03:10:05.000000+00:00", datetime(2026, 3, 10, 3, 10, 5, tzinfo=UTC)),
        ("2026-03-10T04:10:07.123456789+01:00", datetime(2026, 3, 10, 3, 10, 7, 123456, tzinfo=UTC)),
        ("2026-03-10T03:10:09Z", datetime(2026, 3, 10, 3, 10, 9, tzinfo=UTC)),
        ("2026-03-10T03:10:10.5+0000", datetime(2026, 3, 10, 3, 10, 10, 500000, tzinfo=UTC)),
    ],
)
def test_iso_timestamps(stamp: str, expected: datetime) -> None:
    event = parse_line(f"{stamp} db1 sshd[3001]: Invalid user ubnt from 203.0.113.77 port 41000", NOW)
    assert event is not None and event.timestamp == pytest.approx(expected.timestamp())


def test_syslog_stamps_take_the_year_that_is_not_in_the_future() -> None:
    new_year = datetime(2027, 1, 1, 0, 5).timestamp()
    event = parse_line("Dec 31 23:59:00 h sshd[1]: Invalid user a from 192.0.2.9 port 1", new_year)
    assert event is not None and datetime.fromtimestamp(event.timestamp).year == 2026


def test_user_names_are_cleaned() -> None:
    event = parse_line(HEADER + "Invalid user \x1b[2J\u202eroot from 192.0.2.9 port 1", NOW)
    assert event is not None and event.user == "\\x1b[2J\\u202eroot"


# ---- properties -------------------------------------------------------------------------------------

addresses = st.one_of(
    st.ip_addresses(v=4).map(str),
    st.ip_addresses(v=6).map(str),
)
user_names = st.text(
    alphabet=st.characters(blacklist_categories=["Cs"], blacklist_characters="\r\n"), max_size=80
) | st.lists(st.sampled_from([" from ", "1.2.3.4", " port 22", " ssh2", "rhost=", " user=", "::1", " "]),
             max_size=12).map("".join)
templates = st.sampled_from(
    [
        "Failed password for {user} from {addr} port {port} ssh2",
        "Failed password for invalid user {user} from {addr} port {port} ssh2",
        "Invalid user {user} from {addr} port {port}",
        "message repeated 3 times: [ Failed password for {user} from {addr} port {port} ssh2]",
        "pam_unix(sshd:auth): authentication failure; logname= uid=0 euid=0 tty=ssh ruser= rhost={addr}  user={user}",
    ]
)


@settings(max_examples=300, deadline=None)
@given(template=templates, user=user_names, addr=addresses, port=st.integers(0, 65535))
def test_the_source_is_always_the_anchored_one(template: str, user: str, addr: str, port: int) -> None:
    line = HEADER + template.format(user=user, addr=addr, port=port)
    event = parse_line(line, NOW)
    if len(line) > 4096:
        assert event is None
        return
    assert event is not None
    assert event.address == normalise_address(addr)


def anchored_source(message: str) -> set[str]:
    """Every address a correct parser may return for ``message``: the one at an anchored position."""
    found: set[str] = set()
    tail = message.rsplit(" from ", 1)[-1].rstrip("]").split(" ")[0]
    if (address := normalise_address(tail)) is not None:
        found.add(address)
    if " rhost=" in message:
        rhost = message.split(" rhost=", 1)[1].split(" ")[0]
        if (address := normalise_address(rhost)) is not None:
            found.add(address)
    return found


@settings(max_examples=300, deadline=None)
@given(
    message=st.lists(
        st.sampled_from(
            ["Failed password for ", "Invalid user ", "invalid user ", " from ", " port 22", " ssh2", "]",
             "message repeated 2 times: [ ", "pam_unix(sshd:auth): authentication failure; logname= uid=0 euid=0 "
             "tty=ssh ruser= rhost=", "  user=", "1.2.3.4", "5.6.7.8", "::1", "x", " "]
        )
        | st.text(max_size=8),
        max_size=16,
    ).map("".join)
)
def test_never_raises_and_never_returns_an_unanchored_address(message: str) -> None:
    event = parse_line(HEADER + message, NOW)
    if event is not None:
        assert event.address in anchored_source(message)
        assert ipaddress.ip_address(event.address)
