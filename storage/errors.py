"""The exception tree of :mod:`storage` (see the package docstring)."""


class StorageError(Exception):
    """Root of every error raised by the storage package."""


class StorageUnavailable(StorageError):
    """The backend cannot take or give data right now; the caller may spool and retry."""


class StorageConfigError(StorageError):
    """The storage configuration cannot work (bad path, bad credentials file, unknown type)."""
