"""``secure-collector --config FILE --check``: everything a start needs, checked without polling.

The configuration (every mistake at once), the TLS material and HMAC key (the key id must be the
certificate's), the exporter's TLS material, ``spool_dir``, and storage reachability
(:func:`storage.probe.probe`). It writes, locks and creates nothing, so it runs beside the collector
service of the same files and leaves its storage, spool and alert state alone. Exit 0 fine, 2 not.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from pki import tokens
from pki.configfile import load_config
from pki.errors import PKIError
from pki.tls import certificate_identity, client_context, server_context
from secure_collector.config import CollectorConfig
from storage.errors import StorageError
from storage.probe import probe

PROG = "secure-collector"


def _spool_dir(directory: Path) -> str | None:
    current = directory
    while not current.exists() and current.parent != current:
        current = current.parent
    if not current.is_dir():
        return f"spool_dir: {current} is not a directory (needed for {directory})"
    if not os.access(current, os.W_OK | os.X_OK):
        return f"spool_dir: {current} is not writable"
    return None


def problems_of(path: Path) -> tuple[list[str], list[str]]:
    """(problems, what was checked): one line each."""
    try:
        config = load_config(path, CollectorConfig)
    except PKIError as exc:
        return str(exc).splitlines(), []
    problems: list[str] = []
    done: list[str] = []
    try:
        client_context(config.tls.cert, config.tls.key, config.tls.ca, config.tls.crl)
        tokens.load_key(config.hmac.key_file)
        name = certificate_identity(config.tls.cert).common_name
        if tokens.key_belongs(config.hmac.key_id, name):
            done.append(f"TLS material and HMAC key {config.hmac.key_id!r} of certificate {name!r}")
        else:
            problems.append(f"hmac.key_id: {config.hmac.key_id!r} is not this collector's (certificate {name!r})")
    except PKIError as exc:
        problems.append(str(exc))
    if config.exporter is not None and config.exporter.tls is not None:
        tls = config.exporter.tls
        try:
            server_context(tls.cert, tls.key, tls.ca)
            done.append(f"exporter TLS material for {config.exporter.listen}")
        except PKIError as exc:
            problems.append(f"exporter.tls: {exc}")
    spool = _spool_dir(config.spool_dir)
    if spool is None:
        done.append(f"spool_dir {config.spool_dir}")
    else:
        problems.append(spool)
    try:
        done.append(probe(config.storage))
    except StorageError as exc:
        problems.append(f"storage: {exc}")
    return [f"{path}: {problem}" for problem in problems], done


def run_check(path: Path) -> int:
    problems, done = problems_of(path)
    for line in problems:
        print(f"{PROG}: {line}", file=sys.stderr)
    if problems:
        return 2
    for line in done:
        print(f"ok: {line}")
    return 0
