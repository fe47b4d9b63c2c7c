"""Real agents for tests: ``start_agent(pki, name="localhost", **overrides) -> RunningAgent``.

The agent runs in this process (its accept loop and workers are threads) on 127.0.0.1, port 0,
with the certificates of a :class:`TestPKI`, its config written to a file (so ``reload()`` re-reads
it, as SIGHUP does), an audit log of its own, and short timeouts. Overrides are merged into the
config that ``make_certs`` wrote for that agent, dictionaries recursively::

    agent = start_agent(test_pki, security={"rate_limit": {"per_second": 1, "burst": 2}})
    assert rpc_call(agent, test_pki, "ping") == "pong"

Every agent started is stopped at teardown. ``rpc_call`` is a small, correct client (mutual TLS,
SMON1 token) for the happy path; hostile tests build their requests by hand.
"""

from __future__ import annotations

import contextlib
import http.client
import itertools
import json
import xmlrpc.client
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import pytest

from pki import tls, tokens
from pki.migrate import overlay
from secure_agent.config import AgentConfig
from secure_agent.lifecycle import Agent
from secure_agent.metrics import MetricsService
from tests.plugins.pki import TestPKI

# Short limits so that timeout cases run in well under a second.
TEST_SERVER_LIMITS: dict[str, Any] = {
    "handshake_timeout": 0.5,
    "request_timeout": 1.0,
    "idle_timeout": 1.0,
    "audit_sync_interval": 0.0,
}
CLIENT_TIMEOUT = 5.0
_serial = itertools.count()


def merge(base: dict[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    """``base`` with ``overrides`` merged in, dictionaries recursively (a new dict; inputs untouched)."""
    return overlay(base, overrides)


def agent_config_data(pki: TestPKI, name: str, folder: Path, **overrides: Any) -> dict[str, Any]:
    """The config ``make_certs`` wrote for agent ``name``, adapted for a test, with ``overrides``."""
    data = json.loads((pki.root / f"agent-{name}.json").read_text())
    data = merge(data, {"port": 0, "audit_log": str(folder / "audit.log"), "server": TEST_SERVER_LIMITS})
    return merge(data, overrides)


class Endpoint(Protocol):
    """Where an agent listens and the name its tokens are bound to (a RunningAgent, or a subprocess)."""

    @property
    def name(self) -> str: ...

    @property
    def host(self) -> str: ...

    @property
    def port(self) -> int: ...


@dataclass
class RunningAgent:
    agent: Agent
    pki: TestPKI
    config_path: Path
    audit_log: Path
    _stopped: bool = field(default=False, repr=False)

    @property
    def name(self) -> str:
        return self.agent.config.name

    @property
    def host(self) -> str:
        return self.agent.address[0]

    @property
    def port(self) -> int:
        return self.agent.address[1]

    @property
    def config(self) -> AgentConfig:
        return self.agent.config

    def reload(self) -> bool:
        """What SIGHUP does: re-read the config file and material; True if the new set is in force."""
        return self.agent.reload()

    def rewrite_config(self, **overrides: Any) -> None:
        """Merge ``overrides`` into the config file (takes effect at ``reload()``)."""
        data = merge(json.loads(self.config_path.read_text()), overrides)
        self.config_path.write_text(json.dumps(data, indent=2))

    def stop(self) -> None:
        if not self._stopped:
            self._stopped = True
            self.agent.stop(timeout=2.0)

    def audit_records(self) -> list[dict[str, Any]]:
        """Every record of the audit log, parsed."""
        return [json.loads(line) for line in self.audit_log.read_text().splitlines()]


StartAgent = Callable[..., RunningAgent]


@pytest.fixture
def start_agent(tmp_path: Path) -> Iterator[StartAgent]:
    started: list[RunningAgent] = []

    def start(pki: TestPKI, name: str = "localhost", **overrides: Any) -> RunningAgent:
        folder = tmp_path / f"agent-{name}-{next(_serial)}"
        folder.mkdir()
        data = agent_config_data(pki, name, folder, **overrides)
        config_path = folder / "agent.json"
        config_path.write_text(json.dumps(data, indent=2))
        config = AgentConfig.model_validate(data)
        agent = Agent(config, config_path=config_path)
        agent.start()  # binds and listens before it returns: no waiting needed
        running = RunningAgent(agent, pki, config_path, config.audit_log)
        started.append(running)
        return running

    yield start
    for running in reversed(started):
        running.stop()


@contextlib.contextmanager
def agent_with_service(
    pki: TestPKI, folder: Path, proc_root: Path = Path("/proc"), name: str = "localhost", **overrides: Any
) -> Iterator[tuple[Agent, MetricsService]]:
    """A real agent whose metrics service the test holds (to take samples, or to read a fixture proc root)."""
    folder.mkdir(parents=True, exist_ok=True)
    config = AgentConfig.model_validate(agent_config_data(pki, name, folder, **overrides))
    service = MetricsService(config, proc_root=proc_root)
    agent = Agent(config, metrics=lambda _config: service)
    agent.start()
    try:
        yield agent, service
    finally:
        agent.stop(timeout=2.0)


class RPCStatusError(Exception):
    """The agent answered with an HTTP status other than 200."""

    def __init__(self, status: int, headers: Mapping[str, str], body: bytes) -> None:
        super().__init__(f"HTTP {status}")
        self.status = status
        self.headers = dict(headers)
        self.body = body


def client_context(pki: TestPKI, collector: str = "collector") -> Any:
    cert, key, _ = pki.collector_files(collector)
    return tls.client_context(cert, key, pki.ca)


def rpc_body(method: str, *params: Any) -> bytes:
    return xmlrpc.client.dumps(params, method, allow_none=True).encode("utf-8")


def rpc_call(
    agent: Endpoint,
    pki: TestPKI,
    method: str,
    *params: Any,
    key_id: str = "collector",
    collector: str = "collector",
    connection: http.client.HTTPSConnection | None = None,
    source: str | None = None,
) -> Any:
    """Call ``method`` on ``agent`` as collector ``collector``; return the result.

    Raises :class:`xmlrpc.client.Fault` for a fault and :class:`RPCStatusError` for a refusal.
    Pass ``connection`` (from :func:`connect`) to send several calls on one kept-alive connection,
    ``source`` to call from another loopback address (e.g. ``"127.0.0.2"``).
    """
    body = rpc_body(method, *params)
    key = tokens.load_key(pki.collector_files(collector)[2])
    headers = {
        "Content-Type": "text/xml",
        "Authorization": tokens.sign(key_id, key, agent.name, body),
    }
    own = connection is None
    conn = connection or connect(agent, pki, collector, source=source)
    try:
        conn.request("POST", "/RPC2", body=body, headers=headers)
        response = conn.getresponse()
        data = response.read()
        if response.status != 200:
            raise RPCStatusError(response.status, dict(response.getheaders()), data)
        return xmlrpc.client.loads(data, use_builtin_types=True)[0][0]
    finally:
        if own:
            conn.close()


def connect(
    agent: Endpoint, pki: TestPKI, collector: str = "collector", *, source: str | None = None
) -> http.client.HTTPSConnection:
    """An HTTPS connection to ``agent`` with ``collector``'s certificate (not yet opened)."""
    return http.client.HTTPSConnection(
        agent.host,
        agent.port,
        context=client_context(pki, collector),
        timeout=CLIENT_TIMEOUT,
        source_address=(source, 0) if source else None,
    )
