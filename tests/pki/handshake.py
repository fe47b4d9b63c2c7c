"""One real TLS handshake on 127.0.0.1 between two contexts, with both sides' outcomes."""

from __future__ import annotations

import socket
import ssl
import threading
from dataclasses import dataclass
from typing import cast

TIMEOUT = 5.0


@dataclass
class Outcome:
    server_error: BaseException | None
    client_error: BaseException | None
    version: str | None = None
    peer_cn: str | None = None

    @property
    def ok(self) -> bool:
        return self.server_error is None and self.client_error is None


def handshake(server: ssl.SSLContext, client: ssl.SSLContext, server_hostname: str = "127.0.0.1") -> Outcome:
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(TIMEOUT)
    result: dict[str, object] = {}

    def serve() -> None:
        try:
            conn, _ = listener.accept()
        except OSError as exc:
            result["server_error"] = exc
            return
        conn.settimeout(TIMEOUT)
        try:
            with server.wrap_socket(conn, server_side=True) as tls:
                result["version"] = tls.version()
                peer = tls.getpeercert()
                # typeshed types every getpeercert() value as the union of all fields' shapes; subject is RDNs
                rdns = cast("tuple[tuple[tuple[str, str], ...], ...]", peer.get("subject", ())) if peer else ()
                subject = dict(rdn[0] for rdn in rdns)
                result["peer_cn"] = subject.get("commonName")
                tls.sendall(b"ok")
        except (OSError, ssl.SSLError) as exc:
            result["server_error"] = exc
            conn.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    client_error: BaseException | None = None
    try:
        with (
            socket.create_connection(listener.getsockname(), timeout=TIMEOUT) as raw,
            client.wrap_socket(raw, server_hostname=server_hostname) as tls,
        ):
            # TLS 1.3 client certificates are checked after the client's Finished: read to see the verdict
            if tls.recv(2) != b"ok":
                raise ConnectionError("server closed without answering")
    except (OSError, ssl.SSLError) as exc:
        client_error = exc
    thread.join(TIMEOUT)
    listener.close()
    assert not thread.is_alive(), "server side of the handshake did not finish"
    return Outcome(
        result.get("server_error"),  # type: ignore[arg-type]
        client_error,
        result.get("version"),  # type: ignore[arg-type]
        result.get("peer_cn"),  # type: ignore[arg-type]
    )
