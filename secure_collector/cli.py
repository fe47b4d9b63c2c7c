"""``secure-collector --config FILE [--once | --check] [--shard I/N]``: the collector's entry point.

Exit codes: 0 fine (``--once``: every agent answered and the sweep is stored), 1 (``--once``) some agent
did not answer, 2 bad command line, configuration, TLS material, key, spool directory or storage
configuration (one line per problem on stderr naming the file and key, never a traceback), 3 (``--once``)
every agent answered but the sweep only reached the spool (storage unavailable; it is stored when storage
is back). SIGTERM and SIGINT stop the long-running mode cleanly: polls in flight finish (each within
``timeout``), everything collected is stored or spooled.

``--once`` beside a running collector of the same ``spool_dir`` (:mod:`.runlock`) only polls and prints:
it leaves that collector's storage (and its lock), spool and alert state alone.
"""

from __future__ import annotations

import argparse
import logging
import math
import signal
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

from pki import tokens
from pki.configfile import load_config
from pki.errors import PKIError
from pki.renewal import DEFAULT_TIMING, RenewalTiming, Renewer, check_installable
from pki.tls import certificate_identity, client_context
from secure_collector import __version__
from secure_collector.alerts import AlertEngine
from secure_collector.alertstate import AlertState, state_path
from secure_collector.audittrail import AuditTrail
from secure_collector.backfill import Backfill, BackfillState, FollowUps
from secure_collector.check import run_check
from secure_collector.config import CollectorConfig, ExporterConfig
from secure_collector.errors import CollectorError
from secure_collector.expiry import OwnMaterial, common_name
from secure_collector.exporter import Exporter, FleetView
from secure_collector.hook import AlertHook
from secure_collector.housekeeping import Housekeeping
from secure_collector.membership import DatabaseCursors, Membership, member_name
from secure_collector.outbox import outbox_dir
from secure_collector.poller import Poller, parse_shard, select_shard
from secure_collector.runlock import RunLock, lock_path
from secure_collector.sink import Delivery, LazyStore, PollResult, Recorder
from secure_collector.spool import Spool
from secure_collector.transport import AgentConnection
from storage import open_store
from storage.errors import StorageConfigError, StorageError, StorageUnavailable
from storage.escape import escape
from storage.mysql import MySQLStore

logger = logging.getLogger("secure_collector")

PROG = "secure-collector"
SHUTDOWN_FLUSH_SECONDS = 10.0
SERVICE_LOCK_WAIT_SLACK = 10.0
SERVICE_LOCK_WAIT_MAX = 600.0
"""At start the service waits this long at most for a ``--once`` run holding ``spool_dir`` (one sweep)."""
_LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class OneLineFormatter(logging.Formatter):
    """Every record's message escaped (:func:`storage.escape.escape`): one record is one line, whatever
    a message quotes. The sites that log agent text escape it too; this holds for the ones not yet written."""

    def formatMessage(self, record: logging.LogRecord) -> str:
        return escape(super().formatMessage(record))


class _Fatal(Exception):
    """A start-up problem: one line for stderr, exit 2."""


EXIT_SPOOLED = 3
"""``--once``: every agent answered, but the sweep waits in the spool (storage unavailable)."""


@dataclass
class Collector:
    """Everything a run needs, built and checked at start-up; ``delivery`` None for a probe (below)."""

    config: CollectorConfig
    poller: Poller
    delivery: Delivery | None
    spool: Spool | None
    hook: AlertHook | None
    lock: RunLock
    exporter: Exporter | None = None
    membership: Membership | None = None
    housekeeping: Housekeeping | None = None
    renewer: Renewer | None = None

    def close(self) -> None:
        if self.housekeeping is not None:
            self.housekeeping.close()
        if self.renewer is not None:
            self.renewer.stop()
        self.poller.close()
        if self.membership is not None:
            self.membership.close()
        if self.exporter is not None:
            self.exporter.close()
        if self.hook is not None:
            # alerts still waiting stay in the outbox for the next start; storage learns how many
            self.hook.close(SHUTDOWN_FLUSH_SECONDS)
            if self.poller.recorder is not None:
                self.poller.recorder.flush(final=True)
        if self.delivery is not None:
            self.delivery.retry(force=True)
            self.delivery.store.close()
        if self.spool is not None:
            self.spool.close()
        self.lock.release()


