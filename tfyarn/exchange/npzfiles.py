"""Atomic ``.npz`` files of raw arrays plus a JSON header: checkpoints and ps snapshots.

Both the trainers' checkpoints (:mod:`tfyarn.exchange.checkpoint`) and the parameter
servers' snapshots (:mod:`tfyarn.exchange.ps.snapshot`) are one file per save, written to
a temporary name, made durable and renamed, so that a reader sees a whole file or none;
arrays are stored as raw bytes with their dtype named in the header (bfloat16 from
ml_dtypes would otherwise need pickle), and only the newest few files are kept.

Folders are local paths or cluster file system URLs (``hdfs://``): every access goes
through :mod:`tfyarn.storage`, and files are named by ``str`` (a ``pathlib.Path`` would
fold ``hdfs://`` into ``hdfs:/``).
"""

from __future__ import annotations

import io
import json
import os
import re
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from tfyarn import storage

__all__ = [
    "file_name",
    "load_npz",
    "matching_files",
    "prune",
    "raw_bytes",
    "sweep_temporaries",
    "write_atomically",
]


def raw_bytes(a: np.ndarray) -> np.ndarray:
    """``a``'s bytes as a flat uint8 array (its dtype and shape go in the header)."""
    return np.ascontiguousarray(a).reshape(-1).view(np.uint8)


def file_name(path: str | os.PathLike[str]) -> str:
    """The last part of a local path or URL."""
    return os.fspath(path).rstrip("/").rsplit("/", 1)[-1]


def write_atomically(
    final: str | os.PathLike[str], arrays: Mapping[str, np.ndarray], header: Mapping[str, object]
) -> str:
    """Write ``arrays`` and ``header`` (as array ``meta``) to ``final``, atomically.

    The folder is created if need be; the temporary file is named after this process, so
    two writers never share one. A local file is streamed to disk; a remote one is built
    in memory first (one upload, then the rename).
    """
    data = dict(arrays)
    data["meta"] = np.frombuffer(json.dumps(dict(header)).encode(), np.uint8)
    target = os.fspath(final)
    if storage.is_local(target) and not target.startswith("file:"):
        folder = os.path.dirname(target) or "."
        os.makedirs(folder, exist_ok=True)
        tmp = os.path.join(folder, f".{os.path.basename(target)}.{os.getpid()}.tmp")
        with open(tmp, "wb") as f:
            np.savez(f, allow_pickle=False, **data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
        return target
    buffer = io.BytesIO()
    np.savez(buffer, allow_pickle=False, **data)
    return storage.write_bytes_atomically(target, buffer.getvalue())


def load_npz(path: str | os.PathLike[str]) -> Any:
    """``numpy.load`` of a local or remote ``.npz`` file (a context manager)."""
    return np.load(storage.read_npz_source(os.fspath(path)), allow_pickle=False)


def matching_files(folder: str | os.PathLike[str], pattern: re.Pattern[str]) -> list[str]:
    """The files of ``folder`` whose names match ``pattern``, sorted (none if unlistable)."""
    base = os.fspath(folder)
    return [storage.join(base, n) for n in storage.list_names(base) if pattern.match(n)]


#: The temporary names :func:`write_atomically` and :func:`storage.write_bytes_atomically`
#: give: ``.<final name>.<pid>[.<8 hex>].tmp``.
_TEMP = re.compile(r"^\.(?P<final>.+)\.(?P<pid>\d+)(?:\.[0-9a-f]{8})?\.tmp$")


def sweep_temporaries(folder: str | os.PathLike[str], pattern: re.Pattern[str]) -> list[str]:
    """Delete the temporary files a killed writer left in ``folder``; return their names.

    A writer killed between creating its temporary file and renaming it (the role was
    SIGKILLed, its container preempted) leaves a ``.tmp`` file that nothing else would
    ever remove; on HDFS it also keeps its blocks. The caller must be the folder's only
    writer (a job's checkpoint writer, one ps shard): then every temporary file for a
    name matching ``pattern`` that is not this process's own is such a leftover.
    """
    base = os.fspath(folder)
    swept: list[str] = []
    for name in storage.list_names(base):
        m = _TEMP.match(name)
        if m is None or not pattern.match(m["final"]) or int(m["pid"]) == os.getpid():
            continue
        try:
            storage.remove(storage.join(base, name))
        except OSError:
            continue
        swept.append(name)
    return swept


def prune(files: Sequence[str], keep: int) -> None:
    """Delete all but the last ``keep`` of ``files`` (oldest first); ignore vanished ones."""
    for old in list(files)[: max(len(files) - keep, 0)]:
        try:
            storage.remove(old)
        except OSError:
            continue
