"""Atomic ``.npz`` files of raw arrays plus a JSON header: checkpoints and ps snapshots.

Both the trainers' checkpoints (:mod:`tfyarn.exchange.checkpoint`) and the parameter
servers' snapshots (:mod:`tfyarn.exchange.ps.snapshot`) are one file per save, written to
a temporary name, fsynced and renamed, so that a reader sees a whole file or none; arrays
are stored as raw bytes with their dtype named in the header (bfloat16 from ml_dtypes
would otherwise need pickle), and only the newest few files are kept.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

__all__ = ["matching_files", "prune", "raw_bytes", "write_atomically"]


def raw_bytes(a: np.ndarray) -> np.ndarray:
    """``a``'s bytes as a flat uint8 array (its dtype and shape go in the header)."""
    return np.ascontiguousarray(a).reshape(-1).view(np.uint8)


def write_atomically(
    final: Path, arrays: Mapping[str, np.ndarray], header: Mapping[str, object]
) -> Path:
    """Write ``arrays`` and ``header`` (as array ``meta``) to ``final``, atomically.

    The folder is created if need be; the temporary file is named after this process, so
    two writers never share one.
    """
    final.parent.mkdir(parents=True, exist_ok=True)
    data = dict(arrays)
    data["meta"] = np.frombuffer(json.dumps(dict(header)).encode(), np.uint8)
    tmp = final.parent / f".{final.name}.{os.getpid()}.tmp"
    with open(tmp, "wb") as f:
        np.savez(f, allow_pickle=False, **data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, final)
    return final


def matching_files(folder: str | os.PathLike[str], pattern: re.Pattern[str]) -> list[Path]:
    """The files of ``folder`` whose names match ``pattern``, sorted (none if unlistable)."""
    try:
        return sorted(p for p in Path(folder).iterdir() if pattern.match(p.name))
    except OSError:
        return []


def prune(files: Sequence[Path], keep: int) -> None:
    """Delete all but the last ``keep`` of ``files`` (oldest first); ignore vanished ones."""
    for old in list(files)[: max(len(files) - keep, 0)]:
        with contextlib.suppress(OSError):
            old.unlink()
