"""The ``storage.*`` section of the collector configuration (names kept from the predecessor)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

_SIZE = re.compile(r"^\s*(\d+)\s*([KMG]?B?)\s*$", re.IGNORECASE)
_UNITS = {"": 1, "B": 1, "K": 1024, "KB": 1024, "M": 1024**2, "MB": 1024**2, "G": 1024**3, "GB": 1024**3}


def parse_size(text: str | int) -> int:
    """``"10MB"`` -> 10485760. Whole numbers are bytes."""
    if isinstance(text, int):
        return text
    match = _SIZE.match(text)
    if match is None:
        raise ValueError(f"not a size like '10MB': {text!r}")
    return int(match.group(1)) * _UNITS[match.group(2).upper()]


class _Section(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class RotationConfig(_Section):
    max_size: str | int = "10MB"
    backup_count: int = Field(default=5, ge=1, le=1000)

    @field_validator("max_size")
    @classmethod
    def _size(cls, value: str | int) -> str | int:
        size = parse_size(value)
        if size < 4096:
            raise ValueError("must be at least 4KB")
        return value

    @property
    def max_bytes(self) -> int:
        return parse_size(self.max_size)


class RetentionConfig(_Section):
    """How long stored data is kept, by age (whole days). Zabbix's defaults, for the same reasons: three
    months of raw samples answer "what happened last quarter" poll by poll; a year of hourly trends covers
    an annual audit (PCI DSS 10.5.1 asks for twelve months of history)."""

    history_days: int = Field(default=90, ge=1, le=36_500)
    """Raw samples, agent states, alerts and the 5-minute trends."""
    trends_days: int = Field(default=365, ge=1, le=36_500)
    """Hourly trends."""


class MySQLTLSConfig(_Section):
    ca: Path
    cert: Path | None = None
    key: Path | None = None


class StorageConfig(_Section):
    type: Literal["file", "mysql"] = "file"
    # file backend (predecessor names)
    log_file: Path | None = None
    metrics_file: Path | None = None
    json_file: Path = Path("/var/lib/secure-monitor/metrics_data.json")
    rotation: RotationConfig = RotationConfig()
    retention: RetentionConfig = RetentionConfig()
    # the central copies of the agents' audit logs (file backend); None: audit/ beside json_file
    audit_dir: Path | None = None
    # mysql backend (predecessor names); the password may come from a file or the environment instead
    mysql_host: str = "localhost"
    mysql_port: int = Field(default=3306, ge=1, le=65535)
    mysql_socket: Path | None = None
    mysql_user: str = "monitor"
    mysql_password: str | None = None
    mysql_password_file: Path | None = None
    mysql_password_env: str | None = None
    mysql_database: str = Field(default="monitoring", pattern=r"^[A-Za-z0-9_]{1,64}$")
    mysql_ssl: MySQLTLSConfig | None = None
    batch_size: int = Field(default=1000, ge=1, le=100_000)

    @property
    def audit_directory(self) -> Path:
        """Where the file backend keeps the agents' central audit copies."""
        return self.audit_dir if self.audit_dir is not None else self.json_file.parent / "audit"
