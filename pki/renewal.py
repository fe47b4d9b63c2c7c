"""Automatic renewal: an enrolled agent or collector renews its certificate itself, with a new key each time.

A :class:`Renewer` thread wakes at 2/3 of the current certificate's lifetime (jittered by up to 5 % of that,
so that a fleet enrolled together does not renew together), makes a new key and CSR, asks the enrollment
service over mutual TLS with the current certificate (:func:`pki.enroll_client.renew`), installs the pair
(:func:`pki.enroll_client.install_pair`) and calls ``on_renewed`` (the agent's reload; the collector swaps its
client context at its next sweep). A failure is logged and tried again, backing off from a minute to an hour
(or the service's ``Retry-After``), never later than the certificate's end. The CRL the service answers
replaces ``tls.crl`` when it verifies against ``tls.ca`` and is newer: renewing hosts keep a fresh CRL too.

The trust anchor (``tls.ca``) is never replaced from an answer: moving to a new CA is the operator's call.
"""

from __future__ import annotations

import logging
import os
import random
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

from cryptography import x509

from pki.enroll_client import DEFAULT_TIMEOUT, Answer, EnrollmentFailed, install_pair, renew
from pki.errors import PKIError
from pki.files import PUBLIC_MODE, write_atomic
from pki.tls import load_revocations

logger = logging.getLogger(__name__)

RENEW_AT = 2 / 3
JITTER = 0.05
RETRY_FIRST = 60.0
RETRY_MAX = 3600.0


class RenewalTiming(NamedTuple):
    """When to renew: at ``at`` of the lifetime (± ``jitter`` of that wait); retries from ``retry_first``
    doubling to ``retry_max`` seconds. Tests shorten these; deployments keep the defaults."""

    at: float = RENEW_AT
    jitter: float = JITTER
    retry_first: float = RETRY_FIRST
    retry_max: float = RETRY_MAX


DEFAULT_TIMING = RenewalTiming()


def check_installable(cert: Path, key: Path) -> None:
    """Refuse (:class:`PKIError`, naming the directory) a setup where a renewal could not be installed: the
    directories of ``cert`` and ``key`` must be writable (a read-only ``/etc`` under systemd is the usual
    cause, deploy/README.md), so that start-up says so now rather than a failed renewal in weeks."""
    for folder in sorted({cert.parent, key.parent}):
        if not os.access(folder, os.W_OK | os.X_OK):
            raise PKIError(
                f"tls.renew: {folder} is not writable: renewal replaces the key and certificate there "
                "(a unit with ProtectSystem=strict needs ReadWritePaths for it, deploy/README.md)"
            )


class Renewer:
    """Renews ``cert``/``key`` at ``url`` in a thread of its own: :meth:`start`, :meth:`stop`."""

    def __init__(
        self,
        url: str,
        cert: Path,
        key: Path,
        ca: Path,
        on_renewed: Callable[[], object],
        *,
        crl: Path | None = None,
        timing: RenewalTiming = DEFAULT_TIMING,
        timeout: float = DEFAULT_TIMEOUT,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if not 0 < timing.at < 1 or not 0 <= timing.jitter < 1:
            raise ValueError("renewal: at must be in (0, 1) and jitter in [0, 1)")
        self.url = url
        self.cert, self.key, self.ca, self.crl = cert, key, ca, crl
        self.on_renewed = on_renewed
        self.timing = timing
        self.timeout = timeout
        self._clock = clock
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._planned: tuple[int, float] | None = None  # (serial, when) of the renewal planned for the current cert
        self.renewals = 0
        self.failures = 0
        self.last_error: str | None = None

    def due(self) -> float:
        """When the current certificate is to be renewed (Unix seconds), planned once per certificate."""
        cert = x509.load_pem_x509_certificate(self.cert.read_bytes())
        if self._planned is None or self._planned[0] != cert.serial_number:
            start, end = cert.not_valid_before_utc.timestamp(), cert.not_valid_after_utc.timestamp()
            wait = (end - start) * self.timing.at
            wait *= 1 + random.uniform(-self.timing.jitter, self.timing.jitter)  # noqa: S311 -- spreading, not secret
            self._planned = (cert.serial_number, start + wait)
        return self._planned[1]

    def not_after(self) -> float:
        return x509.load_pem_x509_certificate(self.cert.read_bytes()).not_valid_after_utc.timestamp()

    def renew_now(self) -> Answer:
        """Renew once, install, call ``on_renewed``; raises :class:`PKIError` (nothing installed) on failure."""
        answer = renew(self.url, self.cert, self.key, self.ca, self.timeout)
        install_pair(self.cert, self.key, answer)
        self._install_crl(answer.crl_pem)
        self.renewals += 1
        logger.info(
            "renewed %s with a new key: serial %x, valid until %s",
            self.cert,
            answer.cert.serial_number,
            answer.cert.not_valid_after_utc.strftime("%Y-%m-%d %H:%M:%S UTC"),
        )
        self.on_renewed()
        return answer

    def _install_crl(self, pem: bytes) -> None:
        if self.crl is None or not pem:
            return
        staged = self.crl.parent / f".{self.crl.name}.new"
        try:
            write_atomic(staged, pem, mode=PUBLIC_MODE, overwrite=True)
            fresh = load_revocations(staged, self.ca)
            current = load_revocations(self.crl, self.ca).next_update if self.crl.exists() else 0.0
            if fresh.next_update > current:
                staged.replace(self.crl)
                return
        except (PKIError, OSError) as exc:
            logger.warning("renewal: the CRL answered was not installed: %s", exc)
        staged.unlink(missing_ok=True)

    def start(self) -> None:
        self.due()  # an unreadable certificate fails here, at start, not later in the thread
        self._thread = threading.Thread(target=self._run, name="cert-renewal", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def _run(self) -> None:
        retry = self.timing.retry_first
        while not self._stop.is_set():
            try:
                wait = self.due() - self._clock()
            except (OSError, ValueError) as exc:
                logger.error("renewal: cannot read %s: %s", self.cert, exc)
                self._stop.wait(retry)
                continue
            if wait > 0:
                self._stop.wait(wait)
                continue
            try:
                self.renew_now()
            except PKIError as exc:
                self.failures += 1
                self.last_error = str(exc)
                delay = retry
                if isinstance(exc, EnrollmentFailed) and exc.retry_after is not None:
                    delay = max(delay, exc.retry_after)
                try:
                    left = self.not_after() - self._clock()
                except (OSError, ValueError):
                    left = delay
                delay = max(1.0, min(delay, left / 2)) if left > 0 else delay
                logger.error("renewal of %s failed (next try in %.0f s): %s", self.cert, delay, exc)
                retry = min(retry * 2, self.timing.retry_max)
                self._stop.wait(delay)
                continue
            except Exception:  # a bug of ours must not end renewal for good: logged, tried again later
                logger.exception("renewal of %s failed unexpectedly", self.cert)
                self._stop.wait(retry)
                continue
            retry = self.timing.retry_first
