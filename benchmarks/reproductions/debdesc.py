"""DebDesc-20: the 20-class text set that stands in for 20 Newsgroups (pure helpers).

``../shared/data/debdesc20.jsonl.gz`` (relative to the checkout) holds 49,944 English
descriptions of Debian packages, labelled with their archive section. The split rule is
fixed: a record is a test record when ``int(sha1(package).hexdigest(), 16) % 5 == 0``
(9,998 of them).
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from tfyarn.errors import ConfigError

__all__ = [
    "DEFAULT_PATH",
    "TEST_RECORDS",
    "Record",
    "default_path",
    "is_test",
    "label_index",
    "read_records",
    "split_counts",
]

#: Where the data set lives relative to the repository root.
DEFAULT_PATH = Path("..") / "shared" / "data" / "debdesc20.jsonl.gz"
#: Test records the split rule selects in the published file.
TEST_RECORDS = 9_998


@dataclass(frozen=True)
class Record:
    """One description: package name, section label, text, and whether it is a test record."""

    package: str
    label: str
    text: str
    test: bool


def is_test(package: str) -> bool:
    """The DebDesc-20 split rule: ``int(sha1(package).hexdigest(), 16) % 5 == 0``."""
    return int(hashlib.sha1(package.encode("utf-8")).hexdigest(), 16) % 5 == 0


def label_index(labels: Iterable[str]) -> dict[str, int]:
    """Label -> class index, in sorted label order (stable across runs)."""
    return {name: i for i, name in enumerate(sorted(set(labels)))}


def default_path() -> Path:
    """The data file: ``$TFYARN_DEBDESC`` if set, else ``../shared/data`` of the checkout."""
    env = os.environ.get("TFYARN_DEBDESC")
    if env:
        return Path(env)
    root = Path(__file__).resolve().parents[2]
    return (root / DEFAULT_PATH).resolve()


def _parse(lines: Iterable[str], source: str) -> Iterator[Record]:
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
            package, label, text = obj["package"], obj["label"], obj["text"]
        except (ValueError, KeyError, TypeError) as exc:
            raise ConfigError(
                f"{source}:{number}: not a DebDesc-20 record ({exc}); each line must be a "
                'JSON object with "package", "label" and "text"'
            ) from None
        yield Record(str(package), str(label), str(text), is_test(str(package)))


def read_records(path: str | os.PathLike[str] | None = None) -> list[Record]:
    """Every record of the (gzipped or plain) JSON-lines file, with its split flag.

    Raises
    ------
    ConfigError
        The file is missing or a line is not a record.
    """
    p = Path(path) if path is not None else default_path()
    if not p.is_file():
        raise ConfigError(
            f"DebDesc-20 not found at {p}: put debdesc20.jsonl.gz under ../shared/data/ "
            "next to the checkout, or set TFYARN_DEBDESC to its path"
        )
    opener = gzip.open if p.suffix == ".gz" else open
    with opener(p, "rt", encoding="utf-8") as f:
        return list(_parse(f, str(p)))


def split_counts(records: Sequence[Record]) -> tuple[int, int]:
    """``(train, test)`` record counts."""
    test = sum(r.test for r in records)
    return len(records) - test, test
