"""Reading and writing security-sensitive files: atomic, with modes that do not depend on the umask."""

from __future__ import annotations

import contextlib
import os
import stat
import tempfile
from pathlib import Path

from pki.errors import InsecurePermissions, MaterialError

PRIVATE_MODE = 0o600
PUBLIC_MODE = 0o644
_MAX_MATERIAL_BYTES = 1024 * 1024


def fsync_dir(directory: Path) -> None:
    """Make a directory's entries (a file created, renamed or deleted in it) durable."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(path: Path, data: bytes, *, mode: int, overwrite: bool = False) -> bool:
    """Write ``data`` to ``path`` through a temporary file and a rename; return False if it exists.

    The mode is set with ``fchmod`` on the open file, so a permissive umask cannot widen it, and the
    file is never visible under its final name half-written or with a wider mode.
    """
    if not overwrite and path.exists():
        return False
    descriptor, temp_name = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        os.fchmod(descriptor, mode)
        with os.fdopen(descriptor, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        if overwrite:
            os.replace(temp_name, path)
        else:
            # link() fails if the name appeared meanwhile: we never clobber a concurrent writer's file
            os.link(temp_name, path)
            os.unlink(temp_name)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temp_name)
        raise
    return True


def check_private(path: Path) -> None:
    """Refuse a private key or HMAC key file that group or others can read or write, or that is no file."""
    try:
        info = path.stat()
    except OSError as exc:
        raise MaterialError(path, f"cannot read: {exc.strerror or exc}") from exc
    if not stat.S_ISREG(info.st_mode):
        raise MaterialError(path, "is not a regular file")
    if info.st_mode & 0o077:
        raise InsecurePermissions(
            path, f"mode {stat.S_IMODE(info.st_mode):04o} lets group or others read it; run chmod 600"
        )


def read_material(path: Path, *, private: bool = False) -> bytes:
    """Read a certificate, key or CRL file, checking a private file's mode first."""
    if private:
        check_private(path)
    try:
        with open(path, "rb") as handle:
            data = handle.read(_MAX_MATERIAL_BYTES + 1)
    except OSError as exc:
        raise MaterialError(path, f"cannot read: {exc.strerror or exc}") from exc
    if len(data) > _MAX_MATERIAL_BYTES:
        raise MaterialError(path, "is too large to be a certificate, key or CRL")
    return data
