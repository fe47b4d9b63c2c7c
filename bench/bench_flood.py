"""Under a flood from one client, another client's calls still succeed: its latency, loaded against unloaded.

    python -m bench.bench_flood [--seconds 4] [--flooders 1] [--rate 50]

One agent (``secure-agent`` in its own process, loopback only) and two collectors, each with its own
certificate and HMAC key: the *victim* polls ``get_metrics`` at a steady 20 calls per second, well
inside the per-client rate limit (``--rate`` per second, burst the same); the *flooder* runs
``--flooders`` processes that call as fast as they can, each on its own connection, reconnecting
whenever the agent answers 429 and closes (what a naive client does: it costs the agent a full TLS
handshake per attempt, the most expensive flood an authenticated client can send). The flooder
connects from 127.0.0.2, as a second host would, so the per-address connection cap is its alone.

Series, each ``--seconds`` long: the victim unloaded, then under the flood, once on new connections
(a handshake per call, as a collector polling every few seconds does) and once kept alive. The
ratio of loaded to unloaded median latency is the figure; the victim must get every call answered.
The machine's 2 cores are shared by the agent, the victim and the flooders, so part of any rise is
plain CPU contention on the client side, not the agent.

The last line printed is ``BENCH_RESULT {json}`` (see bench/README.md).
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import multiprocessing
import multiprocessing.synchronize
import sys
import tempfile
import time
import xmlrpc.client
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench.clients import Caller, CallFailed, Series, ours_request, tls_context
from bench.measure import cpu_times, summarize
from bench.peers import COLLECTOR_NAME, Pki, Server, make_pki, start_agent
from bench.result import goal, show
from pki import make_certs
from pki.tls import client_context
from pki.tokens import load_key, sign

FLOODER = "flooder"
FLOOD_SOURCE = "127.0.0.2"
VICTIM_INTERVAL = 0.05  # seconds between the victim's calls (20 per second)
FLOOD_TIMEOUT = 5.0
GOAL_RATIO = 3.0
KEPT = "kept-alive"
NEW = "new connection"


def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.bench_flood", description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--seconds", type=float, default=4.0, help="length of each series (default 4)")
    parser.add_argument("--flooders", type=int, default=1, help="flooding processes of the one client (default 1)")
    parser.add_argument("--rate", type=float, default=50.0, help="per-client rate limit per second (default 50)")
    return parser.parse_args(argv)


def _prepare(root: Path) -> Pki:
    """Our PKI plus a second collector, the flooder, allowed from 127.0.0.2 too."""
    pki = make_pki(root)
    with contextlib.redirect_stdout(sys.stderr):
        if make_certs.main(["--out", str(root), "--collector", FLOODER]) != 0:
            raise SystemExit("make_certs could not add the flooder")
    config = json.loads(pki.agent_config().read_text())
    config["security"]["allowed_ips"] = ["127.0.0.1", FLOOD_SOURCE]
    if FLOODER not in config["security"]["allowed_clients"] or COLLECTOR_NAME not in config["security"]["hmac_keys"]:
        raise SystemExit("the agent config does not list both collectors")
    pki.agent_config().write_text(json.dumps(config, indent=2))
    return pki


def _flood(root: str, port: int, stop: multiprocessing.synchronize.Event, results: Any) -> None:
    """One flooding process: signed get_metrics calls as fast as the agent lets it, reconnecting on close."""
    folder = Path(root) / "collectors"
    context = client_context(folder / f"{FLOODER}.crt", folder / f"{FLOODER}.key", Path(root) / "ca.crt")
    key = load_key(folder / f"{FLOODER}.hmac")
    body = xmlrpc.client.dumps((), "get_metrics").encode()
    counts = {"served": 0, "limited": 0, "other": 0, "errors": 0, "connections": 0}
    while not stop.is_set():
        connection = http.client.HTTPSConnection(
            "127.0.0.1", port, context=context, timeout=FLOOD_TIMEOUT, source_address=(FLOOD_SOURCE, 0)
        )
        counts["connections"] += 1
        try:
            while not stop.is_set():
                headers = {"Content-Type": "text/xml", "Authorization": sign(FLOODER, key, "localhost", body)}
                connection.request("POST", "/RPC2", body=body, headers=headers)
                response = connection.getresponse()
                response.read()
                kind = {200: "served", 429: "limited"}.get(response.status, "other")
                counts[kind] += 1
                if response.will_close:
                    break
        except (OSError, http.client.HTTPException):
            counts["errors"] += 1
        finally:
            connection.close()
    results.put(counts)


def _victim(server: Server, pki: Pki, mode: str, seconds: float) -> Series:
    """Steady calls for ``seconds``; every one must be answered."""
    caller = Caller(server, ours_request(pki), tls_context(pki), keep_alive=mode == KEPT)
    caller.call()  # warm up
    series = Series(server.name, mode)
    cpu_before = cpu_times(server.pid)
    started = time.perf_counter()
    next_call = started
    try:
        while time.perf_counter() - started < seconds:
            begin = time.perf_counter_ns()
            try:
                caller.call()
            except CallFailed:
                series.errors += 1
            else:
                series.samples_ns.append(time.perf_counter_ns() - begin)
            next_call += VICTIM_INTERVAL
            time.sleep(max(0.0, next_call - time.perf_counter()))  # pacing the victim, not synchronising
    finally:
        caller.close()
    series.wall_s = time.perf_counter() - started
    series.server_cpu = cpu_times(server.pid).minus(cpu_before)
    return series


def _row(label: str, series: Series) -> dict[str, Any]:
    summary = summarize(series.samples_ns) if series.samples_ns else None
    return {
        "series": label,
        "calls": len(series.samples_ns),
        "failed": series.errors,
        "p50 ms": round(summary.median, 2) if summary else None,
        "p99 ms": round(summary.p99, 2) if summary else None,
        "agent CPU %": round(100 * series.server_cpu.total / series.wall_s, 1) if series.wall_s else None,
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="bench-flood-") as scratch:
        root = Path(scratch)
        pki = _prepare(root / "pki")
        server = start_agent(pki, root, rate_limit=(args.rate, int(args.rate)), check_interval=3600)
        rows: list[dict[str, Any]] = []
        goals = []
        flood_totals: dict[str, int] = {}
        try:
            for mode in (NEW, KEPT):
                unloaded = _victim(server, pki, mode, args.seconds)
                spawn = multiprocessing.get_context("spawn")
                stop = spawn.Event()
                results = spawn.Queue()
                flooders = [
                    spawn.Process(target=_flood, args=(str(pki.root), server.port, stop, results), daemon=True)
                    for _ in range(args.flooders)
                ]
                for process in flooders:
                    process.start()
                try:
                    loaded = _victim(server, pki, mode, args.seconds)
                finally:
                    stop.set()
                    for process in flooders:
                        process.join(FLOOD_TIMEOUT * 2)
                        if process.is_alive():
                            process.kill()
                for _ in flooders:
                    with contextlib.suppress(Exception):
                        for key, value in results.get(timeout=FLOOD_TIMEOUT).items():
                            flood_totals[key] = flood_totals.get(key, 0) + value
                rows += [_row(f"{mode}, unloaded", unloaded), _row(f"{mode}, under flood", loaded)]
                if unloaded.samples_ns and loaded.samples_ns:
                    ratio = summarize(loaded.samples_ns).median / summarize(unloaded.samples_ns).median
                    goals.append(goal(f"victim p50 under flood / unloaded ({mode})", ratio, "<", GOAL_RATIO, "x"))
                goals.append(goal(f"victim calls failed under flood ({mode})", loaded.errors, "<=", 0, "calls"))
        finally:
            server.process.terminate()
            server.process.wait(timeout=15)
    flood_seconds = 2 * args.seconds
    return {
        "bench": "flood",
        "title": "A flood from one client against another client's latency",
        "params": {"seconds": args.seconds, "flooders": args.flooders, "rate_limit_per_s": args.rate},
        "tables": [
            {"title": "victim (get_metrics at 20/s)", "rows": rows},
            {
                "title": "flooder (all processes, both series)",
                "rows": [
                    {
                        **flood_totals,
                        "attempts per s": round(
                            (flood_totals.get("served", 0) + flood_totals.get("limited", 0)) / flood_seconds, 1
                        ),
                    }
                ],
            },
        ],
        "goals": goals,
        "notes": [
            "the flooder is refused with 429 once past its burst; each refusal closes the connection, so "
            "every further attempt is a full TLS handshake: the flood costs the agent handshakes, not calls",
        ],
    }


def main(argv: Sequence[str] | None = None) -> int:
    show(run(_parse(argv)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
