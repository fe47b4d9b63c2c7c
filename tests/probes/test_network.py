"""Socket tables: suspicious ports, unexpected listeners, and the owning process found by inode."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from secure_agent.probes.findings import (
    SUSPICIOUS_PORT_CONNECTION,
    SUSPICIOUS_PORT_LISTENER,
    UNEXPECTED_LISTENER,
    Finding,
)
from secure_agent.probes.network import decode_address, parse_net_table, scan_network, socket_owners

SUSPICIOUS = (3333, 4444, 31337)


def summary(findings: tuple[Finding, ...]) -> set[tuple[object, ...]]:
    rows: set[tuple[object, ...]] = set()
    for finding in findings:
        kind, severity, _, _, evidence = finding
        e = dict(evidence)
        rows.add((kind, severity, e.get("pid"), e.get("address"), e.get("port"), e.get("count")))
    return rows


@pytest.mark.parametrize(
    ("text", "byteorder", "expected"),
    [
        ("0100007F", "little", "127.0.0.1"),
        ("7F000001", "big", "127.0.0.1"),
        ("00000000000000000000000000000000", "little", "::"),
        ("B80D0120000000000000000042000000", "little", "2001:db8::42"),
        ("0000000000000000FFFF00000500000A", "little", "10.0.0.5"),  # IPv4-mapped shown as IPv4
    ],
)
def test_decode_address(text: str, byteorder: str, expected: str) -> None:
    assert decode_address(text, byteorder) == expected


def test_tables_parse_and_skip_garbage(fixtures: Path) -> None:
    sockets = parse_net_table((fixtures / "proc" / "host" / "net" / "tcp").read_text(), "tcp", "little")
    assert len(sockets) == 8  # the garbage line is skipped
    listener = sockets[0]
    assert (listener.local_address, listener.local_port, listener.is_listener) == ("0.0.0.0", 22, True)
    assert listener.inode == 2001
    assert (sockets[2].remote_address, sockets[2].remote_port, sockets[2].is_active) == ("198.51.100.7", 3333, True)


def test_owners_by_inode(fixtures: Path) -> None:
    assert socket_owners(fixtures / "proc" / "host", {2001, 2004, 2007}) == {2001: 200, 2004: 202}


def test_suspicious_ports_without_expected_listeners(fixtures: Path) -> None:
    scan = scan_network(fixtures / "proc" / "host", suspicious_ports=SUSPICIOUS, platform="linux")
    assert scan.reason is None and scan.listeners == 7 and scan.connections == 5
    assert summary(scan.findings) == {
        (SUSPICIOUS_PORT_LISTENER, "high", 201, "0.0.0.0", 4444, None),
        (SUSPICIOUS_PORT_LISTENER, "high", None, "0.0.0.0", 31337, None),  # no process holds it
        (SUSPICIOUS_PORT_CONNECTION, "medium", 202, "198.51.100.7", 3333, 2),  # two connections, one finding
        (SUSPICIOUS_PORT_CONNECTION, "medium", 201, "2001:db8::99", 4444, 1),  # inbound to the 4444 listener
    }
    inbound = next(f for f in scan.findings if dict(f.evidence).get("address") == "2001:db8::99")
    assert dict(inbound.evidence)["direction"] == "inbound" and inbound.technique == "T1571"
    nc = next(f for f in scan.findings if dict(f.evidence).get("pid") == 201 and f.kind == SUSPICIOUS_PORT_LISTENER)
    assert dict(nc.evidence)["name"] == "nc.openbsd" and dict(nc.evidence)["protocol"] == "tcp"


def test_unexpected_listeners_when_a_list_is_configured(fixtures: Path) -> None:
    scan = scan_network(
        fixtures / "proc" / "host", suspicious_ports=(), expected_listeners=("sshd", "dnsmasq"), platform="linux"
    )
    assert summary(scan.findings) == {
        (UNEXPECTED_LISTENER, "medium", 201, "0.0.0.0", 4444, None),
        (UNEXPECTED_LISTENER, "low", 203, "127.0.0.1", 8080, None),  # loopback only
        (UNEXPECTED_LISTENER, "medium", None, "0.0.0.0", 31337, None),  # owner unknown: unexpected too
    }  # sshd on v4 and v6 and dnsmasq are expected; chrome's UDP port is in the ephemeral range


def test_live_listener_on_a_suspicious_port_names_this_process() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        port = server.getsockname()[1]
        for platform in ("linux", "darwin"):  # /proc parsing, and the psutil path
            scan = scan_network(suspicious_ports=(port,), platform=platform)
            assert (SUSPICIOUS_PORT_LISTENER, "medium", os.getpid(), "127.0.0.1", port, None) in summary(scan.findings)


@pytest.fixture
def connected_pair() -> Iterator[tuple[socket.socket, socket.socket, int]]:
    server = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
    server.bind(("::1", 0))
    server.listen()
    client = socket.create_connection(("::1", server.getsockname()[1]), timeout=5)
    accepted, _ = server.accept()
    try:
        yield client, accepted, server.getsockname()[1]
    finally:
        for sock in (client, accepted, server):
            sock.close()


def test_live_connection_on_a_suspicious_port(connected_pair: tuple[socket.socket, socket.socket, int]) -> None:
    port = connected_pair[2]
    scan = scan_network(suspicious_ports=(port,), platform="linux")
    rows = summary(scan.findings)
    # the client's outbound connection and the server's accepted one, both in this process, both loopback
    assert (SUSPICIOUS_PORT_CONNECTION, "low", os.getpid(), "::1", port, 1) in rows
    mine = [f for f in scan.findings if f.kind == SUSPICIOUS_PORT_CONNECTION and dict(f.evidence)["pid"] == os.getpid()]
    assert sorted(str(dict(f.evidence)["direction"]) for f in mine) == ["inbound", "outbound"]


def test_no_tables_is_a_reason(tmp_path: Path) -> None:
    scan = scan_network(tmp_path, suspicious_ports=SUSPICIOUS, platform="linux")
    assert scan.findings == () and scan.reason == f"no socket table readable under {tmp_path / 'net'}"


def _reference(proc_root: Path, suspicious: frozenset[int], expected: frozenset[str]) -> tuple[object, ...]:
    """The scan as it was before the raw-field fast path: every address decoded, then judged."""
    from secure_agent.probes import network

    sockets = []
    for table in network.TABLES:
        path = proc_root / "net" / table
        if path.exists():
            sockets.extend(parse_net_table(path.read_text(), table))
    wanted = {s.inode for s in sockets if s.inode and network._interesting(s, suspicious, bool(expected))}
    by_inode = {s.inode: s for s in sockets}
    pids = socket_owners(proc_root, wanted) if wanted else {}
    owners = {i: network._owner_linux(proc_root, pids.get(i), by_inode[i].uid, {}) for i in wanted}
    return tuple(network.evaluate(sockets, owners, suspicious, expected, network.ephemeral_low(proc_root)))


@pytest.mark.parametrize("expected", [(), ("sshd",)])
@pytest.mark.parametrize("root", ["fixture", "live"])
def test_fast_scan_finds_what_decoding_every_socket_finds(
    fixtures: Path, connected_pair: tuple[socket.socket, socket.socket, int], root: str, expected: tuple[str, ...]
) -> None:
    proc_root = fixtures / "proc" / "host" if root == "fixture" else Path("/proc")
    port = connected_pair[2]
    suspicious = frozenset((*SUSPICIOUS, port))
    scan = scan_network(proc_root, suspicious_ports=suspicious, expected_listeners=expected)
    reference = _reference(proc_root, suspicious, frozenset(expected))
    if root == "fixture":
        assert tuple(scan) == reference
    else:  # other processes open and close sockets between the two reads: compare what is ours
        ours = [f for f in scan.findings if dict(f.evidence).get("port") == port]
        assert ours and all(finding in reference[0] for finding in ours)  # type: ignore[operator]
    assert scan.findings and scan.listeners >= 1
