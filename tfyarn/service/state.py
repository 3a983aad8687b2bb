"""The service's shared state directory: its secret and the parameter servers' snapshots.

Layout under ``state_dir`` (one per service, on storage every node and every attaching
driver sees)::

    secret                  32 random bytes, mode 0600: authenticates jobs to the ps
    tls.pem                 with ``tls: true``: the ps's certificate and key, mode 0600
    ps-<i>/snapshot-<seq>.npz   the latest snapshots of ps instance i (seq increasing)
    standby/<container>.json    what each standby worker last reported

The snapshots themselves (format, atomic write, torn files skipped, newest N kept, the
periodic :class:`~tfyarn.exchange.ps.snapshot.Snapshotter`) are the exchange's
:mod:`tfyarn.exchange.ps.snapshot`, re-exported here: any ps that must survive a restart
uses the same code; this module only says where a service keeps them.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable
from pathlib import Path

from tfyarn.errors import ConfigError
from tfyarn.exchange.ps.snapshot import Snapshot, latest_snapshot, read_snapshot, write_snapshot
from tfyarn.exchange.ps.store import BucketState
from tfyarn.transport.auth import check_secret, new_job_secret
from tfyarn.transport.tls import JobCertificate, new_job_certificate

__all__ = [
    "BucketState",
    "Snapshot",
    "ensure_certificate",
    "ensure_secret",
    "latest_snapshot",
    "ps_dir",
    "read_certificate",
    "read_secret",
    "read_snapshot",
    "write_snapshot",
]


_CERTIFICATE = "tls.pem"


def _create_once(path: Path, make: Callable[[], bytes]) -> None:
    """Write ``make()`` to ``path`` (mode 0600) unless the file exists already."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with contextlib.suppress(FileExistsError):
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(make())


def ensure_secret(state_dir: str | Path) -> bytes:
    """The service secret, created (mode 0600) on first use."""
    _create_once(Path(state_dir) / "secret", new_job_secret)
    return read_secret(state_dir)


def read_secret(state_dir: str | Path) -> bytes:
    """The service secret; a clear error if this host cannot read it."""
    path = Path(state_dir) / "secret"
    try:
        return check_secret(path.read_bytes())
    except OSError as exc:
        raise ConfigError(
            f"cannot read the service secret {path} ({exc}); the service's state_dir must be "
            "on storage this host sees, readable by the user who launched the service"
        ) from exc


def ensure_certificate(state_dir: str | Path) -> JobCertificate:
    """The service's TLS certificate and key (``tls.pem``, mode 0600), made on first use.

    Its ps serve it, and attaching jobs trust it: like the secret, whoever can read the
    state dir is of the service.
    """
    # days: it lives as long as the service
    _create_once(Path(state_dir) / _CERTIFICATE, lambda: new_job_certificate(3650).to_pem())
    return read_certificate(state_dir)


def read_certificate(state_dir: str | Path) -> JobCertificate:
    """The service's TLS certificate and key; a clear error if this host cannot read them."""
    path = Path(state_dir) / _CERTIFICATE
    try:
        pem = path.read_bytes()
    except OSError as exc:
        raise ConfigError(
            f"cannot read the service's TLS certificate {path} ({exc}); the service was "
            "launched with tls: true, so its state_dir must be readable here"
        ) from exc
    try:
        return JobCertificate.from_pem(pem)
    except ConfigError:
        raise ConfigError(
            f"{path} holds no private key: remove it and launch the service again"
        ) from None


def ps_dir(state_dir: str | Path, instance: int) -> Path:
    """Snapshot folder of ps instance ``instance``."""
    return Path(state_dir) / f"ps-{instance}"