def _arguments(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog=PROG, description="Poll secure-monitor agents over mutual TLS, store samples, raise alerts."
    )
    parser.add_argument("--config", required=True, type=Path, metavar="FILE", help="collector configuration (JSON)")
    parser.add_argument("--once", action="store_true", help="poll every agent once, print their states, exit")
    parser.add_argument(
        "--check", action="store_true", help="check config, TLS material, spool_dir and storage; poll nothing"
    )
    parser.add_argument(
        "--shard",
        metavar="I/N|auto",
        help="poll only shard I of N of the agents (rendezvous hashing); auto: share them with the live collectors "
        "of the same MySQL store, failing over when one stops",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    return parser.parse_args(argv)


def _setup_logging(config: CollectorConfig, handlers: list[logging.Handler]) -> None:
    """Log to stderr and to ``log_file`` (or the predecessor's ``storage.log_file``); ``handlers`` gets them."""
    root = logging.getLogger()
    root.setLevel(config.log_level)
    stream = logging.StreamHandler(sys.stderr)
    handlers.append(stream)
    log_file = config.log_file or config.storage.log_file
    if log_file is not None:
        try:
            handlers.append(logging.FileHandler(log_file, encoding="utf-8"))
        except OSError as exc:
            raise _Fatal(f"{log_file}: cannot open log_file: {exc.strerror or exc}") from exc
    for handler in handlers:
        handler.setFormatter(OneLineFormatter(_LOG_FORMAT))
        root.addHandler(handler)


def _remove_logging(handlers: list[logging.Handler]) -> None:
    root = logging.getLogger()
    for handler in handlers:
        root.removeHandler(handler)
        handler.close()


def build(
    args: argparse.Namespace, handlers: list[logging.Handler], renewal: RenewalTiming = DEFAULT_TIMING
) -> Collector:
    """Load and check everything; raise :class:`_Fatal` with one line naming what is wrong.

    With ``tls.renew`` the service (not ``--once``) renews its client certificate at the enrollment service
    (``renewal``: when) and polls with it from the next sweep on.
    """
    try:
        config = load_config(args.config, CollectorConfig)
    except PKIError as exc:
        raise _Fatal(str(exc)) from exc
    agents = config.agents
    shard: tuple[int, int] | None = None
    auto = args.shard == "auto"
    if auto and config.storage.type != "mysql":
        raise _Fatal(f'{args.config}: --shard auto: needs storage.type "mysql" (the collectors coordinate through it)')
    if args.shard is not None and not auto:
        try:
            shard = parse_shard(args.shard)
        except ValueError as exc:
            raise _Fatal(str(exc)) from exc
        agents = select_shard(agents, *shard)
    _setup_logging(config, handlers)
    try:
        context = client_context(config.tls.cert, config.tls.key, config.tls.ca, config.tls.crl)
        key = tokens.load_key(config.hmac.key_file)
        name = certificate_identity(config.tls.cert).common_name
        if config.tls.renew is not None and not args.once:  # say it now, not at a failed renewal weeks later
            check_installable(config.tls.cert, config.tls.key)
    except PKIError as exc:
        raise _Fatal(f"{args.config}: {exc}") from exc
    if not tokens.key_belongs(config.hmac.key_id, name):  # agents refuse every token of another holder's key
        raise _Fatal(
            f"{args.config}: hmac.key_id: {config.hmac.key_id!r} is not this collector's: its certificate is "
            f"{name!r}, so the key id must be {name!r} or {name!r} followed by '/' and a label"
        )
    connections = [
        AgentConnection(a.name, a.host, a.port, context, config.hmac.key_id, key, timeout=config.timeout)
        for a in agents
    ]
    lock = _own_spool_dir(args, config, shard)
    if not lock.held:
        # the service of this spool_dir runs: poll and print only (no store, spool, alert state or hook)
        holder = lock.holder()
        print(
            f"{PROG}: a collector{f' (pid {holder})' if holder else ''} runs with {config.spool_dir}: "
            "polling without storing, spooling or alerting",
            file=sys.stderr,
        )
        probe = Poller(connections, None, poll_interval=config.poll_interval, max_workers=config.max_workers)
        return Collector(config, probe, None, None, None, lock)
    try:
        spool = Spool(config.spool_dir, config.spool_max_bytes)
        outbox = outbox_dir(config.spool_dir, shard)
        hook = AlertHook(config.alert_command, outbox, timeout=config.alert_timeout) if config.alert_command else None
    except CollectorError as exc:
        raise _Fatal(f"{args.config}: {exc}") from exc
    try:
        store = open_store(config.storage)
        writer: LazyStore = LazyStore(lambda: store)
    except StorageConfigError as exc:
        raise _Fatal(f"{args.config}: storage: {exc}") from exc
    except StorageUnavailable as exc:
        logger.warning("storage unavailable at start (%s); spooling until it is back", exc)
        writer = LazyStore(lambda: open_store(config.storage))
    delivery = Delivery(writer, spool)
    engine = AlertEngine(config.thresholds)
    state = AlertState(state_path(config.spool_dir, shard))
    state.load(engine, {a.name for a in agents})
    trail = AuditTrail([a.name for a in agents], max_records_per_sweep=config.audit_fetch.max_records_per_sweep)
    backfill = Backfill([a.name for a in agents])
    cursors: BackfillState | DatabaseCursors = BackfillState(config.spool_dir)
    membership = None
    if auto and not args.once:  # --once polls every agent: a check must not take agents from the others
        try:
            coordinator = open_store(config.storage)
        except StorageError as exc:
            raise _Fatal(f"{args.config}: --shard auto: cannot reach the shared database: {exc}") from exc
        if not isinstance(coordinator, MySQLStore):
            raise _Fatal(f'{args.config}: --shard auto: needs storage.type "mysql"')
        lease = config.shard_lease or 3 * config.poll_interval
        membership = Membership(
            coordinator, member_name(config.spool_dir), [a.name for a in agents], lease, backfill, audit=trail
        )
        cursors = DatabaseCursors(coordinator)
    backfill.load(cursors.load())
    view = FleetView(spool.pending_bytes) if config.exporter is not None and not args.once else None
    recorder = Recorder(
        delivery,
        engine,
        hook,
        state,
        trail,
        audit_hold=config.audit_fetch.alert_hold,
        observe=view.observe if view is not None else None,
        own=(common_name(config.tls.cert) or "collector", OwnMaterial(config.tls.cert, config.tls.ca, config.tls.crl)),
        backfill=(backfill, cursors),
    )
    poller = Poller(
        connections,
        recorder,
        poll_interval=config.poll_interval,
        max_workers=config.max_workers,
        backoff_max=config.backoff_max,
        follow_up=FollowUps(backfill=backfill, audit=trail),
        membership=membership,
    )
    exporter = _start_exporter(args, config.exporter, view) if config.exporter is not None and view else None
    renewer = _start_renewal(args, config, poller, renewal) if config.tls.renew is not None and not args.once else None
    return Collector(config, poller, delivery, spool, hook, lock, exporter, membership, renewer=renewer)


def _start_renewal(args: argparse.Namespace, config: CollectorConfig, poller: Poller, timing: RenewalTiming) -> Renewer:
    """Renew our client certificate at ``tls.renew.url``; each renewal gives the poller a new context."""
    tls_config = config.tls
    if tls_config.renew is None:
        raise _Fatal(f"{args.config}: tls.renew: missing")

    def renewed() -> None:
        try:
            poller.use_context(client_context(tls_config.cert, tls_config.key, tls_config.ca, tls_config.crl))
        except PKIError as exc:  # the old context stays: its certificate is valid for a third of its life yet
            logger.error("renewed certificate not taken up: %s", exc)

    renewer = Renewer(
        tls_config.renew.url, tls_config.cert, tls_config.key, tls_config.ca, renewed, crl=tls_config.crl, timing=timing
    )
    try:
        renewer.start()
    except (OSError, ValueError) as exc:
        raise _Fatal(f"{args.config}: tls.cert: cannot plan its renewal: {exc}") from exc
    logger.info("certificate renewal at %s planned for %s", tls_config.renew.url, time.ctime(renewer.due()))
    return renewer


def _start_exporter(args: argparse.Namespace, settings: ExporterConfig, view: FleetView) -> Exporter:
    """Listen on ``exporter.listen``; a port or TLS file that cannot be used is a start-up error."""
    tls = (settings.tls.cert, settings.tls.key, settings.tls.ca) if settings.tls is not None else None
    try:
        exporter = Exporter(view, settings.listen, tls)
    except PKIError as exc:
        raise _Fatal(f"{args.config}: exporter.tls: {exc}") from exc
    except OSError as exc:
        reason = exc.strerror or exc
        raise _Fatal(f"{args.config}: exporter.listen: cannot listen on {settings.listen}: {reason}") from exc
    host, port = exporter.address
    shown = f"[{host}]" if ":" in host else host
    logger.info("exporter: serving /metrics on %s://%s:%d", "https" if tls else "http", shown, port)
    return exporter


def _own_spool_dir(args: argparse.Namespace, config: CollectorConfig, shard: tuple[int, int] | None) -> RunLock:
    """The run lock of ``spool_dir``: ``--once`` takes it if free; the service waits for a ``--once`` run."""
    lock = RunLock(lock_path(config.spool_dir, shard))
    sweep = config.timeout * math.ceil(len(config.agents) / config.max_workers)
    wait = 0.0 if args.once else min(SERVICE_LOCK_WAIT_MAX, sweep + SERVICE_LOCK_WAIT_SLACK)
    try:
        others = lock.others_held() if args.once else []
        if others:  # another shard's service shares this spool_dir: a --once here is a probe too
            return others[0]
        owned = lock.acquire(wait)
    except CollectorError as exc:
        raise _Fatal(f"{args.config}: {exc}") from exc
    if not owned and not args.once:
        holder = lock.holder()
        raise _Fatal(
            f"{args.config}: spool_dir: another collector{f' (pid {holder})' if holder else ''} runs with "
            f"{config.spool_dir}; give each collector its own spool_dir (or --shard)"
        )
    return lock


def status_line(
    result: PollResult, width: int, stored: tuple[str, str] | None = None, warn_days: float | None = None
) -> str:
    """One agent's line for ``--once``: its state as stored (``audit_broken`` beside ``up``) and the detail,
    and the days left on its certificate when they are at most ``warn_days``."""
    state, detail = stored if stored is not None else (result.state, result.detail)
    shown = f"  {escape(detail)}" if detail else ""
    left = result.sample.cert_days_left if result.sample is not None else None
    if left is not None and warn_days is not None and left <= warn_days:
        shown += f"  certificate expires in {left:.1f} days"
    return f"{result.agent:<{width}}  {state:<12}  {result.latency_ms:8.1f} ms{shown}"


def run_once(collector: Collector) -> int:
    delivery = collector.delivery
    if delivery is not None and delivery.backlog:
        delivery.retry(force=True)
    refused = delivery.refused.count if delivery is not None else 0
    recorder = collector.poller.recorder
    if recorder is not None:
        recorder.load_audit_tails()
    results = collector.poller.poll_once()
    width = max((len(r.agent) for r in results), default=0)
    stored = recorder.last_state if recorder is not None else {}
    for result in results:
        warn = collector.config.thresholds.certificate_expiry_warning_days
        print(status_line(result, width, stored.get(result.agent), warn), flush=True)
    if not all(r.state == "up" for r in results):  # an audit_broken agent answered: it is printed, not failed
        return 1
    if delivery is not None and delivery.backlog:
        logger.warning("storage unavailable: this sweep waits in the spool (%s)", delivery.spool.directory)
        return EXIT_SPOOLED
    if delivery is not None and delivery.refused.count > refused:
        logger.error("storage refused part of this sweep: set aside in %s", delivery.refused.directory)
        return EXIT_SPOOLED  # not all of it is in storage: the same as waiting, to a script
    return 0


def run_forever(collector: Collector) -> int:
    def stop(signum: int, _frame: FrameType | None) -> None:
        logger.info("%s received: stopping", signal.Signals(signum).name)
        collector.poller.stop()

    previous: dict[signal.Signals, signal._HANDLER] = {}
    if threading.current_thread() is threading.main_thread():
        for signum in (signal.SIGTERM, signal.SIGINT):
            previous[signum] = signal.signal(signum, stop)
    logger.info(
        "polling %d agents every %g s (max_workers %d)",
        len(collector.poller.states),
        collector.config.poll_interval,
        collector.config.max_workers,
    )
    if collector.poller.recorder is not None:
        collector.poller.recorder.load_audit_tails()
    if collector.delivery is not None and isinstance(collector.delivery.store, LazyStore):
        collector.housekeeping = Housekeeping(collector.delivery.store.current, collector.config.storage.retention)
        collector.housekeeping.start()
    try:
        collector.poller.run()
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = _arguments(argv)
    if args.check:
        return run_check(args.config)
    handlers: list[logging.Handler] = []
    try:
        try:
            collector = build(args, handlers)
        except _Fatal as exc:
            for line in str(exc).splitlines():  # a config error holds one line per mistake
                print(f"{PROG}: {line}", file=sys.stderr)
            return 2
        try:
            return run_once(collector) if args.once else run_forever(collector)
        finally:
            collector.close()
    finally:
        _remove_logging(handlers)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
