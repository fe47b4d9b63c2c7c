"""``--shard auto``: three collectors share the agents through MariaDB and fail over (issue 18, item 3).

Each collector renews its lease once a sweep and polls the agents rendezvous hashing gives it over the live
members. One stops without a word (killed): once its lease runs out the others poll its agents, back-filling
what the agents buffered since its last saved cursor; it returns: it takes its share back, and no agent is
polled twice in a round afterwards. Sweeps are driven one at a time, so a round is exactly one sweep each.
"""

from __future__ import annotations

import contextlib
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from secure_collector import cli
from secure_collector.membership import owner
from storage.factory import open_store
from tests.collector.helpers import WIDE, collector_data, load, write_config
from tests.plugins.agent import agent_with_service
from tests.plugins.mariadb import MariaDBServer
from tests.plugins.pki import TestPKI

AGENTS = [f"a{i}" for i in range(6)]
LEASE = 2.0


@pytest.mark.mysql
@pytest.mark.slow
def test_three_collectors_share_the_agents_fail_over_with_back_fill_and_take_their_share_back(
    make_pki: Callable[..., TestPKI], mariadb: MariaDBServer, tmp_path: Path
) -> None:
    mariadb.reset_database()
    pki = make_pki(tmp_path / "pki", agents=[f"{a}=localhost,127.0.0.1" for a in AGENTS], collectors=["collector"])
    with contextlib.ExitStack() as stack:
        running = {
            name: stack.enter_context(
                agent_with_service(pki, tmp_path / "agents" / name, name=name, sample_interval=3600)
            )
            for name in AGENTS
        }
        polled = [(name, *agent.address) for name, (agent, _) in running.items()]
        collectors: dict[str, Any] = {}
        for name in ("c1", "c2", "c3"):
            folder = tmp_path / name
            folder.mkdir()
            data = collector_data(
                pki, folder, polled, storage=mariadb.storage_section(), poll_interval=0.2, shard_lease=LEASE
            )
            collectors[name] = cli.build(
                cli._arguments(["--config", str(write_config(folder, data)), "--shard", "auto"]), []
            )
            stack.callback(collectors[name].close)
        store = open_store(load(data).storage, readonly=True)
        members = {name: c.membership.member for name, c in collectors.items()}
        for collector in collectors.values():  # every member renews once before anyone polls
            collector.membership.refresh()

        def round_of(*names: str) -> Counter[str]:
            # running collectors renew every poll interval; driven one sweep at a time, they renew here too
            for name in names:
                collectors[name].membership.refresh()
            before = Counter(store.query_statuses(*WIDE)["agent"])
            for name in names:
                collectors[name].poller.run(max_sweeps=1)
            return Counter(store.query_statuses(*WIDE)["agent"]) - before

        assert round_of("c1", "c2", "c3") == Counter(dict.fromkeys(AGENTS, 1))  # each agent once
        assert round_of("c1", "c2", "c3") == Counter(dict.fromkeys(AGENTS, 1))
        everyone = sorted(members.values())
        share = {name: [a for a in AGENTS if owner(a, everyone) == member] for name, member in members.items()}
        killed = max(share, key=lambda name: len(share[name]))  # the one with most agents (names vary per run)
        others = [name for name in collectors if name != killed]
        orphans = share[killed]

        # it is killed: it renews nothing more and does not leave
        for name in orphans:
            for _ in range(3):
                running[name][1].take_sample()
        deadline = time.monotonic() + 10 * LEASE
        watcher = collectors[others[0]].membership
        while members[killed] in watcher.live and time.monotonic() < deadline:
            watcher.refresh()  # the lease runs out on the database's clock
        assert members[killed] not in watcher.live
        assert round_of(*others) == Counter(dict.fromkeys(AGENTS, 1))  # its agents polled by the others
        backfilled = _backfilled(mariadb)
        assert {agent: sorted(seqs) for agent, seqs in backfilled.items()} == {a: [1, 2, 3] for a in orphans}

        # it returns: it takes its share back; from then on no agent is polled twice in a round
        assert round_of(killed, *others) == Counter(dict.fromkeys(AGENTS, 1))
        assert round_of(*others, killed) == Counter(dict.fromkeys(AGENTS, 1))
        assert _backfilled(mariadb) == backfilled  # each buffered sample stored once


def _backfilled(mariadb: MariaDBServer) -> dict[str, list[int]]:
    import json

    found: dict[str, list[int]] = {}
    with contextlib.closing(mariadb.root_connection(database=mariadb.database)) as conn, conn.cursor() as cursor:
        cursor.execute("SELECT `agent`, `details` FROM `metrics` WHERE `details` LIKE '%backfilled%'")
        for agent, details in cursor.fetchall():
            extra = json.loads(details).get("extra", {})
            if extra.get("backfilled"):
                found.setdefault(agent, []).append(int(extra["agent_seq"]))
    return found
