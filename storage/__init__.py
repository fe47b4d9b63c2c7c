"""Storage: the sample record, alerts and agent states, and their backends behind one Protocol.

Exceptions (all in :mod:`storage.errors`)::

    StorageError                 root of everything this package raises
    ├── StorageUnavailable       the backend cannot be reached now (spool and retry)
    └── StorageConfigError       the storage configuration is unusable (fail at start-up)

``storage`` imports no other package of ours. The names below are imported on first use, so that a
process can declare a metric (:func:`storage.catalog.declare`) before the models are built from the catalog.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"  # the project's version (pyproject.toml); a test keeps them equal

if TYPE_CHECKING:
    from storage.base import Batch, Store
    from storage.errors import StorageConfigError, StorageError, StorageUnavailable
    from storage.factory import open_store
    from storage.models import (
        ALERT_COLUMNS,
        SAMPLE_COLUMNS,
        STATUS_COLUMNS,
        AgentStatus,
        Alert,
        AuditEntry,
        AuditTail,
        Sample,
    )

_HOMES = {
    "Batch": "storage.base",
    "Store": "storage.base",
    "StorageConfigError": "storage.errors",
    "StorageError": "storage.errors",
    "StorageUnavailable": "storage.errors",
    "open_store": "storage.factory",
    "ALERT_COLUMNS": "storage.models",
    "SAMPLE_COLUMNS": "storage.models",
    "STATUS_COLUMNS": "storage.models",
    "AgentStatus": "storage.models",
    "Alert": "storage.models",
    "AuditEntry": "storage.models",
    "AuditTail": "storage.models",
    "Sample": "storage.models",
}
__all__ = [
    "ALERT_COLUMNS",
    "SAMPLE_COLUMNS",
    "STATUS_COLUMNS",
    "AgentStatus",
    "Alert",
    "AuditEntry",
    "AuditTail",
    "Batch",
    "Sample",
    "StorageConfigError",
    "StorageError",
    "StorageUnavailable",
    "Store",
    "open_store",
]


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module 'storage' has no attribute {name!r}")
    return getattr(importlib.import_module(home), name)
