"""Open the backend a :class:`storage.config.StorageConfig` names."""

from __future__ import annotations

from storage.base import Store
from storage.config import StorageConfig
from storage.errors import StorageConfigError


def open_store(config: StorageConfig, *, readonly: bool = False) -> Store:
    """The :class:`storage.base.Store` for ``config``.

    ``readonly=True`` is for readers such as ``viz``: the file backend then creates nothing and takes no
    writer lock, the MySQL backend creates no schema. Raises :class:`StorageConfigError` when the
    configuration cannot work; an unreachable MySQL server is reported by the first call instead
    (:class:`storage.errors.StorageUnavailable`), so that a collector can start and spool.
    """
    if config.type == "file":
        from storage.file import FileStore

        return FileStore.from_config(config, readonly=readonly)
    if config.type == "mysql":
        from storage.mysql import MySQLStore

        return MySQLStore.from_config(config, readonly=readonly)
    raise StorageConfigError(f"storage.type: unknown backend {config.type!r}")  # pragma: no cover - Literal
