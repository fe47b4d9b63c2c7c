"""The agent's configuration: every key validated, unknown keys refused, insecure values refused.

Names follow the predecessor (``host``, ``port``, ``log_file``, ``log_level``, ``check_interval``,
``metrics.enable_*``, ``security.allowed_ips``) plus the contract's TLS, rate-limit, HMAC and audit keys.
"""

from __future__ import annotations

import datetime
import ipaddress
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from pki import tokens
from pki.enroll_client import RenewConfig
from secure_agent import allowlist

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

AGENT_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"
KEY_ID_PATTERN = tokens.KEY_ID_PATTERN  # a certificate name, or NAME/label during a key rotation

DEFAULT_AUTH_LOGS = (Path("/var/log/auth.log"), Path("/var/log/secure"))
# Ports commonly used by backdoors, IRC botnets, Metasploit defaults and cryptominer pools.
DEFAULT_SUSPICIOUS_PORTS = (
    1080, 1337, 2222, 3333, 4444, 4445, 5555, 6666, 6667, 6668, 6669, 7777, 8888,
    9999, 12345, 14444, 31337, 45700, 54321,
)


class _Section(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class MetricsConfig(_Section):
    enable_temperature: bool = True
    enable_cpu: bool = True
    enable_memory: bool = True
    enable_disk: bool = True
    enable_security: bool = True


class TLSConfig(_Section):
    cert: Path
    key: Path
    ca: Path
    crl: Path | None = None
    min_version: Literal["TLSv1.2", "TLSv1.3"] = "TLSv1.3"
    renew: RenewConfig | None = None  # absent: the certificate is renewed by hand (docs/runbook.md)


class RateLimitConfig(_Section):
    per_second: float = Field(default=10.0, gt=0, le=10_000)
    burst: int = Field(default=20, ge=1, le=100_000)


class AcknowledgedFinding(_Section):
    """A known cause accepted by the operator (:mod:`secure_agent.probes.acknowledge`)."""

    reason: str = Field(min_length=1, max_length=200)
    kind: Literal[
        "exec_from_tmp", "deleted_executable", "ssh_bruteforce", "suspicious_port_listener",
        "suspicious_port_connection", "unexpected_listener",
    ] | None = None
    path: str | None = Field(default=None, min_length=1, max_length=4096)  # the executable, as findings name it
    sha256: str | None = Field(default=None, pattern=r"^[0-9a-f]{64}$")  # of the executable (evidence.sha256)
    user: str | None = Field(default=None, min_length=1, max_length=64)
    address: str | None = Field(default=None, min_length=1, max_length=64)  # an SSH source
    expires: datetime.date | None = None  # in force through that day (UTC)

    @model_validator(mode="after")
    def _selects(self) -> AcknowledgedFinding:
        if all(value is None for value in (self.kind, self.path, self.sha256, self.user, self.address)):
            raise ValueError("names nothing to acknowledge: give kind, path, sha256, user or address")
        return self


class SecurityConfig(_Section):
    allowed_ips: tuple[str, ...] = Field(min_length=1, max_length=4096)
    allowed_clients: tuple[str, ...] = ()
    rate_limit: RateLimitConfig = RateLimitConfig()
    hmac_keys: dict[str, Path] = Field(min_length=1)
    max_clock_skew: int = Field(default=300, ge=1, le=3600)
    auth_log_paths: tuple[Path, ...] = DEFAULT_AUTH_LOGS
    # where SSH failures are read, in order of preference: the first readable one is used (one at a time,
    # so a failure that rsyslog copied from the journal into auth.log is not counted twice)
    auth_sources: tuple[Literal["files", "journal"], ...] = Field(default=("files", "journal"), min_length=1)
    # None: the system journal (/run/log/journal, /var/log/journal); else a directory of journal files
    journal_directory: Path | None = None
    # SSH brute force: fail2ban's defaults, maxretry 5 within findtime 10 minutes
    ssh_max_failures: int = Field(default=5, ge=1, le=100_000)
    ssh_find_time: int = Field(default=600, ge=10, le=86_400)
    suspicious_ports: tuple[int, ...] = DEFAULT_SUSPICIOUS_PORTS
    # process names allowed to listen on a socket; empty means "report no listener as unexpected"
    expected_listeners: tuple[str, ...] = ()
    acknowledged_findings: tuple[AcknowledgedFinding, ...] = Field(default=(), max_length=1000)

    @field_validator("allowed_ips")
    @classmethod
    def _networks(cls, values: tuple[str, ...]) -> tuple[str, ...]:
        for value in values:
            try:
                network = allowlist.parse(value)  # an IPv4-mapped network judged as the IPv4 one it maps
            except ValueError as exc:
                raise ValueError(f"{value!r} is not an IP address or CIDR") from exc
            if network.prefixlen == 0:
                raise ValueError(f"{value!r} allows every address; list the collectors' addresses")
        return values

    @field_validator("hmac_keys")
    @classmethod
    def _key_ids(cls, values: dict[str, Path]) -> dict[str, Path]:
        import re

        for key_id in values:
            if re.match(KEY_ID_PATTERN, key_id) is None:
                raise ValueError(f"key id {key_id!r} must match {KEY_ID_PATTERN}")
        return values

    @field_validator("auth_sources")
    @classmethod
    def _distinct_sources(cls, values: tuple[str, ...]) -> tuple[str, ...]:
        if len(set(values)) != len(values):
            raise ValueError("lists a source twice")
        return values

    @field_validator("suspicious_ports")
    @classmethod
    def _ports(cls, values: tuple[int, ...]) -> tuple[int, ...]:
        for port in values:
            if not 1 <= port <= 65535:
                raise ValueError(f"port {port} is outside 1..65535")
        return values

    def networks(self) -> tuple[IPNetwork, ...]:
        return allowlist.networks(self.allowed_ips)


class ServerLimits(_Section):
    """Transport limits; defaults suit a handful of collectors polling every few seconds."""

    max_connections: int = Field(default=32, ge=1, le=4096)
    # one address may hold at most this many connections, so a noisy host cannot take every slot
    max_connections_per_ip: int = Field(default=8, ge=1, le=4096)
    handshake_timeout: float = Field(default=5.0, gt=0, le=120)
    request_timeout: float = Field(default=10.0, gt=0, le=300)  # whole request: head and body
    idle_timeout: float = Field(default=15.0, gt=0, le=3600)  # between requests on a kept-alive connection
    max_body_bytes: int = Field(default=16_384, ge=256, le=1_048_576)
    max_requests_per_connection: int = Field(default=1000, ge=1, le=1_000_000)
    audit_sync_interval: float = Field(default=1.0, ge=0, le=60)  # seconds; 0 syncs every record

    @model_validator(mode="after")
    def _per_ip(self) -> ServerLimits:
        if self.max_connections_per_ip > self.max_connections:
            raise ValueError("max_connections_per_ip must not exceed max_connections")
        return self


class AuditRotationConfig(_Section):
    """Size-based rotation of ``audit_log`` keeping one hash chain, and its retention
    (:mod:`secure_agent.audit_rotation`).

    The defaults keep 13 segments of at most 16 MiB (about 200 MiB) once a collector has copied them,
    and up to 25 (about 400 MiB) while it has not; a record is about 600 bytes.
    """

    max_bytes: int = Field(default=16 * 1024 * 1024, ge=64 * 1024, le=1024**4)
    backup_count: int = Field(default=12, ge=1, le=1000)
    max_backup_count: int | None = Field(default=None, ge=1, le=10_000)  # None: twice backup_count

    @model_validator(mode="after")
    def _ceiling(self) -> AuditRotationConfig:
        if self.max_backup_count is not None and self.max_backup_count < self.backup_count:
            raise ValueError("max_backup_count must not be below backup_count")
        return self

    @property
    def ceiling(self) -> int:
        """Rotated segments kept at most, while a collector has not copied them."""
        return self.max_backup_count if self.max_backup_count is not None else 2 * self.backup_count


class AuditRefusalsConfig(_Section):
    """The budget of refusal records (:mod:`secure_agent.refusals`): globally, then per source."""

    burst: int = Field(default=100, ge=1, le=100_000)
    per_second: float = Field(default=1.0, gt=0, le=10_000)
    per_source_burst: int = Field(default=10, ge=1, le=100_000)
    per_source_per_second: float = Field(default=0.1, gt=0, le=10_000)
    # at most 33 summary records per interval: 10 s at the shortest keeps summaries a bounded trickle too
    summary_interval: float = Field(default=60.0, ge=10, le=86_400)


class BufferConfig(_Section):
    """The sample buffer a collector back-fills its outages from (:mod:`secure_agent.buffer`, ``get_samples``).

    At the default 30 s ``sample_interval`` a sample is about 1.5 KB: a day is about 4 MB, well inside
    the default 64 MiB; ``max_age`` (a day) is what bounds it then. A collector outage longer than that loses
    its oldest samples, counted and logged.
    """

    path: Path | None = None  # a directory; None: "samples" beside audit_log
    max_bytes: int = Field(default=64 * 1024 * 1024, ge=64 * 1024, le=1024**4)
    max_age: float = Field(default=86_400.0, ge=60, le=366 * 86_400)
    fsync_interval: float = Field(default=5.0, ge=0, le=300)  # seconds; at most this much is lost to a power cut


class AgentConfig(_Section):
    name: str = Field(pattern=AGENT_NAME_PATTERN)
    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=0, le=65535)
    check_interval: float = Field(default=30.0, ge=1, le=3600)
    sample_interval: float = Field(default=30.0, ge=1, le=3600)  # a sample into the buffer this often
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"] = "INFO"
    log_file: Path | None = None
    metrics: MetricsConfig = MetricsConfig()
    tls: TLSConfig
    security: SecurityConfig
    server: ServerLimits = ServerLimits()
    audit_log: Path
    audit_rotation: AuditRotationConfig = AuditRotationConfig()
    audit_refusals: AuditRefusalsConfig = AuditRefusalsConfig()
    buffer: BufferConfig = BufferConfig()

    @property
    def buffer_path(self) -> Path:
        return self.buffer.path if self.buffer.path is not None else self.audit_log.parent / "samples"

    @field_validator("host")
    @classmethod
    def _host(cls, value: str) -> str:
        try:
            ipaddress.ip_address(value)
        except ValueError as exc:
            raise ValueError("must be an IP address to listen on (e.g. 127.0.0.1 or ::)") from exc
        return value
