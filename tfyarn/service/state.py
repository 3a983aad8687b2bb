"""The service's shared state directory: its secret and the parameter servers' snapshots.

Layout under ``state_dir`` (one per service, on storage every node and every attaching
driver sees)::

    secret                  32 random bytes, mode 0600: authenticates jobs to the ps
    ps-<i>/snapshot-<seq>.npz   the latest snapshots of ps instance i (seq increasing)
    standby/<container>.json    what each standby worker last reported

A snapshot holds, per bucket, the values, the optimizer's slots, its step and update
counters and the optimizer configuration. It is written to a temporary name, flushed and
renamed, so a reader (a restarted ps) sees either a whole snapshot or none; a torn or
unreadable file is skipped in favour of the one before it.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from tfyarn.errors import ConfigError
from tfyarn.exchange.ps import np_dtype
from tfyarn.transport.auth import check_secret, new_job_secret

__all__ = [
    "BucketState",
    "Snapshot",
    "ensure_secret",
    "latest_snapshot",
    "ps_dir",
    "read_secret",
    "write_snapshot",
]

_SNAPSHOT = re.compile(r"^snapshot-(\d{8})\.npz$")


def ensure_secret(state_dir: str | Path) -> bytes:
    """The service secret, created (mode 0600) on first use."""
    path = Path(state_dir) / "secret"
    path.parent.mkdir(parents=True, exist_ok=True)
    with contextlib.suppress(FileExistsError):
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(new_job_secret())
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


def ps_dir(state_dir: str | Path, instance: int) -> Path:
    """Snapshot folder of ps instance ``instance``."""
    return Path(state_dir) / f"ps-{instance}"


@dataclass
class BucketState:
    """One bucket as saved: values, optimizer slots and counters."""

    values: np.ndarray
    slots: list[np.ndarray]
    step: int
    updates: int
    optimizer: dict[str, Any]


@dataclass
class Snapshot:
    """A ps's saved state: its sequence number and every bucket it held."""

    seq: int
    buckets: dict[int, BucketState] = field(default_factory=dict)

    @property
    def updates(self) -> dict[int, int]:
        """Update counter of each bucket."""
        return {b: s.updates for b, s in self.buckets.items()}


def _raw(a: np.ndarray) -> np.ndarray:
    # Saved as bytes plus a dtype name: bfloat16 (ml_dtypes) would otherwise need pickle.
    return np.ascontiguousarray(a).view(np.uint8)


def write_snapshot(folder: Path, snapshot: Snapshot, keep: int) -> Path:
    """Write ``snapshot`` atomically into ``folder``; delete all but the newest ``keep``."""
    folder.mkdir(parents=True, exist_ok=True)
    arrays: dict[str, np.ndarray] = {}
    meta: dict[str, Any] = {"seq": snapshot.seq, "buckets": {}}
    for b, s in snapshot.buckets.items():
        arrays[f"b{b}_values"] = _raw(s.values)
        for k, slot in enumerate(s.slots):
            arrays[f"b{b}_slot{k}"] = _raw(slot)
        meta["buckets"][str(b)] = {
            "dtype": str(s.values.dtype),
            "size": int(s.values.size),
            "slots": len(s.slots),
            "step": s.step,
            "updates": s.updates,
            "optimizer": s.optimizer,
        }
    arrays["meta"] = np.frombuffer(json.dumps(meta).encode(), np.uint8)
    final = folder / f"snapshot-{snapshot.seq:08d}.npz"
    tmp = folder / f".{final.name}.{os.getpid()}.tmp"
    with open(tmp, "wb") as f:
        np.savez(f, **arrays)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, final)
    for old in _snapshot_files(folder)[:-keep]:
        with contextlib.suppress(OSError):
            old.unlink()
    return final


def _snapshot_files(folder: Path) -> list[Path]:
    try:
        names = [p for p in folder.iterdir() if _SNAPSHOT.match(p.name)]
    except OSError:
        return []
    return sorted(names)


def read_snapshot(path: Path) -> Snapshot:
    """Load one snapshot file (raises on a torn or foreign file)."""
    with np.load(path, allow_pickle=False) as z:
        meta = json.loads(z["meta"].tobytes())
        snap = Snapshot(seq=int(meta["seq"]))
        for key, m in meta["buckets"].items():
            b = int(key)
            dt = np_dtype(m["dtype"])
            values = z[f"b{b}_values"].view(dt).copy()
            if values.size != m["size"]:
                raise ValueError(f"bucket {b}: {values.size} values, expected {m['size']}")
            slots = [z[f"b{b}_slot{k}"].view(dt).copy() for k in range(m["slots"])]
            snap.buckets[b] = BucketState(
                values, slots, int(m["step"]), int(m["updates"]), dict(m["optimizer"])
            )
    return snap


def latest_snapshot(folder: Path) -> tuple[Snapshot | None, list[str]]:
    """The newest readable snapshot in ``folder`` and what was wrong with newer ones."""
    problems: list[str] = []
    for path in reversed(_snapshot_files(folder)):
        try:
            return read_snapshot(path), problems
        except Exception as exc:  # a torn write, a foreign file: fall back to the previous
            problems.append(f"{path.name}: {exc}")
    return None, problems
