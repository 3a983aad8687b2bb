"""Snapshots of a parameter server's buckets in a folder, and their restore.

A snapshot holds, per bucket, the values, the optimizer's slots, its step and update
counters and the optimizer configuration: everything a ps needs to continue where it
stopped. One file per snapshot, ``snapshot-<seq>.npz`` (values and slots as raw bytes
plus a JSON header with dtype, step, update counter and optimizer), written to a
temporary name, fsynced and renamed, so a reader (a restarted ps) sees either a whole
snapshot or none; a torn or unreadable file is skipped in favour of the one before it, and
only the newest ``keep`` are kept.

:class:`Snapshotter` ties this to a :class:`~tfyarn.exchange.ps.store.ShardStore`: it
restores the newest snapshot into the store at start, writes one when a counter moved
(periodically, soon after :meth:`Snapshotter.soon`, and once more at
:meth:`Snapshotter.close`). A service's ps uses it; so can any ps that must survive a
restart, as long as its folder outlives the process.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from tfyarn.errors import ConfigError
from tfyarn.exchange.ps.store import BucketState, ShardStore
from tfyarn.exchange.ps.wire import OptimizerConfig, np_dtype

__all__ = [
    "Snapshot",
    "Snapshotter",
    "latest_snapshot",
    "read_snapshot",
    "snapshot_files",
    "write_snapshot",
]

log = logging.getLogger("tfyarn.exchange.ps")

_SNAPSHOT = re.compile(r"^snapshot-(\d{8})\.npz$")


@dataclass(frozen=True)
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


def _header(snapshot: Snapshot) -> dict[str, object]:
    """The JSON header of a snapshot file."""
    buckets = {
        str(b): {
            "dtype": str(s.values.dtype),
            "size": int(s.values.size),
            "slots": len(s.slots),
            "step": s.step,
            "updates": s.updates,
            "optimizer": s.optimizer.to_dict(),
        }
        for b, s in snapshot.buckets.items()
    }
    return {"seq": snapshot.seq, "buckets": buckets}


def write_snapshot(folder: Path, snapshot: Snapshot, keep: int) -> Path:
    """Write ``snapshot`` atomically into ``folder``; delete all but the newest ``keep``."""
    folder.mkdir(parents=True, exist_ok=True)
    arrays: dict[str, np.ndarray] = {}
    for b, s in snapshot.buckets.items():
        arrays[f"b{b}_values"] = _raw(s.values)
        for k, slot in enumerate(s.slots):
            arrays[f"b{b}_slot{k}"] = _raw(slot)
    arrays["meta"] = np.frombuffer(json.dumps(_header(snapshot)).encode(), np.uint8)
    final = folder / f"snapshot-{snapshot.seq:08d}.npz"
    tmp = folder / f".{final.name}.{os.getpid()}.tmp"
    with open(tmp, "wb") as f:
        np.savez(f, allow_pickle=False, **arrays)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, final)
    for old in snapshot_files(folder)[:-keep]:
        with contextlib.suppress(OSError):
            old.unlink()
    return final


def snapshot_files(folder: Path) -> list[Path]:
    """The snapshot files in ``folder``, oldest first (none if it cannot be listed)."""
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
                values,
                slots,
                int(m["step"]),
                int(m["updates"]),
                OptimizerConfig.from_dict(m["optimizer"]),
            )
    return snap


def latest_snapshot(folder: Path) -> tuple[Snapshot | None, list[str]]:
    """The newest readable snapshot in ``folder`` and what was wrong with newer ones."""
    problems: list[str] = []
    for path in reversed(snapshot_files(folder)):
        try:
            return read_snapshot(path), problems
        except Exception as exc:  # a torn write, a foreign file: fall back to the previous
            problems.append(f"{path.name}: {exc}")
    return None, problems


class Snapshotter:
    """Snapshots of one :class:`ShardStore` in ``folder``: restore, save, save periodically.

    Parameters
    ----------
    store : ShardStore
        What is saved and restored.
    folder : Path
        This ps's snapshot folder (one per ps: sequence numbers are per folder).
    keep : int
        Snapshots kept (at least 1).
    name : str
        The ps, as the log names it.
    """

    def __init__(self, store: ShardStore, folder: Path, keep: int, *, name: str) -> None:
        if keep < 1:
            raise ConfigError(f"a ps must keep at least 1 snapshot, not {keep}")
        self.store = store
        self.folder = folder
        self.keep = keep
        self.name = name
        #: The snapshot :meth:`restore` loaded, if any.
        self.restored: Snapshot | None = None
        self._seq = 0
        self._saved: Mapping[int, int] | None = None  # update counters of the last one
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._due = threading.Event()
        self._thread: threading.Thread | None = None

    def restore(self) -> Snapshot | None:
        """Load the newest readable snapshot into the store (newer torn ones are logged)."""
        snap, problems = latest_snapshot(self.folder)
        for problem in problems:
            log.warning("%s: skipping unreadable snapshot %s", self.name, problem)
        if snap is None:
            log.info("%s: no snapshot in %s, starting empty", self.name, self.folder)
            return None
        with self._lock:
            self.store.load(snap.buckets)
            self._seq, self._saved, self.restored = snap.seq, snap.updates, snap
        log.info(
            "%s: restored snapshot %d (%d buckets, updates %s)",
            self.name, snap.seq, len(snap.buckets), snap.updates,
        )  # fmt: skip
        return snap

    def save(self) -> Path | None:
        """Write a snapshot if any update counter moved since the last one; return its path."""
        with self._lock:
            # The counters first: an idle ps must not copy its whole model every interval.
            if not self.store.shards() or self.store.updates() == self._saved:
                return None
            state = self.store.states()
            self._seq += 1
            path = write_snapshot(self.folder, Snapshot(self._seq, state), self.keep)
            self._saved = {b: s.updates for b, s in state.items()}
            log.info("%s: snapshot %d written (updates %s)", self.name, self._seq, self._saved)
            return path

    def soon(self) -> None:
        """Ask the periodic loop for a snapshot now (something new arrived)."""
        self._due.set()

    def start(self, interval: float) -> None:
        """Save every ``interval`` seconds (and after :meth:`soon`) until :meth:`close`."""
        self._thread = threading.Thread(
            target=self._loop, args=(interval,), name="tfyarn-ps-snapshots", daemon=True
        )
        self._thread.start()

    def close(self) -> Path | None:
        """Stop the loop and write a last snapshot; return its path (None: nothing new)."""
        self._stop.set()
        self._due.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        return self.save()

    def _loop(self, interval: float) -> None:
        next_due = time.monotonic() + interval
        while not self._stop.is_set():
            woke = self._due.wait(timeout=max(0.0, next_due - time.monotonic()))
            if self._stop.is_set():
                break
            self._due.clear()
            try:
                self.save()
            except Exception:
                log.exception("%s: snapshot to %s failed; will retry", self.name, self.folder)
            if not woke or time.monotonic() >= next_due:
                next_due = time.monotonic() + interval
