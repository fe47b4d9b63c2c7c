"""Sockets on suspicious ports, and listeners no one expected.

Linux: the socket tables ``<proc_root>/net/{tcp,tcp6,udp,udp6}`` are parsed directly; the process owning a
socket is found by matching its inode against the ``socket:[inode]`` links under ``<proc_root>/<pid>/fd``
(only for the few sockets that matter, and stopping once all are found). The tables are read with
raw fields first (state, then hex ports): only the sockets that can give rise to a finding have their
addresses decoded, so the scan costs little more than splitting the lines, however many sockets in
TIME_WAIT or on ordinary ports the host holds. Other platforms: psutil's
``net_connections()``, which macOS allows only to root (otherwise the reason says so).

- ``suspicious_port_listener``: a TCP listener, or a bound unconnected UDP socket, on a suspicious port;
  ``high``, ``medium`` when bound to loopback only.
- ``suspicious_port_connection``: a TCP connection (established or being set up) or connected UDP socket
  with a suspicious port at either end, counted per process, peer and port; ``medium``, ``low`` when the
  peer is loopback.
- ``unexpected_listener`` (only when ``expected_listeners`` is not empty): a TCP listener, or a UDP socket
  bound below the ephemeral port range, whose process name (the 15-character ``comm`` or the executable's
  file name) is not in the list. A socket whose owner cannot be found is unexpected too. ``medium``,
  ``low`` when bound to loopback only.
"""

from __future__ import annotations

import ipaddress
import os
import socket as socket_module
import sys
from collections import Counter
from collections.abc import Iterable
from pathlib import Path
from typing import NamedTuple

import psutil

from secure_agent.probes._fs import LARGE_FILE, numeric_entries, read_optional, read_text
from secure_agent.probes.findings import (
    SUSPICIOUS_PORT_CONNECTION,
    SUSPICIOUS_PORT_LISTENER,
    UNEXPECTED_LISTENER,
    Finding,
    Severity,
    make_finding,
)
from secure_agent.probes.processes import inspect, user_name

TABLES = ("tcp", "tcp6", "udp", "udp6")
LISTEN = "0A"
UNCONNECTED = "07"  # TCP_CLOSE: what a bound, unconnected UDP socket shows
ACTIVE = frozenset({"01", "02", "03"})  # ESTABLISHED, SYN_SENT, SYN_RECV
DEFAULT_EPHEMERAL_LOW = 32768
MAX_SOCKETS = 262144
MAX_FD_LINKS = 2_000_000


class Socket(NamedTuple):
    protocol: str  # tcp, tcp6, udp, udp6
    local_address: str
    local_port: int
    remote_address: str
    remote_port: int
    state: str  # the kernel's hex state
    uid: int | None
    inode: int
    pid: int | None = None

    @property
    def is_listener(self) -> bool:
        if self.protocol.startswith("tcp"):
            return self.state == LISTEN
        return self.state == UNCONNECTED and self.remote_port == 0

    @property
    def is_active(self) -> bool:
        return self.state in ACTIVE


class NetworkScan(NamedTuple):
    findings: tuple[Finding, ...]
    listeners: int
    connections: int
    reason: str | None


class Owner(NamedTuple):
    pid: int | None
    name: str | None
    user: str | None
    exe_name: str | None


def decode_address(text: str, byteorder: str = sys.byteorder) -> str:
    """``0100007F`` -> ``127.0.0.1``: the kernel prints each 32-bit word in host byte order."""
    raw = bytes.fromhex(text)
    if len(raw) not in (4, 16):
        raise ValueError(f"address of {len(raw)} bytes")
    if byteorder == "little":
        raw = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))
    address = ipaddress.ip_address(raw)
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return str(address.ipv4_mapped)
    return str(address)


def _endpoint(text: str, byteorder: str) -> tuple[str, int]:
    address, _, port = text.partition(":")
    return decode_address(address, byteorder), int(port, 16)


