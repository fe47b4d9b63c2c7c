"""``make-certs`` for the enrollment service: issue, list and revoke tokens, serve, and enroll a host.

    make-certs --out DIR --issue-token (--agent NAME=HOST[,HOST...] | --collector NAME) [--ttl 1h]
               [--url https://CA-HOST:PORT] [--token-file FILE]
    make-certs --out DIR --list-tokens
    make-certs --out DIR --revoke-token ID
    make-certs --out DIR --serve HOST:PORT [--days N]
    make-certs --enroll [URL] --token-file FILE|- --out HOSTDIR

A token is written to ``--token-file`` (mode 0600) or stdout, and read by ``--enroll`` from a file or stdin:
never from the command line, where ``ps`` and shell histories would show it.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import re
import signal
import sys
import threading
import time
from pathlib import Path

from pki import enroll_client
from pki.enroll_audit import EnrollmentAudit
from pki.enroll_issuer import ENROLL_LIFETIME, enroll_dir, load_authority
from pki.enroll_service import open_service
from pki.enroll_tokens import EntityRole, TokenRefused, TokenStore, decode, encode
from pki.errors import PKIError
from pki.files import PRIVATE_MODE, PUBLIC_MODE, write_atomic

_DURATION = re.compile(r"^([1-9][0-9]{0,6})([smhd])$")
_UNIT = {"s": 1, "m": 60, "h": 3600, "d": 86_400}


def parse_duration(text: str, flag: str) -> float:
    match = _DURATION.match(text)
    if match is None:
        raise PKIError(f"{flag} {text!r}: expected a number and a unit, like 30m, 1h or 2d")
    return float(int(match.group(1)) * _UNIT[match.group(2)])


def parse_listen(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    host = host.removeprefix("[").removesuffix("]")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise PKIError(f"--serve {text!r}: expected HOST:PORT (the name or address hosts dial; [::1]:8443 for IPv6)")
    return host, int(port)


def _service_url(out: Path) -> str | None:
    try:
        data = json.loads((enroll_dir(out) / "service.json").read_text())
    except (OSError, ValueError):
        return None
    url = data.get("url") if isinstance(data, dict) else None
    return url if isinstance(url, str) else None


def issue_token(
    out: Path, name: str, role: EntityRole, hosts: tuple[str, ...], ttl: float, url: str | None, token_file: Path | None
) -> str:
    """Issue a token; write it to ``token_file`` (0600) or return it for stdout. Audited."""
    load_authority(out)  # this is the CA's directory, or a one-line error
    url = url or _service_url(out)
    if url is None:
        raise PKIError(f"{out}: no --url given and no service has run here yet (--serve records its URL)")
    enroll_client.parse_url(url)
    if token_file is not None and token_file.exists():
        raise PKIError(f"{token_file} exists; a token file is never overwritten")
    token = TokenStore(enroll_dir(out)).issue(name, role, hosts, ttl, url, (out / "ca.crt").read_bytes())
    text = encode(token) + "\n"
    if token_file is not None and not write_atomic(token_file, text.encode("ascii"), mode=PRIVATE_MODE):
        raise PKIError(f"{token_file} appeared meanwhile; revoke token {token.id} (make-certs --revoke-token)")
    expires = dt.datetime.fromtimestamp(token.expires, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    EnrollmentAudit(enroll_dir(out) / "audit.log").record(
        "token", "issued", token=token.id, common_name=name, detail=f"{role} {','.join(hosts)} until {expires}"
    )
    print(f"token {token.id} for {role} {name} valid until {expires}", file=sys.stderr)
    return "" if token_file is not None else text


def list_tokens(out: Path) -> str:
    load_authority(out)  # the CA's directory, or a one-line error (and nothing created)
    now = time.time()
    lines = [f"{'id':<16}  {'state':<8}  {'role':<9}  {'name':<20}  expires (UTC)         hosts"]
    for entry in TokenStore(enroll_dir(out)).list():
        expires = dt.datetime.fromtimestamp(entry.expires, dt.UTC).strftime("%Y-%m-%d %H:%M:%S")
        lines.append(
            f"{entry.id:<16}  {entry.status(now):<8}  {entry.role:<9}  {entry.name:<20}  {expires}   "
            f"{','.join(entry.hosts)}"
        )
    return "\n".join(lines)


def revoke_token(out: Path, token_id: str) -> str:
    load_authority(out)
    entry = TokenStore(enroll_dir(out)).revoke(token_id)
    EnrollmentAudit(enroll_dir(out) / "audit.log").record(
        "token", "revoked" if entry.state == "revoked" else "unchanged", token=token_id, common_name=entry.name
    )
    return f"token {token_id} for {entry.name}: {entry.state}"


def serve(out: Path, listen: str, days: int | None) -> int:
    """Run the service in the foreground until SIGTERM/SIGINT."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    host, port = parse_listen(listen)
    lifetime = dt.timedelta(days=days) if days is not None else ENROLL_LIFETIME
    signals = {signal.SIGTERM, signal.SIGINT}
    signal.pthread_sigmask(signal.SIG_BLOCK, signals)
    try:
        service = open_service(out, host, port, lifetime=lifetime)
    except OSError as exc:
        raise PKIError(f"--serve {listen}: cannot listen: {exc.strerror or exc}") from exc
    shown = f"[{host}]" if ":" in host else host
    url = f"https://{shown}:{service.port}"
    write_atomic(enroll_dir(out) / "service.json", json.dumps({"url": url}).encode(), mode=PUBLIC_MODE, overwrite=True)
    service.issuer.audit.record("start", "ok", address=url, detail=f"certificates live {lifetime.days} days")
    thread = threading.Thread(target=service.serve_forever, name="enroll-service", daemon=True)
    thread.start()
    print(f"enrollment service on {url} (audit log {enroll_dir(out) / 'audit.log'})", file=sys.stderr, flush=True)
    signal.sigwait(signals)
    service.shutdown()
    service.server_close()
    service.issuer.audit.record("stop", "ok")
    return 0


def enroll(args: argparse.Namespace, name_check: str | None) -> str:
    """``--enroll``: a key made here, its certificate from the service, all written under ``--out``."""
    if args.token_file is None:
        raise PKIError("--enroll reads the token from --token-file FILE (or - for stdin), never from the command line")
    text = enroll_client.read_token(str(args.token_file))
    if name_check is not None:
        try:
            named = decode(text).name
        except TokenRefused:
            raise PKIError("the token is not an enrollment token (smon-enroll-1.…); copy it whole") from None
        if named != name_check:
            raise PKIError(f"the token is for {named}, not {name_check}; it was not used")
    token, answer = enroll_client.enroll(text, args.enroll or None)
    written = enroll_client.install_enrolled(args.out.resolve(), token, answer)
    expires = answer.cert.not_valid_after_utc.strftime("%Y-%m-%d %H:%M UTC")
    return (
        f"enrolled {token.role} {token.name} (certificate until {expires}): {', '.join(str(p) for p in written)}; "
        f"set tls.renew.url to {args.enroll or token.url} to renew automatically"
    )
