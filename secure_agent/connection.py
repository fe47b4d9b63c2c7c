"""One admitted connection, in its worker thread: the guards after the allowlist, cheapest first.

1. TLS handshake (mutual; our CA, TLS floor) within ``handshake_timeout``.
2. Client identity: the certificate's serial against ``tls.crl`` (loaded once per policy, not in
   every handshake: :class:`pki.tls.Revocations`), then its common name against
   ``security.allowed_clients`` (403 either way).
   A kept-alive connection made before a reload is judged again at its next request (address, CA,
   CRL, allowed names): it carries on if still admitted, else that request gets 403 and an audit
   record, so a revocation or a narrower allowlist applies to every client at its next request.
3. Then for every request on the kept-alive connection, each within ``request_timeout``:
   strict head (400) -> rate limit by certificate fingerprint (429 + Retry-After) -> path (404) and
   method (405) -> framing: Content-Length required and capped (411/400/413), no Transfer-Encoding,
   identity Content-Encoding only (415) -> body -> request token (401) -> defused XML, caps ->
   dispatch -> audit record -> response. A refusal ends the connection.

Every step that refuses writes one audit record, within the refusal budget (:mod:`secure_agent.refusals`:
what goes over it is counted into summary records). A served call is answered only once its audit
record is written; when the audit log fails, the call is refused with 503 (fail closed). The record
of every call whose token passed (served, faulted, or refused for want of the record) carries the
token's key id, ``ts`` and ``nonce``: the audit log is the replay cache that survives a restart
(:mod:`secure_agent.audit_replay`).
"""

from __future__ import annotations

import contextlib
import functools
import logging
import secrets
import socket
import ssl
import time
from collections.abc import Mapping
from typing import Any

from pki.errors import TokenError
from pki.tls import PeerIdentity, peer_identity
from pki.tokens import Token, key_belongs
from pki.tokens import parse as parse_token
from secure_agent import httpframe
from secure_agent.context import Shared
from secure_agent.dispatch import handle_call
from secure_agent.errors import AuditError
from secure_agent.guard import Policy, identity_refusal, still_admitted
from secure_agent.httpframe import HTTPRefusal, Reader, ReadTimeout
from secure_agent.refusals import source_of

logger = logging.getLogger(__name__)

RPC_PATH = "/RPC2"
REFUSAL_SEND_TIME = 1.0  # seconds to send a refusal
LINGER_TIME = 0.5  # seconds to drain what a refused client still sends, so it reads our answer, not a reset
LINGER_BYTES = 256 * 1024
XML_TYPE = "text/xml; charset=utf-8"
IDENTITY_CACHE_SIZE = 256  # client certificates whose parsed identity is kept
TLS_HEADER = 5  # a TLS record's header: type, version (2 bytes), length (2 bytes)
TLS_HANDSHAKE = 0x16
MAX_TLS_RECORD = 16384 + 2048  # the largest record length TLS allows


def format_peer(address: Any) -> str:
    """``host:port`` for IPv4, ``[host]:port`` for IPv6."""
    host, port = str(address[0]), address[1]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


@functools.lru_cache(maxsize=IDENTITY_CACHE_SIZE)
def _identity_of(der: bytes) -> PeerIdentity:
    """:func:`pki.tls.peer_identity`, remembered per certificate: it is a pure function of the DER
    bytes (the cache compares them whole), and parsing them again took ~9% of a new connection.
    Nothing about trust is cached: OpenSSL verifies the chain in every handshake, and the serial is
    checked against ``tls.crl`` after it, for every connection (step 2 of the module docstring)."""
    return peer_identity(der)


def _handshake_reason(exc: OSError) -> str:
    if isinstance(exc, TimeoutError):
        return "timeout"
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"certificate: {exc.verify_message}"
    if isinstance(exc, ssl.SSLError):
        return str(exc.reason or exc.library or "tls_error")
    return f"connection: {exc.strerror or type(exc).__name__}"