def parse_net_table(text: str, protocol: str, byteorder: str = sys.byteorder) -> list[Socket]:
    """The sockets of one /proc/net table; malformed lines are skipped."""
    sockets: list[Socket] = []
    for line in text.splitlines()[1:]:
        fields = line.split()
        if len(fields) < 10:
            continue
        try:
            local, local_port = _endpoint(fields[1], byteorder)
            remote, remote_port = _endpoint(fields[2], byteorder)
            uid = int(fields[7]) if fields[7].isdigit() else None
            state, inode = fields[3].upper(), int(fields[9])
            sockets.append(Socket(protocol, local, local_port, remote, remote_port, state, uid, inode))
        except ValueError:
            continue
    return sockets


def ephemeral_low(proc_root: Path) -> int:
    text = read_optional(proc_root / "sys" / "net" / "ipv4" / "ip_local_port_range")
    try:
        return int((text or "").split()[0])
    except (IndexError, ValueError):
        return DEFAULT_EPHEMERAL_LOW


def socket_owners(proc_root: Path, inodes: set[int]) -> dict[int, int]:
    """inode -> pid for the ``inodes`` asked for, by reading ``<pid>/fd`` links until all are found."""
    owners: dict[int, int] = {}
    budget = MAX_FD_LINKS
    for pid in numeric_entries(proc_root):
        fd_dir = proc_root / str(pid) / "fd"
        try:
            fds = os.listdir(fd_dir)
        except OSError:
            continue
        for fd in fds:
            budget -= 1
            try:
                target = os.readlink(fd_dir / fd)
            except OSError:
                continue
            if target.startswith("socket:[") and target.endswith("]"):
                inode = int(target[8:-1]) if target[8:-1].isdigit() else -1
                if inode in inodes and inode not in owners:
                    owners[inode] = pid
        if len(owners) == len(inodes) or budget <= 0:
            break
    return owners


def _scan_table(
    text: str, protocol: str, suspicious: frozenset[int], want_listeners: bool, budget: int
) -> tuple[list[Socket], int, int, int]:
    """(interesting sockets, listeners, active connections, lines used) of one /proc/net table.

    What :func:`parse_net_table` followed by :func:`_interesting` gives, without decoding the
    addresses of sockets that cannot matter (most of them); malformed lines are skipped as there.
    """
    found: list[Socket] = []
    listeners = active = used = 0
    is_tcp = protocol.startswith("tcp")
    listen_state = LISTEN if is_tcp else UNCONNECTED
    for line in text.splitlines()[1:]:
        if used >= budget:
            break
        fields = line.split()
        if len(fields) < 10:
            continue
        used += 1
        state = fields[3].upper()
        if state != listen_state and state not in ACTIVE:
            continue  # neither counted nor ever a finding (TIME_WAIT, CLOSE_WAIT, ...)
        local, _, local_hex = fields[1].partition(":")
        remote, _, remote_hex = fields[2].partition(":")
        try:
            local_port, remote_port, inode = int(local_hex, 16), int(remote_hex, 16), int(fields[9])
            if len(bytes.fromhex(local)) not in (4, 16) or len(bytes.fromhex(remote)) not in (4, 16):
                continue
        except ValueError:
            continue
        if state == listen_state and (is_tcp or remote_port == 0):
            listeners += 1
            wanted = want_listeners or local_port in suspicious
        elif state in ACTIVE:
            active += 1
            wanted = local_port in suspicious or remote_port in suspicious
        else:
            continue  # a connected UDP socket in state 07: neither counted nor a finding
        if wanted:
            uid = int(fields[7]) if fields[7].isdigit() else None
            local, remote = decode_address(local), decode_address(remote)
            found.append(Socket(protocol, local, local_port, remote, remote_port, state, uid, inode))
    return found, listeners, active, used


def _is_loopback(address: str) -> bool:
    try:
        return ipaddress.ip_address(address).is_loopback
    except ValueError:
        return False


def _owner_linux(proc_root: Path, pid: int | None, uid: int | None, users: dict[int, str]) -> Owner:
    info = inspect(proc_root, pid, users) if pid is not None else None
    user = info.user if info is not None else (user_name(uid, users) if uid is not None else None)
    if info is None:
        return Owner(pid, None, user, None)
    exe_name = os.path.basename(info.exe) if info.exe else None
    return Owner(pid, info.name, user, exe_name)


