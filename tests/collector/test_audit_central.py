"""Acceptance (issue 22): a real agent's audit trail copied by the real collector into its central copy, on both
backends; a cut tail, a deleted segment and a chain rewritten with valid hashes are caught by the collector's
``audit_chain`` alert and by ``secure-audit verify HOST --against``; every copy verifies on its own."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from pki.auditchain import GENESIS
from secure_audit.segments import rotated_segments
from secure_collector import cli
from storage import open_store
from storage.memory import MemoryStore
from tests.audit.helpers import resealed, run_program
from tests.collector.helpers import WIDE, collector_data, load, write_config
from tests.plugins.agent import RunningAgent, StartAgent, rpc_call
from tests.plugins.mariadb import MariaDBServer
from tests.plugins.pki import TestPKI

ROTATION = {"max_bytes": 65536, "backup_count": 3}
FILLER = "x" * 200  # a filler record is ~500 bytes: 130 of them fill a 64 KiB segment


class Central:
    """The collector's config and what its storage holds of agent ``localhost``."""

    def __init__(self, folder: Path, data: dict[str, Any]) -> None:
        self.folder = folder
        self.data = data
        self.config_path = write_config(folder, data)

    @property
    def backend(self) -> str:
        return str(self.data["storage"]["type"])

    def once(self, capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
        capsys.readouterr()
        code = cli.main(["--config", str(self.config_path), "--once"])
        return code, capsys.readouterr().out

    def store(self) -> Any:
        return open_store(load(self.data).storage, readonly=True)

    def current(self) -> list[str]:
        store = self.store()
        try:
            return list(store.read_audit("localhost"))
        finally:
            store.close()

    def copies(self) -> list[list[str]]:
        """Every copy, oldest first, as lines (MySQL: by copy_id; files: the kept ones by name, then the current)."""
        if self.backend == "file":
            directory = load(self.data).storage.audit_directory
            kept = sorted(p for p in directory.glob("localhost.*.log"))
            return [p.read_text().splitlines() for p in kept] + [self.current()]
        store = self.store()
        try:
            rows = store._run(  # the rows as the table holds them
                "test", lambda conn: store._fetch(conn, "SELECT copy_id, line FROM audit_records ORDER BY id", ())
            )
        finally:
            store.close()
        copies: dict[int, list[str]] = {}
        for copy_id, line in rows:
            copies.setdefault(int(copy_id), []).append(str(line))
        return [copies[key] for key in sorted(copies)]

    def verify_against(self, agent: RunningAgent) -> Any:
        return run_program(
            "verify", agent.audit_log, "--collector-config", self.config_path, "--agent", "localhost"
        )

    def alerts(self) -> Any:
        store = self.store()
        try:
            return store.query_alerts(*WIDE)
        finally:
            store.close()


@pytest.fixture(params=["file", pytest.param("mysql", marks=[pytest.mark.mysql, pytest.mark.slow])])
def backend(request: pytest.FixtureRequest) -> Callable[[TestPKI, RunningAgent, Path], Central]:
    storage: dict[str, Any] | None = None
    if request.param == "mysql":
        mariadb: MariaDBServer = request.getfixturevalue("mariadb")
        mariadb.start()
        mariadb.reset_database()
        storage = mariadb.storage_section()

    def make(pki: TestPKI, agent: RunningAgent, folder: Path) -> Central:
        overrides: dict[str, Any] = {"storage": storage} if storage is not None else {}
        return Central(folder, collector_data(pki, folder, [("localhost", agent.host, agent.port)], **overrides))

    return make


def fill(agent: RunningAgent, count: int) -> None:
    """Records as the agent writes them for calls, straight into its log (a busy hour, in a moment)."""
    for number in range(count):
        agent.agent.audit.record("call", "served", method="ping", request_id=f"{number:016x}", detail=FILLER)


def host_lines(agent: RunningAgent) -> list[str]:
    return [line for segment in rotated_segments(agent.audit_log) for line in segment.read_text().splitlines()]


def verifies_on_its_own(lines: list[str], folder: Path, name: str) -> bool:
    path = folder / name
    path.write_text("".join(f"{line}\n" for line in lines))
    return run_program("verify", path).returncode == 0


@pytest.fixture
def agent(start_agent: StartAgent, test_pki: TestPKI) -> RunningAgent:
    return start_agent(
        test_pki, audit_rotation=ROTATION, security={"rate_limit": {"per_second": 1000, "burst": 1000}}
    )


def test_the_central_copy_is_the_agents_log_byte_for_byte(
    backend: Callable[..., Central], agent: RunningAgent, test_pki: TestPKI, tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    central = backend(test_pki, agent, tmp_path)
    rpc_call(agent, test_pki, "ping")
    assert central.once(capsys)[0] == 0
    fill(agent, 300)  # across rotations: the copy follows the chain through rotate records
    code, out = central.once(capsys)
    assert code == 0 and out.split()[1] == "up"
    copy = central.current()
    on_host = host_lines(agent)
    assert len(rotated_segments(agent.audit_log)) > 2
    assert copy[0].startswith("{") and json.loads(copy[0])["prev"] == GENESIS  # from the very first record
    assert copy[-1] == on_host[-2]  # everything but this sweep's own get_audit record...
    assert on_host[: len(on_host) - 1][-len(copy) :] == copy[-(len(on_host) - 1) :]  # ...exactly as on the host
    assert central.copies() == [copy]  # one copy, no break
    assert not (central.alerts()["metric"] == "audit_chain").any()
    assert verifies_on_its_own(copy, tmp_path, "copy.log")
    result = central.verify_against(agent)
    assert result.returncode == 0, result.stderr
    assert "holds every record of the central copy" in result.stdout
    if central.backend == "file":  # the file itself is what secure-audit verify reads
        assert run_program("verify", load(central.data).storage.audit_directory / "localhost.log").returncode == 0


def test_an_agent_that_serves_one_request_per_connection_is_collected_too(
    backend: Callable[..., Central], start_agent: StartAgent, test_pki: TestPKI, tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Found: an agent with ``server.max_requests_per_connection: 1`` answers get_metrics with
    ``Connection: close``, and the collector skipped get_audit on the closed connection, every sweep,
    with no error: nothing of its trail ever reached the central copy. The follow-up connects again."""
    agent = start_agent(test_pki, server={"max_requests_per_connection": 1})
    central = backend(test_pki, agent, tmp_path)
    for _ in range(2):
        code, out = central.once(capsys)
        assert code == 0 and out.split()[1] == "up", out
    copy = central.current()
    on_host = host_lines(agent)
    assert json.loads(copy[0])["prev"] == GENESIS
    assert copy == on_host[: len(copy)] and len(copy) >= len(on_host) - 1  # all but the last get_audit's record
    assert central.copies() == [copy]
    assert central.verify_against(agent).returncode == 0


def _cut_tail(agent: RunningAgent) -> None:
    data = agent.audit_log.read_bytes()
    lines = data.splitlines(keepends=True)
    agent.audit_log.write_bytes(b"".join(lines[:-5]))  # in place, as root could: five records gone


def _delete_unfetched_segment(agent: RunningAgent) -> None:
    fill(agent, 420)  # three rotations after the collector's place: segments it has not fetched
    segments = rotated_segments(agent.audit_log)
    assert len(segments) >= 4
    segments[-3].unlink()  # audit.log.2: neither the oldest nor the newest


def _rewrite_chain(agent: RunningAgent) -> None:
    """The live segment rewritten in place with valid hashes from its first record on (one value changed)."""
    out = resealed(agent.audit_log.read_text().splitlines(), 1)
    agent.audit_log.write_text("".join(f"{line}\n" for line in out))


TAMPERING = {"tail cut": _cut_tail, "segment deleted": _delete_unfetched_segment, "chain rewritten": _rewrite_chain}


@pytest.mark.parametrize("tampering", sorted(TAMPERING))
def test_tampering_is_caught_by_the_collector_and_by_verify_against(
    backend: Callable[..., Central], agent: RunningAgent, test_pki: TestPKI, tmp_path: Path,
    capsys: pytest.CaptureFixture[str], tampering: str,
) -> None:
    central = backend(test_pki, agent, tmp_path)
    fill(agent, 150)
    assert central.once(capsys)[0] == 0
    assert central.verify_against(agent).returncode == 0
    TAMPERING[tampering](agent)

    found = central.verify_against(agent)  # the host against what the collector holds
    assert found.returncode == 1, found.stdout + found.stderr
    code, out = central.once(capsys)  # the collector's next sweep
    assert code == 0  # the agent answered ...
    state, detail = out.split(None, 3)[1], out.split("ms", 1)[1].strip()
    assert state == "audit_broken" and "expected" in detail and "came" in detail  # ... its trail did not
    alerts = central.alerts()
    chain = alerts[alerts["metric"] == "audit_chain"]
    assert list(zip(chain["severity"], chain["technique"], chain["state"], strict=True)) == [
        ("critical", "T1070", "firing")
    ]
    message = str(chain["message"].iloc[0])
    assert "expected" in message and "came" in message
    copies = central.copies()
    assert len(copies) >= 2  # the copy so far is kept; a new one follows the new chain
    for number, lines in enumerate(copies):
        assert verifies_on_its_own(lines, tmp_path, f"copy-{number}.log"), (number, lines[:1])
    statuses = central.store().query_statuses(*WIDE)
    assert statuses["state"].iloc[-1] == "audit_broken"  # what the dashboard shows


def test_the_dashboard_shows_an_audit_broken_agent(
    agent: RunningAgent, test_pki: TestPKI, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from viz import cli as viz_cli

    central = Central(tmp_path, collector_data(test_pki, tmp_path, [("localhost", agent.host, agent.port)]))
    assert central.once(capsys)[0] == 0
    _cut_tail(agent)
    central.once(capsys)
    output = tmp_path / "dashboard"
    assert viz_cli.main(["--config", str(central.config_path), "--plot", "all", "--output-dir", str(output)]) == 0
    page = (output / "index.html").read_text()
    assert 'class="state-bad">audit_broken</span>' in page
    assert "audit_chain" in page


def test_a_backlog_is_caught_up_over_several_sweeps(
    agent: RunningAgent, test_pki: TestPKI, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    fill(agent, 350)
    central = Central(
        tmp_path,
        collector_data(test_pki, tmp_path, [("localhost", agent.host, agent.port)],
                       audit_fetch={"max_records_per_sweep": 100}),
    )
    sizes = []
    for _ in range(4):
        assert central.once(capsys)[0] == 0
        sizes.append(len(central.current()))
    assert sizes[:3] == [100, 200, 300]  # bounded per sweep...
    assert central.copies() == [central.current()] and sizes[3] == len(host_lines(agent)) - 1  # ...then caught up


def test_audit_records_wait_in_the_spool_while_storage_is_down(
    agent: RunningAgent, test_pki: TestPKI, tmp_path: Path
) -> None:
    from secure_collector.alerts import AlertEngine
    from secure_collector.audittrail import AuditTrail
    from secure_collector.config import Thresholds
    from secure_collector.poller import Poller
    from secure_collector.sink import Delivery, Recorder
    from secure_collector.spool import Spool
    from secure_collector.transport import AgentConnection
    from tests.agent.test_get_audit import lines_on_host
    from tests.plugins.agent import client_context

    key = (test_pki.root / "collectors" / "collector.hmac").read_text().strip()
    connection = AgentConnection(
        "localhost", agent.host, agent.port, client_context(test_pki), "collector", bytes.fromhex(key)
    )
    store = MemoryStore()
    delivery = Delivery(store, Spool(tmp_path / "spool", 1 << 20), retry_min=0.0)
    trail = AuditTrail(["localhost"])
    recorder = Recorder(delivery, AlertEngine(Thresholds()), trail=trail)
    assert recorder.load_audit_tails()
    poller = Poller([connection], recorder, poll_interval=1, max_workers=1, follow_up=trail)
    try:
        store.set_available(False)
        poller.poll_once()
        poller.poll_once()
        assert delivery.backlog and store.audit_copies("localhost") == []
        store.set_available(True)
        assert delivery.retry(force=True)
        poller.poll_once()
    finally:
        poller.close()
    copies = store.audit_copies("localhost")
    assert len(copies) == 1 and copies[0] == lines_on_host(agent.audit_log)[: len(copies[0])]
    assert len(copies[0]) == len(lines_on_host(agent.audit_log)) - 1  # all but the last get_audit's own record


def test_a_long_running_collector_keeps_the_copy_current(
    agent: RunningAgent, test_pki: TestPKI, tmp_path: Path
) -> None:
    data = collector_data(test_pki, tmp_path, [("localhost", agent.host, agent.port)], poll_interval=0.2)
    collector = cli.build(cli._arguments(["--config", str(write_config(tmp_path, data))]), [])
    recorder = collector.poller.recorder
    assert recorder is not None
    recorder.load_audit_tails()
    runner = threading.Thread(target=collector.poller.run, kwargs={"max_sweeps": 4})
    runner.start()
    runner.join(timeout=30)
    assert not runner.is_alive()
    collector.close()
    central = Central(tmp_path, data)
    calls = [json.loads(line).get("method") for line in central.current()]
    assert calls.count("get_metrics") == 4 and calls.count("get_audit") == 3  # each sweep fetched the last
    assert central.verify_against(agent).returncode == 0


def test_audit_records_the_full_spool_dropped_are_fetched_again(
    agent: RunningAgent, test_pki: TestPKI, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Found: with storage down long enough for the spool to fill, the spool drops its oldest batches, audit
    records with them, and the collector's place in each trail had moved past them: every later record no
    longer followed what storage held, so storage skipped it, sweep after sweep, and the central copy never
    grew again while nothing said so (until a restart). Now a loss in the spool sends the trails back to where
    storage's copies end: the dropped records are fetched again from the agent, which still holds them."""
    from secure_collector.alerts import AlertEngine
    from secure_collector.audittrail import AuditTrail
    from secure_collector.config import Thresholds
    from secure_collector.poller import Poller
    from secure_collector.sink import Delivery, Recorder
    from secure_collector.spool import Spool
    from secure_collector.transport import AgentConnection
    from tests.agent.test_get_audit import lines_on_host
    from tests.plugins.agent import client_context

    key = (test_pki.root / "collectors" / "collector.hmac").read_text().strip()
    connection = AgentConnection(
        "localhost", agent.host, agent.port, client_context(test_pki), "collector", bytes.fromhex(key)
    )
    store = MemoryStore()
    spool = Spool(tmp_path / "spool", 96 * 1024, segment_bytes=1024)  # a sweep of 100 records is ~60 KiB
    delivery = Delivery(store, spool, retry_min=0.0)
    trail = AuditTrail(["localhost"])
    recorder = Recorder(delivery, AlertEngine(Thresholds()), trail=trail)
    assert recorder.load_audit_tails()
    poller = Poller([connection], recorder, poll_interval=1, max_workers=1, follow_up=trail)
    try:
        poller.poll_once()  # storage up: the copy begins
        stored = len(store.audit_copies("localhost")[0])
        store.set_available(False)
        for _ in range(2):  # each sweep's batch pushes the one before out of the full spool
            fill(agent, 100)
            poller.poll_once()
        assert spool.dropped_batches >= 1
        store.set_available(True)
        assert delivery.retry(force=True)
        for _ in range(3):
            poller.poll_once()
    finally:
        poller.close()
    copies = store.audit_copies("localhost")
    on_host = lines_on_host(agent.audit_log)
    assert len(copies) == 1 and len(copies[0]) > stored + 200  # it grew past the dropped records ...
    assert copies[0] == on_host[: len(copies[0])] and len(copies[0]) == len(on_host) - 1  # ... every one, in order
    said = [r.getMessage() for r in caplog.records if r.name == "secure_collector.sink" and r.levelname == "WARNING"]
    assert any("fetched again" in message for message in said), said  # the operator is told


@pytest.mark.mysql
@pytest.mark.slow
def test_a_collector_taking_an_agent_over_goes_on_from_the_shared_copy_not_its_own_old_place(
    agent: RunningAgent, test_pki: TestPKI, tmp_path: Path, mariadb: MariaDBServer
) -> None:
    """Found: with ``--shard auto``, a collector read where each agent's copy ended once, at its start. When it
    took an agent over (the owner stopped) it asked the agent after that old place, though the other
    collector had copied much further; the agent had since deleted that segment, so the collector took the
    failover for a gap: a false critical ``audit_chain`` alert and a spurious break in the shared copy. Now
    an agent taken over has its place read from the database again before its trail is fetched."""
    from secure_collector.membership import owner

    mariadb.start()
    mariadb.reset_database()
    collectors: dict[str, Any] = {}
    try:
        for name in ("c1", "c2"):
            folder = tmp_path / name
            folder.mkdir()
            data = collector_data(
                test_pki, folder, [("localhost", agent.host, agent.port)], storage=mariadb.storage_section(),
                poll_interval=0.2, shard_lease=60.0,
            )
            collectors[name] = cli.build(
                cli._arguments(["--config", str(write_config(folder, data)), "--shard", "auto"]), []
            )
        members = {name: c.membership.member for name, c in collectors.items()}
        first = next(n for n in collectors if owner("localhost", sorted(members.values())) != members[n])
        second = next(n for n in collectors if n != first)  # the agent's owner once both are live
        collectors[first].poller.run(max_sweeps=2)  # alone: it copies the agent's trail so far
        old_place = json.loads(Central(tmp_path / first, data).current()[-1])["hash"]
        collectors[second].poller.run(max_sweeps=2)  # both live: the second one owns the agent now
        for _ in range(2):  # rotations; what the second collector fetched goes at the rotations after
            fill(agent, 400)
            collectors[second].poller.run(max_sweeps=2)
            collectors[first].poller.run(max_sweeps=1)  # running too (it polls nothing of the agent)
        assert old_place not in "".join(host_lines(agent))
        collectors[second].membership.close()  # it leaves: the first takes the agent over
        collectors[first].poller.run(max_sweeps=3)
    finally:
        for collector in collectors.values():
            collector.close()
    central = Central(tmp_path / first, data)
    alerts = central.alerts()
    assert not (alerts["metric"] == "audit_chain").any(), list(alerts[alerts["metric"] == "audit_chain"]["message"])
    assert len(central.copies()) == 1  # one unbroken copy, both collectors' records in it ...
    assert central.current()[-1] == host_lines(agent)[-2]  # ... up to the last sweep's own get_audit record
    assert central.verify_against(agent).returncode == 0


@pytest.mark.mysql
@pytest.mark.slow
@pytest.mark.parametrize("forged", [{"time": "2026-01-01T00:00:00\u00e9Z"}, {"seq": 2**64}])
def test_a_sealed_record_storage_cannot_hold_is_a_break_not_a_stop_of_storage(
    start_agent: StartAgent, tmp_path: Path, mariadb: MariaDBServer, forged: dict[str, Any],
    make_pki: Callable[..., TestPKI], capsys: pytest.CaptureFixture[str],
) -> None:
    """Found: a record sealed by whoever holds root on a host (the seal is a plain hash) with a ``time`` that is
    not ASCII, or a ``seq`` past BIGINT UNSIGNED, passed every check of the trail; MySQL refused the row, the
    collector spooled the whole sweep and replayed it, refused again, for ever: one forged record in one
    agent's log stopped storage for the whole fleet. Such a record is now a ``record`` break, stored nowhere."""
    from secure_agent.audit import seal
    from tests.collector.answers import good_answer
    from tests.collector.fakeagent import FakeAgent, xmlrpc_answer

    mariadb.start()
    mariadb.reset_database()
    pki = make_pki(tmp_path / "pki", agents=["localhost=localhost,127.0.0.1", "forger=localhost,127.0.0.1"],
                   collectors=["collector"])
    honest = start_agent(pki)
    fields = {"event": "call", "outcome": "served", "agent": "forger", "time": "2026-01-01T00:00:00.000000Z"}
    first = seal(fields, "0" * 64, 0)
    records = [first.line, seal({**fields, **{k: v for k, v in forged.items() if k == "time"}}, first.hash,
                                int(forged.get("seq", 1))).line]

    def answer(body: bytes) -> bytes:
        if b"get_metrics" in body:
            return xmlrpc_answer(good_answer("forger"))
        return xmlrpc_answer({"records": records, "more": False, "gap": False})

    forger = FakeAgent(pki, answer, "forger")
    try:
        data = collector_data(
            pki, tmp_path, [("localhost", honest.host, honest.port), ("forger", forger.host, forger.port)],
            storage=mariadb.storage_section(),
        )
        config = write_config(tmp_path, data)
        codes = []
        for _ in range(2):
            codes.append(cli.main(["--config", str(config), "--once"]))
            capsys.readouterr()
    finally:
        forger.stop()
    assert codes == [0, 0], codes  # not 3: the sweeps were stored, not spooled (an audit_broken agent answered)
    store = open_store(load(data).storage, readonly=True)
    try:
        samples = store.query_samples(*WIDE)
        alerts = store.query_alerts(*WIDE)
        copy = list(store.read_audit("forger"))
    finally:
        store.close()
    assert sorted(set(samples["agent"])) == ["forger", "localhost"] and len(samples) == 4
    chain_alerts = alerts[alerts["metric"] == "audit_chain"]
    assert len(chain_alerts) >= 1 and "record" in str(chain_alerts["message"].iloc[0])
    assert copy == records[:1]  # the forged record is stored nowhere