class Connection:
    def __init__(self, shared: Shared, raw: socket.socket, client_address: Any) -> None:
        self.shared = shared
        self.peer = format_peer(client_address)
        self.host = str(client_address[0])
        self.idle = False
        self.started = False  # its whole ClientHello arrived (Slots displaces the others first)
        self.arrived = time.monotonic()
        self.displaced = False
        self._raw = raw
        self._sock: socket.socket = raw
        self._policy = shared.policy  # a reload since is judged at the next request (_judged_again)
        self._identity: PeerIdentity | None = None
        self._der: bytes | None = None
        self._request_id: str | None = None
        self._linger = False

    # -- audit ------------------------------------------------------------------------------------

    def _fields(self, fields: dict[str, object]) -> dict[str, object]:
        identity = self._identity
        if identity is not None:
            fields.update(
                subject=identity.subject,
                common_name=identity.common_name,
                fingerprint=identity.fingerprint,
                serial=identity.serial,
            )
        fields.update(peer=self.peer, request_id=self._request_id)
        return fields

    def _audit(self, event: str, outcome: str, **fields: object) -> bool:
        """A record that is always written (a call): False when the log cannot take it."""
        try:
            self.shared.audit.record(event, outcome, **self._fields(fields))
        except AuditError as exc:
            logger.error("%s", exc)
            return False
        return True

    def _refusal(self, event: str, reason: str, **fields: object) -> None:
        """A refusal's record, within the refusal budget: by certificate once known, else by network."""
        identity = self._identity
        source = identity.fingerprint if identity is not None else source_of(self.host)
        self.shared.refusals.refuse(source, event, reason, self._fields(fields))

    # -- the connection ---------------------------------------------------------------------------

    def _await_client_hello(self, deadline: float) -> None:
        """Until the first TLS record (the ClientHello) has arrived whole, unread: an honest client sends it
        at once, while a peer that only holds a slot sends nothing or trickles it (:class:`Slots`)."""
        header = self._peek(TLS_HEADER, deadline)
        if header[0] == TLS_HANDSHAKE:
            self._peek(TLS_HEADER + min(int.from_bytes(header[3:5], "big"), MAX_TLS_RECORD), deadline)

    def _peek(self, size: int, deadline: float) -> bytes:
        raw = self._raw
        raw.settimeout(max(0.001, deadline - time.monotonic()))
        raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVLOWAT, size)  # the peek waits for all of them
        try:
            data = raw.recv(size, socket.MSG_PEEK)
        finally:
            raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVLOWAT, 1)
        if len(data) < size:
            raise ConnectionAbortedError("closed before the handshake")
        return data

    def displace(self) -> None:
        """From the accept loop: a newer connection took this unfinished one's slot; end it now."""
        self.displaced = True
        self.cut()

    def run(self) -> None:
        limits = self.shared.limits
        deadline = time.monotonic() + limits.handshake_timeout
        try:
            self._await_client_hello(deadline)
            self.started = True
            self._raw.settimeout(max(0.001, deadline - time.monotonic()))
            sock = self._policy.context.wrap_socket(self._raw, server_side=True, do_handshake_on_connect=False)
            self._sock = sock
            # CPython applies the socket timeout to the whole handshake as one deadline, however
            # many reads it takes, so a peer that trickles its handshake is cut off as well.
            sock.do_handshake()
        except OSError as exc:
            self._refusal("handshake_failed", "displaced" if self.displaced else _handshake_reason(exc))
            return
        der = sock.getpeercert(binary_form=True)
        if der is None:
            self._refusal("identity_refused", "no_certificate")
            return
        self._der = der
        try:
            self._identity = _identity_of(der)
        except ValueError:  # verified by OpenSSL, yet not parseable by cryptography: refuse, do not guess
            self._refusal("identity_refused", "unparseable_certificate")
            return
        reader = Reader(sock)
        refusal = identity_refusal(self._policy, self._identity.common_name, self._identity.serial, time.time())
        if refusal is not None:  # before any request byte is read
            self._refusal("identity_refused", refusal, status=403)
            self._answer_refused_head(reader, 403)
            return
        if not self.shared.slots.establish(self):  # this address's (or every) established slot is taken
            self._refusal("connection_denied", "too_many_connections", status=503)
            self._answer_refused_head(reader, 503, {"Retry-After": "1"})
            return
        self._serve(reader)

    def _judged_again(self, reader: Reader, policy: Policy) -> bool:
        """Reloaded since this connection's handshake: carry on under ``policy`` if it still admits the
        client (address, CA, CRL, allowed names), else answer this request 403 with an audit record."""
        identity, der = self._identity, self._der
        if identity is None or der is None:
            return False
        refusal = still_admitted(policy, self.host, der, identity.common_name, identity.serial, time.time())
        if refusal is not None:
            self._refusal("identity_refused", refusal, status=403, detail="judged again after a reload")
            self._answer_refused_head(reader, 403)
            return False
        self._policy = policy
        return True

    def _answer_refused_head(self, reader: Reader, status: int, headers: Mapping[str, str] | None = None) -> None:
        """Read the request head (so the client reads our answer) and refuse it."""
        try:
            reader.read_head(time.monotonic() + self.shared.limits.request_timeout)
        except (HTTPRefusal, ReadTimeout, EOFError, OSError):
            return
        self._send_refusal(status, headers)

    def _serve(self, reader: Reader) -> None:
        limits = self.shared.limits
        wait = limits.request_timeout  # the first request must come promptly after the handshake
        for left in range(limits.max_requests_per_connection - 1, -1, -1):
            if self.shared.stopping:
                return
            self.idle = True
            started = reader.wait_for_request(time.monotonic() + wait)
            self.idle = False
            if not started or self.shared.stopping:
                return
            policy = self.shared.policy
            if policy is not self._policy and not self._judged_again(reader, policy):
                return
            # the last request this connection may carry is answered with "Connection: close", so
            # the client knows not to send another on it (rather than finding it closed under it)
            if not self._one_request(reader, time.monotonic() + limits.request_timeout, last=left == 0):
                return
            wait = limits.idle_timeout

    def _one_request(self, reader: Reader, deadline: float, *, last: bool = False) -> bool:
        """Handle one request; True to keep the connection for another."""
        shared = self.shared
        self._request_id = secrets.token_hex(8)
        try:
            head = httpframe.parse_head(reader.read_head(deadline))
        except HTTPRefusal as refusal:
            return self._refuse(refusal.status, "bad_request", refusal.reason)
        except ReadTimeout:
            return self._refuse(408, "bad_request", "request_timeout")
        except (EOFError, OSError):
            self._refusal("bad_request", "incomplete_request")
            return False
        request_fields: dict[str, object] = {"http_method": head.method, "path": head.target}
        if shared.audit.broken is not None:
            logger.error("refusing a request: the audit log is unusable (%s)", shared.audit.broken)
            return self._refuse(503, "bad_request", "audit_unavailable", fields=request_fields)
        identity = self._identity
        if identity is None:  # run() sets it before any request; never serve without it
            return False
        decision = shared.limiter.take(identity.fingerprint)
        if not decision.allowed:
            headers = {"Retry-After": str(decision.retry_after)}
            return self._refuse(429, "rate_limited", "rate_limited", headers=headers, fields=request_fields)
        if head.target != RPC_PATH:
            return self._refuse(404, "bad_request", "unknown_path", fields=request_fields)
        if head.method != "POST":
            allow = {"Allow": "POST"}
            return self._refuse(405, "bad_request", "method_not_allowed", headers=allow, fields=request_fields)
        try:
            length = httpframe.body_length(head, shared.limits.max_body_bytes)
            body = reader.read_exact(length, deadline)
        except HTTPRefusal as refusal:
            return self._refuse(refusal.status, "bad_request", refusal.reason, fields=request_fields)
        except ReadTimeout:
            return self._refuse(408, "bad_request", "request_timeout", fields=request_fields)
        except (EOFError, OSError):
            self._refusal("bad_request", "incomplete_body", **request_fields)
            return False
        token: Token | None = None
        try:
            token = parse_token(head.headers.get("authorization"))  # parsed once: checked, then recorded
            if not key_belongs(token.key_id, identity.common_name):  # another holder's key: refused unverified
                raise TokenError("key_not_bound")
            key_id = shared.verifier.verify_parsed(token, body)
        except TokenError as refused:
            # the key id the header claims (None if it did not parse), for the audit log
            fields = {**request_fields, "key_id": token.key_id if token is not None else None}
            if refused.reason == "replay_capacity":  # this key's share of the replay cache is full for now
                headers = {"Retry-After": str(refused.retry_after or 1)}
                return self._refuse(429, "rate_limited", refused.reason, headers=headers, fields=fields)
            event = "replay" if refused.reason == "replay" else "token_refused"
            headers = {"WWW-Authenticate": "SMON1-HMAC-SHA256"}
            return self._refuse(401, event, refused.reason, headers=headers, fields=fields)
        # The nonce is in the replay cache now; the call record carries it (with ts) so that the
        # next start can load it again (secure_agent.audit_replay), and it is written before the answer.
        accepted = {"key_id": key_id, "ts": token.ts, "nonce": token.nonce}
        outcome = handle_call(shared.methods, body)
        served = "served" if outcome.fault is None else "faulted"
        if not self._audit("call", served, method=outcome.method, reason=outcome.fault, status=200, **accepted):
            return self._refuse(503, "call", "audit_unavailable", fields={"method": outcome.method, **accepted})
        keep_alive = head.keep_alive and not last and not shared.stopping
        data = httpframe.response(
            200, outcome.body, content_type=XML_TYPE, keep_alive=keep_alive, headers={"X-Request-Id": self._request_id}
        )
        try:
            httpframe.send_all(self._sock, data, deadline)
        except (ReadTimeout, OSError):
            return False
        return keep_alive

    def _refuse(
        self,
        status: int,
        event: str,
        reason: str,
        *,
        headers: Mapping[str, str] | None = None,
        fields: Mapping[str, object] | None = None,
    ) -> bool:
        """Audit a refusal, answer it with a generic body, and end the connection (returns False).

        A call whose own record could not be written is recorded (tried) as such; every other refusal
        goes through the refusal budget."""
        if event == "call":
            self._audit(event, "refused", reason=reason, status=status, **(fields or {}))
        else:
            self._refusal(event, reason, status=status, **(fields or {}))
        self._send_refusal(status, headers)
        return False

    def _send_refusal(self, status: int, headers: Mapping[str, str] | None = None) -> None:
        extra = dict(headers or {})
        if self._request_id is not None:
            extra["X-Request-Id"] = self._request_id
        data = httpframe.response(status, httpframe.refusal_body(status), headers=extra)
        try:
            httpframe.send_all(self._sock, data, time.monotonic() + REFUSAL_SEND_TIME)
        except (ReadTimeout, OSError):
            return
        self._linger = True

    # -- closing ------------------------------------------------------------------------------------

    def cut(self) -> None:
        """From another thread: end this connection now (its blocked read returns)."""
        with contextlib.suppress(OSError):  # already closed
            socket.socket.shutdown(self._sock, socket.SHUT_RDWR)

    def close(self) -> None:
        sock = self._sock
        if self._linger:
            self._drain(sock)
        try:
            sock.close()
        finally:
            if sock is not self._raw:
                self._raw.close()

    @staticmethod
    def _drain(sock: socket.socket) -> None:
        """Half-close, then discard what the client still sends for a moment: it reads our answer."""
        deadline = time.monotonic() + LINGER_TIME
        drained = 0
        try:
            socket.socket.shutdown(sock, socket.SHUT_WR)
            while drained < LINGER_BYTES:
                left = deadline - time.monotonic()
                if left <= 0:
                    return
                sock.settimeout(left)
                data = socket.socket.recv(sock, 65536)
                if not data:
                    return
                drained += len(data)
        except OSError:
            return
