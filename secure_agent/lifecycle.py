"""The agent's life: check material and start, serve, reload on SIGHUP, stop on SIGTERM/SIGINT.

:class:`Agent` is what both ``secure-agent`` and the tests run. Start-up refuses (``StartupError``,
one line naming the file or key) on missing or unusable TLS material, key files readable by group
or others, an unusable audit log or an address that cannot be bound; open or empty allowlists are
already refused by the config model.

A restart does not reopen a replay window. The replay cache is loaded at start with the nonces of
the tokens accepted within the clock window, read back from the audit log, which records each one
before its call is answered (:mod:`secure_agent.audit_replay`); and tokens dated before the start
are refused as well (:func:`_token_floor`), which covers what the log cannot: records a power loss
took before they reached the disk, or a log moved aside.

A reload re-reads the config file and rebuilds the whole policy (certificates, CRL, HMAC keys,
allowlists) before swapping it in; if anything is wrong the old policy stays in force and the
failure is logged and audited. Rate-limit buckets and the replay cache are kept across reloads.
Listening address, name, server limits, metrics and ``max_clock_skew`` need a restart.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

from pki.configfile import load_config
from pki.errors import PKIError
from pki.renewal import DEFAULT_TIMING, RenewalTiming, Renewer, check_installable
from pki.tokens import FORWARD_SKEW, Verifier
from pki.validity import certificate_not_after, crl_next_update, days_left
from secure_agent import __version__
from secure_agent.audit import AuditLog, check_audit_path
from secure_agent.audit_replay import recorded_tokens
from secure_agent.audit_rotation import RotationPolicy
from secure_agent.config import AgentConfig
from secure_agent.dispatch import MetricsSource
from secure_agent.errors import AuditError, StartupError
from secure_agent.guard import Policy, load_policy
from secure_agent.probes import acknowledge
from secure_agent.ratelimit import RateLimiter
from secure_agent.refusals import Budget, RefusalRecorder
from secure_agent.server import AgentServer

EXPIRY_CHECK_INTERVAL = 86_400.0  # the agent looks at its certificate and CRL at start, on reload and daily
CERT_WARNING_DAYS = 30.0  # as the collector's thresholds.certificate_expiry_warning_days default
CRL_WARNING_DAYS = 7.0  # a CRL lives 30 days and is re-signed every few weeks: secure-audit check's margin

logger = logging.getLogger(__name__)

DEFAULT_STOP_TIMEOUT = 5.0
_RESTART_ONLY = (
    "name", "host", "port", "server", "metrics", "audit_log", "audit_rotation", "audit_refusals", "sample_interval",
    "buffer",
)



class ManagedMetrics(MetricsSource, Protocol):
    """:class:`secure_agent.metrics.MetricsService` as the agent runs it."""

    def start(self) -> None: ...

    def stop(self, timeout: float) -> object: ...


MetricsFactory = Callable[[AgentConfig], ManagedMetrics]


def check(config: AgentConfig) -> Policy:
    """Everything ``--check`` validates beyond the config model: TLS material, keys, permissions, audit log.

    Raises :class:`StartupError` naming the file at fault.
    """
    try:
        policy = load_policy(config)
        if config.tls.renew is not None:
            check_installable(config.tls.cert, config.tls.key)
    except PKIError as exc:
        raise StartupError(str(exc)) from exc
    check_audit_path(config.audit_log)
    return policy


def _token_floor(started_at: float, last_record: float | None) -> float:
    """The oldest token timestamp (whole seconds) this run accepts.

    Tokens older than the start are refused. Timestamps are whole seconds, so after a restart
    within the second of the last record of the previous run (which may have accepted a token
    of that second), that second is refused too.

    The replay cache loaded from the audit log makes this redundant for every token whose record
    reached the disk, but not for the rest: a power loss may take the records of the last
    ``server.audit_sync_interval`` (their tokens, dated before this start, are refused here), and
    an operator may move a damaged log aside. Kept as the second, independent layer.
    """
    floor = math.floor(started_at)
    if last_record is not None and math.floor(last_record) >= floor:
        floor = math.floor(last_record) + 1
    return float(floor)


def _default_metrics(config: AgentConfig) -> ManagedMetrics:
    from secure_agent.metrics import MetricsService

    return MetricsService(config)


class Agent:
    def __init__(
        self,
        config: AgentConfig,
        *,
        config_path: Path | None = None,
        metrics: MetricsFactory = _default_metrics,
        clock: Callable[[], float] = time.time,
        renewal: RenewalTiming = DEFAULT_TIMING,
    ) -> None:
        self.config = config
        self._renewal_timing = renewal
        self.renewer: Renewer | None = None
        self.config_path = config_path
        self.started_at = clock()
        policy = check(config)
        security = config.security
        kept = config.audit_rotation
        rotation = RotationPolicy(kept.max_bytes, kept.backup_count, kept.ceiling)
        self.audit = AuditLog(
            config.audit_log, config.name, sync_interval=config.server.audit_sync_interval, rotation=rotation
        )
        try:
            self.audit.open()
        except AuditError as exc:
            self.audit.close()  # a failed first write started the retry thread: nobody else would stop it
            raise StartupError(str(exc)) from exc
        except BaseException:
            self.audit.close()
            raise
        try:
            self._verifier = self._verifier_with_recorded_tokens(config, policy, clock)
        except BaseException:
            self.audit.close()
            raise
        self._limiter = RateLimiter(security.rate_limit.per_second, security.rate_limit.burst)
        refusals = config.audit_refusals
        budget = Budget(
            refusals.burst,
            refusals.per_second,
            refusals.per_source_burst,
            refusals.per_source_per_second,
            refusals.summary_interval,
        )
        try:
            self._metrics = metrics(config)
            self._server = AgentServer(
                (config.host, config.port),
                name=config.name,
                policy=policy,
                verifier=self._verifier,
                limiter=self._limiter,
                audit=self.audit,
                limits=config.server,
                metrics=self._metrics,
                refusals=RefusalRecorder(self.audit, budget),
            )
        except BaseException:
            self.audit.close()
            raise
        self._thread: threading.Thread | None = None
        self._expiry_timer: threading.Timer | None = None
        self._reload_lock = threading.Lock()
        self._stopped = False

    def _verifier_with_recorded_tokens(
        self, config: AgentConfig, policy: Policy, clock: Callable[[], float]
    ) -> Verifier:
        """A verifier whose replay cache holds the tokens the audit log shows accepted within the window."""
        window = config.security.max_clock_skew
        preload = recorded_tokens(
            config.audit_log, now=self.started_at, window=window, backup_count=config.audit_rotation.ceiling
        )
        floor = _token_floor(self.started_at, self.audit.last_time)
        # a token is accepted dated at most FORWARD_SKEW ahead: unread records' tokens are no later than that
        raised = preload.floor(min(window, FORWARD_SKEW), self.started_at)
        if raised is not None and raised > floor:
            logger.warning(
                "the audit log could not be read back over the whole clock window (%s); tokens dated "
                "before %d are refused so that none accepted before this start can be replayed",
                preload.stopped_by,
                raised,
            )
            floor = raised
        verifier = Verifier(policy.keys, config.name, max_clock_skew=window, not_before=floor, clock=clock)
        for token in preload.tokens:
            verifier.cache.admit(token.key_id, token.nonce, token.ts, self.started_at, force=True)
        logger.info("replay cache: %d tokens loaded from the audit log", len(preload.tokens))
        return verifier

    @property
    def address(self) -> tuple[str, int]:
        return self.config.host, self._server.port

    @property
    def server(self) -> AgentServer:
        return self._server

    def start(self) -> None:
        """Bind, audit the start, start metrics and the accept loop; raises StartupError."""
        try:
            self._server.open()
        except OSError as exc:
            self.audit.close()
            where = f"{self.config.host}:{self.config.port}"
            raise StartupError(f"cannot listen on {where}: {exc.strerror or exc}") from exc
        host, port = self.address
        try:
            self.audit.record("start", "ok", address=f"{host}:{port}", version=__version__)
            for entry in self.config.security.acknowledged_findings:  # every silenced cause is on record
                state = "expired" if acknowledge.expired(entry, time.time()) else "active"
                self.audit.record("acknowledgement", state, detail=acknowledge.describe(entry))
                logger.info("acknowledged finding (%s): %s", state, acknowledge.describe(entry))
        except AuditError as exc:
            self._server.server_close()
            self.audit.close()
            raise StartupError(str(exc)) from exc
        try:
            self._start_renewal()
        except StartupError:
            self._server.server_close()
            self.audit.close()
            raise
        self._watch_expiry()
        self._metrics.start()
        self._thread = threading.Thread(
            target=self._server.serve, name="agent-accept", daemon=True
        )
        self._thread.start()
        logger.info("agent %s listening on %s:%d", self.config.name, host, port)

    def _start_renewal(self) -> None:
        """With ``tls.renew``, renew our certificate at the enrollment service and reload (docs/enrollment.md)."""
        tls_config = self.config.tls
        if tls_config.renew is None:
            return
        self.renewer = Renewer(
            tls_config.renew.url,
            tls_config.cert,
            tls_config.key,
            tls_config.ca,
            self._renewed,
            crl=tls_config.crl,
            timing=self._renewal_timing,
        )
        try:
            self.renewer.start()
        except (OSError, ValueError) as exc:  # read at start by check(); only a file changed since gets here
            self.renewer = None
            raise StartupError(f"{tls_config.cert}: cannot plan its renewal: {exc}") from exc
        logger.info("certificate renewal at %s planned for %s", tls_config.renew.url, time.ctime(self.renewer.due()))

    def _renewed(self) -> None:
        self._audit_quietly("certificate_renewed", "ok", detail=f"new key and certificate in {self.config.tls.cert}")
        self.reload()

    def reload(self) -> bool:
        """Re-read config and material; swap them in whole, or keep the old ones. True if swapped."""
        with self._reload_lock:
            try:
                config = load_config(self.config_path, AgentConfig) if self.config_path is not None else self.config
                policy = load_policy(config)
            except PKIError as exc:
                logger.error("reload refused, the current certificates, keys and allowlists stay: %s", exc)
                self._audit_quietly("reload", "failed", detail=str(exc))
                return False
            changed = [key for key in _RESTART_ONLY if getattr(config, key) != getattr(self.config, key)]
            if config.security.max_clock_skew != self.config.security.max_clock_skew:
                changed.append("security.max_clock_skew")
            if changed:
                logger.warning("reload: %s changed; that takes effect at the next restart", ", ".join(changed))
            self._server.policy = policy
            self._verifier.replace_keys(policy.keys)
            limit = config.security.rate_limit
            self._limiter.configure(limit.per_second, limit.burst)
            self.config = self.config.model_copy(update={"tls": config.tls, "security": config.security})
            if self.audit.broken is not None:
                try:
                    self.audit.reopen()
                except AuditError as exc:
                    logger.error("%s", exc)
            self._audit_quietly("reload", "ok")
            logger.info("reloaded certificates, CRL, HMAC keys and allowlists")
            self._check_expiry()
            return True

    def _watch_expiry(self) -> None:
        """Say in the log and the audit log when our certificate or CRL is close to expiry: now and daily."""
        self._check_expiry()
        timer = threading.Timer(EXPIRY_CHECK_INTERVAL, self._watch_expiry)
        timer.daemon = True
        timer.name = "agent-expiry-watch"
        self._expiry_timer = timer
        if not self._stopped:
            timer.start()

    def _check_expiry(self) -> None:
        tls_config = self.config.tls
        cert_warning = CERT_WARNING_DAYS
        if self.renewer is not None:  # renewed at 2/3 of its life: warn once half the rest is gone unrenewed
            try:
                cert_warning = min(cert_warning, (self.renewer.not_after() - self.renewer.due()) / 2 / 86_400)
            except (OSError, ValueError) as exc:
                logger.warning("cannot read %s to plan its renewal: %s", tls_config.cert, exc)
        items = [("tls.cert", "the agent's certificate", tls_config.cert, certificate_not_after, cert_warning)]
        if tls_config.crl is not None:
            items.append(("tls.crl", "the CRL's nextUpdate", tls_config.crl, crl_next_update, CRL_WARNING_DAYS))
        now = time.time()
        for key, what, path, read, warn in items:
            try:
                left = days_left(read(path), now)
            except (OSError, ValueError) as exc:
                logger.warning("cannot read %s (%s) to check its expiry: %s", path, key, exc)
                continue
            if left <= warn:
                detail = f"{what} expires in {left:.1f} days: renew it (docs/runbook.md); {key} {path}"
                logger.warning("%s", detail)
                self._audit_quietly("certificate_expiry", "warning", detail=detail)

    def _audit_quietly(self, event: str, outcome: str, **fields: object) -> None:
        try:
            self.audit.record(event, outcome, **fields)
        except AuditError as exc:
            logger.error("%s", exc)

    def stop(self, timeout: float = DEFAULT_STOP_TIMEOUT) -> None:
        """Stop serving (idle connections at once, busy ones within ``timeout``), audit, close."""
        if self._stopped:
            return
        self._stopped = True
        if self._expiry_timer is not None:
            self._expiry_timer.cancel()
        if self.renewer is not None:
            self.renewer.stop(timeout)
        if self._thread is not None:
            self._server.stop(timeout)
            self._thread.join(timeout)
        else:
            self._server.server_close()
        self._metrics.stop(timeout)
        self._audit_quietly("stop", "ok")
        self.audit.close()
        logger.info("agent %s stopped", self.config.name)
