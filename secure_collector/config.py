"""The collector's configuration, names kept from the predecessor plus the contract's TLS/HMAC/spool keys."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from pki import tokens
from pki.enroll_client import RenewConfig
from secure_collector.listen import is_loopback, parse_listen
from storage.config import StorageConfig
from storage.thresholds import Thresholds as Thresholds  # the thresholds section: storage.catalog's

AGENT_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"
HOST_PATTERN = r"^[A-Za-z0-9:.\[\]-]{1,253}$"


class _Section(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class AgentEntry(_Section):
    name: str = Field(pattern=AGENT_NAME_PATTERN)
    host: str = Field(pattern=HOST_PATTERN)
    port: int = Field(default=8000, ge=1, le=65535)


class TLSConfig(_Section):
    cert: Path
    key: Path
    ca: Path
    crl: Path | None = None  # when set, an agent whose certificate it revokes is refused
    renew: RenewConfig | None = None  # absent: the certificate is renewed by hand (docs/runbook.md)


class HMACConfig(_Section):
    key_id: str = Field(pattern=tokens.KEY_ID_PATTERN)  # the certificate's name, or NAME/label (a rotation)
    key_file: Path


class AuditFetchConfig(_Section):
    """Collecting the agents' audit trails (:mod:`secure_collector.audittrail`)."""

    # records fetched per agent per sweep at most: a long backlog is caught up over several sweeps
    max_records_per_sweep: int = Field(default=5000, ge=1, le=1_000_000)
    # seconds an agent stays audit_broken (its audit_chain alert firing) after its last chain break
    alert_hold: float = Field(default=86_400, ge=0, le=365 * 86_400)


class ExporterTLS(_Section):
    cert: Path  # a server certificate (serverAuth), for example one made with make_certs --agent
    key: Path
    ca: Path  # scrapers must present a certificate of this CA


class ExporterConfig(_Section):
    """The OpenMetrics endpoint (:mod:`secure_collector.exporter`): absent, the collector listens on nothing."""

    listen: str = Field(max_length=300)  # HOST:PORT, [V6]:PORT; port 0 takes a free one (logged)
    tls: ExporterTLS | None = None

    @field_validator("listen")
    @classmethod
    def _address(cls, listen: str) -> str:
        parse_listen(listen)
        return listen

    @model_validator(mode="after")
    def _loopback_without_tls(self) -> ExporterConfig:
        if self.tls is None and not is_loopback(parse_listen(self.listen).host):
            raise ValueError(
                f"listen {self.listen!r} is not a loopback address: plain HTTP is served on loopback only; "
                "set exporter.tls (cert, key, ca) to serve other hosts over mutual TLS"
            )
        return self


class CollectorConfig(_Section):
    agents: tuple[AgentEntry, ...] = Field(min_length=1, max_length=100_000)
    poll_interval: float = Field(default=30, ge=0.1, le=86_400)
    timeout: float = Field(default=10, gt=0, le=300)
    max_workers: int = Field(default=10, ge=1, le=1024)
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"] = "INFO"
    log_file: Path | None = None
    thresholds: Thresholds = Thresholds()
    storage: StorageConfig = StorageConfig()
    tls: TLSConfig
    hmac: HMACConfig
    spool_dir: Path
    spool_max_bytes: int = Field(default=256 * 1024 * 1024, ge=1024 * 1024)
    # --shard auto: seconds after its last renewal that a collector's agents go to the others (None: 3 intervals)
    shard_lease: float | None = Field(default=None, gt=0, le=86_400)
    # the longest wait between two tries of a failing agent (exponential backoff from poll_interval)
    backoff_max: float = Field(default=300, ge=1, le=86_400)
    # argv of a program that receives each alert as one JSON document on stdin; never run through a shell
    alert_command: tuple[str, ...] | None = None
    # seconds alert_command may take per alert before it is killed (and the alert retried)
    alert_timeout: float = Field(default=10, gt=0, le=300)
    audit_fetch: AuditFetchConfig = AuditFetchConfig()
    exporter: ExporterConfig | None = None

    @field_validator("agents")
    @classmethod
    def _unique(cls, agents: tuple[AgentEntry, ...]) -> tuple[AgentEntry, ...]:
        seen: set[str] = set()
        for agent in agents:
            if agent.name in seen:
                raise ValueError(f"agent name {agent.name!r} is listed twice")
            seen.add(agent.name)
        return agents
