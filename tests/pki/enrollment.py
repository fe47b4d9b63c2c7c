"""A real enrollment service for tests: on 127.0.0.1, port 0, in a thread, over the CA of a :class:`TestPKI`."""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from pki import make_certs
from pki.auditchain import verify_lines
from pki.enroll_service import EnrollmentService, RateLimiter, enroll_dir, open_service

GENEROUS = RateLimiter(per_second=1000.0, burst=1000)  # tests that are not about the rate limit


@contextlib.contextmanager
def running_service(
    ca_dir: Path,
    *,
    lifetime: dt.timedelta = dt.timedelta(days=30),
    limiter: RateLimiter | None = None,
    deadline: float = 15.0,
) -> Iterator[EnrollmentService]:
    service = open_service(ca_dir, "127.0.0.1", 0, lifetime=lifetime, limiter=limiter or GENEROUS, deadline=deadline)
    thread = threading.Thread(target=service.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield service
    finally:
        service.shutdown()
        service.server_close()
        thread.join(timeout=10)


def url(service: EnrollmentService) -> str:
    return f"https://127.0.0.1:{service.port}"


def issue(ca_dir: Path, service: EnrollmentService, token_file: Path, *entity: str, ttl: str = "1h") -> str:
    """``make-certs --issue-token`` for ``entity`` (``--agent``, ``NAME=HOSTS`` or ``--collector``, ``NAME``);
    the token's id."""
    argv = ["--out", str(ca_dir), "--issue-token", *entity, "--ttl", ttl, "--url", url(service)]
    assert make_certs.main([*argv, "--token-file", str(token_file)]) == 0
    assert token_file.stat().st_mode & 0o777 == 0o600
    return str(audit_records(ca_dir)[-1]["token"])


def audit_records(ca_dir: Path) -> list[dict[str, Any]]:
    """The service's audit log, checked as a whole chain, parsed."""
    lines = (enroll_dir(ca_dir) / "audit.log").read_text().splitlines()
    verdict = verify_lines(lines)
    assert verdict.ok, verdict
    return [json.loads(line) for line in lines]
