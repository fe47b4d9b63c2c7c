"""A well-formed ``get_metrics`` answer (docs/protocol.md), for parser, validation and alert tests."""

from __future__ import annotations

from typing import Any

from hypothesis import strategies as st


def good_answer(name: str = "localhost", **changes: Any) -> dict[str, Any]:
    answer: dict[str, Any] = {
        "agent": name,
        "timestamp": 1_700_000_000.25,
        "version": "0.1.0",
        "cpu_usage": 12.5,
        "cpu_temperature": 54.0,
        "load_1": 0.5,
        "load_5": 0.4,
        "load_15": 0.3,
        "memory_usage": 41.2,
        "disk_usage": 63.0,
        "security_issues": 2,
        "threat_level": "high",
        "temperature": {"celsius": 54.0, "reason": None, "sensor": "coretemp", "high": 84.0, "critical": 100.0},
        "cpu": {"percent": 12.5, "per_core": [10.0, 15.0], "count": 2},
        "load": {"load_1": 0.5, "load_5": 0.4, "load_15": 0.3, "per_core_1": 0.25},
        "memory": {
            "total": 8.0e9,
            "available": 4.0e9,
            "used": 3.5e9,
            "percent": 41.2,
            "swap_total": 2.0e9,
            "swap_used": 1.0e8,
            "swap_percent": 5.0,
        },
        "disks": [
            {
                "mount": "/",
                "device": "/dev/sda1",
                "fstype": "ext4",
                "total": 1e11,
                "used": 6.3e10,
                "free": 3.7e10,
                "percent": 63.0,
            },
            {
                "mount": "/boot",
                "device": "/dev/sda2",
                "fstype": "ext4",
                "total": 1e9,
                "used": 2e8,
                "free": 8e8,
                "percent": 20.0,
            },
        ],
        "security": {
            "threat_level": "high",
            "issues": 2,
            "scanned_at": 1_700_000_000.0,
            "age": 0.25,
            "ssh_failures": 7,
            "findings": [
                {
                    "kind": "ssh_bruteforce",
                    "severity": "medium",
                    "technique": "T1110",
                    "summary": "7 failed SSH logins from 10.0.0.5",
                    "evidence": {"address": "10.0.0.5", "count": 7},
                },
                {
                    "kind": "exec_from_tmp",
                    "severity": "high",
                    "technique": "T1059",
                    "summary": "process 4242 runs /tmp/x",
                    "evidence": {"pid": 4242, "user": "nobody", "path": "/tmp/x"},
                },
            ],
        },
        "unavailable": {},
    }
    answer.update(changes)
    return answer


def xmlrpc_values(text: st.SearchStrategy[str], size: int = 5, leaves: int = 30) -> st.SearchStrategy[Any]:
    """Values of every type an agent sends (nil, booleans, 32-bit ints, finite doubles, ``text``), nested."""
    scalars = (
        st.none()
        | st.booleans()
        | st.integers(min_value=-(2**31), max_value=2**31 - 1)
        | st.floats(allow_nan=False, allow_infinity=False)
        | text
    )
    return st.recursive(
        scalars,
        lambda inner: st.lists(inner, max_size=size) | st.dictionaries(text, inner, max_size=size),
        max_leaves=leaves,
    )
