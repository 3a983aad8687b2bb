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

A job's ps roles that checkpoint (``tfyarn.run(checkpoint_dir=...)``) write *tagged*
snapshots instead: rank 0 asks for one (SNAPSHOT, :class:`~tfyarn.exchange.ps.wire.SnapshotTag`)
right before it writes a trainer checkpoint, and a restarted attempt restores the snapshot
whose tag is the checkpoint the trainers resume from (:class:`SnapshotPlan`), so that ps
and trainers continue from the same step.
"""

from __future__ import annotations

import json
import logging
import os
import re
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

from tfyarn import storage
from tfyarn.errors import ConfigError
from tfyarn.exchange.npzfiles import (
    file_name,
    load_npz,
    matching_files,
    prune,
    raw_bytes,
    sweep_temporaries,
    write_atomically,
)
from tfyarn.exchange.ps.store import BucketState, ShardStore
from tfyarn.exchange.ps.wire import OptimizerConfig, SnapshotTag, np_dtype

__all__ = [
    "Snapshot",
    "SnapshotPlan",
    "Snapshotter",
    "latest_snapshot",
    "read_snapshot",
    "snapshot_files",
    "write_snapshot",
]

log = logging.getLogger("tfyarn.exchange.ps")

#: A snapshot folder or file: a local path, or a cluster file system URL as ``str``.
StoragePath = str | os.PathLike[str]

_SNAPSHOT = re.compile(r"^snapshot-(\d{8})\.npz$")


@dataclass(frozen=True)
class Snapshot:
    """A ps's saved state: its sequence number, every bucket it held, and its tag.

    ``tag`` names the trainer checkpoint the snapshot was taken for (None: a periodic
    snapshot of a service's ps).
    """

    seq: int
    buckets: dict[int, BucketState] = field(default_factory=dict)
    tag: SnapshotTag | None = None

    @property
    def updates(self) -> dict[int, int]:
        """Update counter of each bucket."""
        return {b: s.updates for b, s in self.buckets.items()}


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
    header: dict[str, object] = {"seq": snapshot.seq, "buckets": buckets}
    if snapshot.tag is not None:
        header["tag"] = snapshot.tag.to_dict()
    return header


def write_snapshot(folder: StoragePath, snapshot: Snapshot, keep: int) -> str:
    """Write ``snapshot`` atomically into ``folder``; delete all but the newest ``keep``."""
    arrays: dict[str, np.ndarray] = {}
    for b, s in snapshot.buckets.items():
        arrays[f"b{b}_values"] = raw_bytes(s.values)
        for k, slot in enumerate(s.slots):
            arrays[f"b{b}_slot{k}"] = raw_bytes(slot)
    name = f"snapshot-{snapshot.seq:08d}.npz"
    final = write_atomically(storage.join(os.fspath(folder), name), arrays, _header(snapshot))
    prune(snapshot_files(folder), keep)
    # A writer killed mid-write (an earlier attempt's) left its temporary file behind.
    sweep_temporaries(folder, _SNAPSHOT)
    return final


def snapshot_files(folder: StoragePath) -> list[str]:
    """The snapshot files in ``folder``, oldest first (none if it cannot be listed)."""
    return matching_files(folder, _SNAPSHOT)


def read_snapshot(path: StoragePath) -> Snapshot:
    """Load one snapshot file (raises on a torn or foreign file)."""
    with load_npz(path) as z:
        meta = json.loads(z["meta"].tobytes())
        tag = meta.get("tag")
        snap = Snapshot(int(meta["seq"]), tag=None if tag is None else SnapshotTag.from_dict(tag))
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


def latest_snapshot(
    folder: StoragePath, tag: SnapshotTag | None = None
) -> tuple[Snapshot | None, list[str]]:
    """The newest readable snapshot in ``folder`` and what was wrong with newer ones.

    With ``tag``, the newest readable one taken for that trainer checkpoint (others are
    passed over silently: they belong to other checkpoints).
    """
    problems: list[str] = []
    for path in reversed(snapshot_files(folder)):
        try:
            snap = read_snapshot(path)
        except Exception as exc:  # a torn write, a foreign file: fall back to the previous
            problems.append(f"{file_name(path)}: {exc}")
            continue
        if tag is None or snap.tag == tag:
            return snap, problems
    return None, problems


def _seq_of(path: str) -> int:
    match = _SNAPSHOT.match(file_name(path))
    return int(match.group(1)) if match else 0


@dataclass(frozen=True)
class SnapshotPlan:
    """How a job's ps role snapshots: where, how many, and what it restores at start.

    Parameters
    ----------
    folder : str or Path
        This ps's folder (``<checkpoint_dir>/ps-<index>``), local or ``hdfs://``.
    keep : int
        Snapshots kept (at least 1).
    resume : SnapshotTag or None
        The trainer checkpoint this attempt resumes from: the ps restores the snapshot
        taken for it. None (a first attempt, or nothing to resume): start empty, whatever
        the folder holds.
    """

    folder: StoragePath
    keep: int
    resume: SnapshotTag | None = None

    def __post_init__(self) -> None:
        if self.keep < 1:
            raise ConfigError(f"a ps must keep at least 1 snapshot, not {self.keep}")


class Snapshotter:
    """Snapshots of one :class:`ShardStore` in ``folder``: restore, save, save periodically.

    Parameters
    ----------
    store : ShardStore
        What is saved and restored.
    folder : str or Path
        This ps's snapshot folder (one per ps: sequence numbers are per folder), local or
        ``hdfs://``.
    keep : int
        Snapshots kept (at least 1).
    name : str
        The ps, as the log names it.
    """

    def __init__(self, store: ShardStore, folder: StoragePath, keep: int, *, name: str) -> None:
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

    def restore(self, tag: SnapshotTag | None = None) -> Snapshot | None:
        """Load the newest readable snapshot into the store (newer torn ones are logged).

        With ``tag``, the newest one taken for that trainer checkpoint. Later snapshots
        are numbered after every file in the folder, whichever was restored.
        """
        snap, problems = latest_snapshot(self.folder, tag)
        for problem in problems:
            log.warning("%s: skipping unreadable snapshot %s", self.name, problem)
        files = snapshot_files(self.folder)
        with self._lock:
            self._seq = max([self._seq, *(_seq_of(p) for p in files)])
        if snap is None:
            wanted = "" if tag is None else f" for {tag}"
            log.info("%s: no snapshot%s in %s, starting empty", self.name, wanted, self.folder)
            return None
        with self._lock:
            self.store.load(snap.buckets)
            self._saved, self.restored = snap.updates, snap
        log.info(
            "%s: restored snapshot %d (%d buckets, updates %s)",
            self.name, snap.seq, len(snap.buckets), snap.updates,
        )  # fmt: skip
        return snap

    def save(self, tag: SnapshotTag | None = None) -> str | None:
        """Write a snapshot if any update counter moved since the last one; return its path.

        A ``tag`` (a trainer checkpoint's) always writes one: the restore looks for it.
        """
        with self._lock:
            # The counters first: an idle ps must not copy its whole model every interval.
            if tag is None and (not self.store.shards() or self.store.updates() == self._saved):
                return None
            state = self.store.states()
            self._seq += 1
            path = write_snapshot(self.folder, Snapshot(self._seq, state, tag), self.keep)
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

    def close(self) -> str | None:
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