def _listener_finding(sock: Socket, owner: Owner, kind: str) -> Finding:
    loopback = _is_loopback(sock.local_address)
    evidence = {
        "pid": owner.pid, "name": owner.exe_name or owner.name, "user": owner.user,
        "address": sock.local_address, "port": sock.local_port, "protocol": sock.protocol,
    }
    who = f"process {owner.pid} ({owner.exe_name or owner.name or '?'})" if owner.pid else "an unknown process"
    where = f"{sock.protocol} {sock.local_address} port {sock.local_port}"
    if kind == SUSPICIOUS_PORT_LISTENER:
        severity: Severity = "medium" if loopback else "high"
        return make_finding(kind, severity, f"{who} listens on suspicious {where}", evidence)
    return make_finding(kind, "low" if loopback else "medium", f"{who} listens on {where}, not expected", evidence)


def _connection_finding(sock: Socket, owner: Owner, port: int, count: int) -> Finding:
    direction = "outbound" if sock.remote_port == port else "inbound"
    evidence = {
        "pid": owner.pid, "name": owner.exe_name or owner.name, "user": owner.user,
        "address": sock.remote_address, "port": port, "local_port": sock.local_port,
        "direction": direction, "protocol": sock.protocol, "count": count,
    }
    who = f"process {owner.pid} ({owner.exe_name or owner.name or '?'})" if owner.pid else "an unknown process"
    summary = (
        f"{who}: {count} {direction} {sock.protocol} connection(s) with {sock.remote_address}"
        f" on suspicious port {port}"
    )
    return make_finding(
        SUSPICIOUS_PORT_CONNECTION, "low" if _is_loopback(sock.remote_address) else "medium", summary, evidence
    )


def evaluate(
    sockets: Iterable[Socket],
    owners: dict[int, Owner],
    suspicious_ports: frozenset[int],
    expected_listeners: frozenset[str],
    ephemeral_from: int,
) -> NetworkScan:
    """Findings from the sockets; ``owners`` maps a socket's inode to its process where that is known."""
    findings: list[Finding] = []
    seen: set[tuple[object, ...]] = set()
    first: dict[tuple[int | None, str, int, str, bool], tuple[Socket, Owner]] = {}
    counts: Counter[tuple[int | None, str, int, str, bool]] = Counter()
    listeners = active = 0
    nobody = Owner(None, None, None, None)
    for sock in sockets:
        owner = owners.get(sock.inode, nobody)
        if sock.is_listener:
            listeners += 1
            key: tuple[object, ...] = (SUSPICIOUS_PORT_LISTENER, owner.pid, sock.protocol, sock.local_port)
            if sock.local_port in suspicious_ports and key not in seen:
                seen.add(key)
                findings.append(_listener_finding(sock, owner, SUSPICIOUS_PORT_LISTENER))
            # one finding per process and port, even when it listens on both IPv4 and IPv6
            key = (UNEXPECTED_LISTENER, owner.pid, sock.protocol[:3], sock.local_port)
            if (
                expected_listeners
                and (sock.protocol.startswith("tcp") or sock.local_port < ephemeral_from)
                and not {owner.name, owner.exe_name} & expected_listeners
                and key not in seen
            ):
                seen.add(key)
                findings.append(_listener_finding(sock, owner, UNEXPECTED_LISTENER))
        elif sock.is_active:
            active += 1
            port = sock.remote_port if sock.remote_port in suspicious_ports else sock.local_port
            if port in suspicious_ports:
                group = (owner.pid, sock.remote_address, port, sock.protocol, port == sock.remote_port)
                first.setdefault(group, (sock, owner))
                counts[group] += 1
    for group, (sock, owner) in first.items():
        findings.append(_connection_finding(sock, owner, group[2], counts[group]))
    return NetworkScan(tuple(findings), listeners, active, None)


def _interesting(sock: Socket, suspicious_ports: frozenset[int], want_listeners: bool) -> bool:
    if sock.is_listener:
        return want_listeners or sock.local_port in suspicious_ports
    return sock.is_active and (sock.local_port in suspicious_ports or sock.remote_port in suspicious_ports)


