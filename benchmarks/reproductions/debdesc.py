"""DebDesc-20 for ``tfyarn bench reproduce``: which copy of the data set it reads.

The data set and its rules live in :mod:`tfyarn.datasets.debdesc`. The file read is, in
order: ``$TFYARN_DEBDESC`` when set; the published copy
``../shared/data/debdesc20.jsonl.gz`` beside the checkout when it exists; otherwise the
copy built from this machine's Debian package lists and cached under
``~/.cache/tfyarn/data`` (built on first use, in seconds; ``tfyarn data debdesc``).
"""

from __future__ import annotations

import os
from pathlib import Path

from tfyarn.datasets import debdesc as dataset
from tfyarn.datasets.apt import DEFAULT_LISTS
from tfyarn.datasets.debdesc import TEST_RECORDS, Record, is_test, label_index, split_counts
from tfyarn.errors import ConfigError

__all__ = [
    "DEFAULT_PATH",
    "TEST_RECORDS",
    "Record",
    "default_path",
    "is_test",
    "label_index",
    "read_records",
    "shared_copy",
    "split_counts",
]

#: Where the published copy lives relative to the repository root.
DEFAULT_PATH = Path("..") / "shared" / "data" / dataset.FILE_NAME
#: The package lists a missing copy is built from (a module attribute so tests can swap it).
LISTS = DEFAULT_LISTS


def shared_copy() -> Path:
    """The published copy's path (``../shared/data`` of the checkout), present or not."""
    root = Path(__file__).resolve().parents[2]
    return (root / DEFAULT_PATH).resolve()


def default_path() -> Path:
    """The data file: ``$TFYARN_DEBDESC``, else the published copy, else a cached build.

    Raises
    ------
    ConfigError
        No published copy and the package lists cannot build one (the message says why).
    """
    env = os.environ.get("TFYARN_DEBDESC")
    if env:
        return Path(env)
    shared = shared_copy()
    if shared.is_file():
        return shared
    try:
        return dataset.cached_build(LISTS)
    except ConfigError as exc:
        raise ConfigError(
            f"DebDesc-20: no published copy at {shared}, and building it failed: {exc}; "
            "or set TFYARN_DEBDESC to a copy's path"
        ) from None


def read_records(path: str | os.PathLike[str] | None = None) -> list[Record]:
    """Every record of the data file (see :func:`default_path`), with its split flag.

    Raises
    ------
    ConfigError
        The file is missing or a line is not a record.
    """
    p = Path(path) if path is not None else default_path()
    if not p.is_file():
        raise ConfigError(
            f"DebDesc-20 not found at {p}: build it with `tfyarn data debdesc --out {p}`, "
            "or set TFYARN_DEBDESC to a copy's path"
        )
    return dataset.read_records(p)
