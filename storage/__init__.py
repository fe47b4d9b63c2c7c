"""Storage: the sample record, alerts and agent states, and their backends behind one Protocol.

Exceptions (all in :mod:`storage.errors`)::

    StorageError                 root of everything this package raises
    ├── StorageUnavailable       the backend cannot be reached now (spool and retry)
    └── StorageConfigError       the storage configuration is unusable (fail at start-up)

``storage`` imports no other package of ours.
"""

__version__ = "0.1.0"  # the project's version (pyproject.toml); a test keeps them equal

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