def _scan_linux(proc_root: Path, suspicious: frozenset[int], expected: frozenset[str]) -> NetworkScan:
    sockets: list[Socket] = []  # only those that may give rise to a finding
    readable = listeners = active = 0
    budget = MAX_SOCKETS  # lines of the tables looked at, in all
    for table in TABLES:
        try:
            text = read_text(proc_root / "net" / table, LARGE_FILE * 16)
        except OSError:
            continue  # no IPv6, or no UDP table in this namespace
        readable += 1
        found, table_listeners, table_active, used = _scan_table(text, table, suspicious, bool(expected), budget)
        sockets.extend(found)
        listeners, active, budget = listeners + table_listeners, active + table_active, budget - used
    if not readable:
        return NetworkScan((), 0, 0, f"no socket table readable under {proc_root / 'net'}")
    wanted = {sock.inode for sock in sockets if sock.inode}
    users: dict[int, str] = {}
    owners: dict[int, Owner] = {}
    by_inode = {sock.inode: sock for sock in sockets}
    pids = socket_owners(proc_root, wanted) if wanted else {}
    for inode in wanted:
        owners[inode] = _owner_linux(proc_root, pids.get(inode), by_inode[inode].uid, users)
    scan = evaluate(sockets, owners, suspicious, expected, ephemeral_low(proc_root))
    return scan._replace(listeners=listeners, connections=active)


def _psutil_state(status: str, is_tcp: bool, has_remote: bool) -> str:
    if is_tcp:
        return {psutil.CONN_LISTEN: LISTEN, psutil.CONN_ESTABLISHED: "01", psutil.CONN_SYN_SENT: "02",
                psutil.CONN_SYN_RECV: "03"}.get(status, "FF")
    return "01" if has_remote else UNCONNECTED


def _scan_psutil(suspicious: frozenset[int], expected: frozenset[str]) -> NetworkScan:
    sockets: list[Socket] = []
    owners: dict[int, Owner] = {}
    for index, conn in enumerate(psutil.net_connections(kind="inet")[:MAX_SOCKETS], start=1):
        is_tcp = conn.type == socket_module.SOCK_STREAM
        protocol = ("tcp" if is_tcp else "udp") + ("6" if conn.family == socket_module.AF_INET6 else "")
        local: tuple[str, int] = (str(conn.laddr[0]), int(conn.laddr[1])) if conn.laddr else ("", 0)
        remote: tuple[str, int] = (str(conn.raddr[0]), int(conn.raddr[1])) if conn.raddr else ("", 0)
        state = _psutil_state(conn.status, is_tcp, bool(conn.raddr))
        sock = Socket(protocol, local[0], local[1], remote[0], remote[1], state, None, index, conn.pid)
        sockets.append(sock)
        if conn.pid is not None and _interesting(sock, suspicious, bool(expected)):
            owners[index] = _owner_psutil(conn.pid)
    return evaluate(sockets, owners, suspicious, expected, DEFAULT_EPHEMERAL_LOW)


def _owner_psutil(pid: int) -> Owner:
    try:
        process = psutil.Process(pid)
        with process.oneshot():
            name, user = process.name(), process.username()
    except (OSError, psutil.Error):
        return Owner(pid, None, None, None)
    return Owner(pid, name, user, name)


def scan_network(
    proc_root: Path = Path("/proc"),
    *,
    suspicious_ports: Iterable[int] = (),
    expected_listeners: Iterable[str] = (),
    platform: str = sys.platform,
) -> NetworkScan:
    """Findings about this host's sockets; never raises."""
    suspicious, expected = frozenset(suspicious_ports), frozenset(expected_listeners)
    if platform.startswith("linux"):
        return _scan_linux(proc_root, suspicious, expected)
    try:
        return _scan_psutil(suspicious, expected)
    except psutil.AccessDenied:
        return NetworkScan((), 0, 0, f"listing sockets needs administrator rights on {platform}")
    except (OSError, psutil.Error) as exc:
        return NetworkScan((), 0, 0, f"socket table unreadable: {type(exc).__name__}")
