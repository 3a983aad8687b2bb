"""DebDesc-20: 20-class text classification on Debian package descriptions.

The data set stands in for 20 Newsgroups (which cannot be downloaded on the machines the
benchmarks run on) and is built from what every Debian machine has: its package lists.
The rules, which reproduce the copy published beside the project
(``../shared/data/debdesc20.jsonl.gz``) record for record:

1. Read bookworm ``main``'s ``Translation-en`` index in file order, keeping the stanzas
   whose package has a ``Section`` in the ``binary-amd64`` ``Packages`` index (the label;
   a name listed twice keeps its first section). A package can contribute several
   records: one per distinct description its versions carry.
2. Drop every stanza whose raw ``Description-en`` equals an earlier one (first kept).
3. Keep the 20 most frequent labels (ties broken by name).
4. Text: the synopsis line, then the long description with the control format undone:
   one leading space removed from each line, ``" ."`` paragraph lines made empty. Then
   every occurrence of the package name, in any case, is replaced by a space.
5. Order by ``(label, package, text)``.

Split rule: a record is a test record when ``int(sha1(package).hexdigest(), 16) % 5 ==
0``. The file is JSON lines (``package``, ``label``, ``text``), gzipped.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import re
import threading
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from tfyarn.datasets.apt import (
    DEFAULT_LISTS,
    Description,
    IndexFiles,
    find_indexes,
    iter_descriptions,
    read_index,
    sections,
)
from tfyarn.errors import ConfigError

__all__ = [
    "CLASSES",
    "FILE_NAME",
    "RECORDS",
    "RELEASE",
    "TEST_RECORDS",
    "Build",
    "Overlap",
    "Record",
    "build",
    "build_from",
    "cache_path",
    "cached_build",
    "compare",
    "is_test",
    "label_index",
    "normalise",
    "read_records",
    "save",
    "select",
    "split_counts",
    "write_records",
]

#: Classes kept: the most frequent sections.
CLASSES = 20
#: The Debian point release whose lists the published copy was built from, and its counts.
RELEASE = "12.15"
RECORDS = 49_944
TEST_RECORDS = 9_998
#: Name of the data file, in ``../shared/data`` and in the cache.
FILE_NAME = "debdesc20.jsonl.gz"


@dataclass(frozen=True)
class Record:
    """One description: package name, section label, text, and whether it is a test record."""

    package: str
    label: str
    text: str
    test: bool

    def __post_init__(self) -> None:
        if not self.package or not self.label:
            raise ConfigError(f"a DebDesc-20 record needs a package and a label, got {self!r}")


@dataclass(frozen=True)
class Build:
    """A data set built from package lists, and where it came from.

    Attributes
    ----------
    records : tuple of Record
        In file order.
    indexes : IndexFiles
        The lists it was built from (``indexes.release``: the Debian point release).
    """

    records: tuple[Record, ...]
    indexes: IndexFiles

    def summary(self) -> str:
        """One line for the user: counts and the lists' release."""
        train, test = split_counts(self.records)
        labels = len(label_index(r.label for r in self.records))
        release = f"Debian {self.indexes.release}" if self.indexes.release else "Debian"
        return (
            f"DebDesc-20: {len(self.records):,} records ({train:,} train, {test:,} test), "
            f"{labels} labels, from {release} lists {self.indexes.translation.name}"
        )


def is_test(package: str) -> bool:
    """The DebDesc-20 split rule: ``int(sha1(package).hexdigest(), 16) % 5 == 0``."""
    return int(hashlib.sha1(package.encode("utf-8")).hexdigest(), 16) % 5 == 0


def label_index(labels: Iterable[str]) -> dict[str, int]:
    """Label -> class index, in sorted label order (stable across runs)."""
    return {name: i for i, name in enumerate(sorted(set(labels)))}


def split_counts(records: Sequence[Record]) -> tuple[int, int]:
    """``(train, test)`` record counts."""
    test = sum(r.test for r in records)
    return len(records) - test, test


def normalise(package: str, description: str) -> str:
    """A ``Description-en`` as DebDesc-20 text (rule 4 of the module docstring)."""
    synopsis, *long_lines = description.split("\n")
    lines = [synopsis]
    for line in long_lines:
        if line.strip() == ".":
            lines.append("")
        else:
            lines.append(line[1:] if line.startswith(" ") else line)
    return _remove_name("\n".join(lines), package)


def _remove_name(text: str, package: str) -> str:
    """``text`` with every case-insensitive occurrence of ``package`` replaced by a space.

    The same as ``re.sub(re.escape(package), " ", text, flags=re.IGNORECASE)``, which is
    what the published copy was made with; compiling 50,000 one-off patterns took most of
    a build, so ASCII text (nearly all of it, and where ``str.lower`` keeps every offset)
    is searched directly. Elsewhere Unicode case rules (long s U+017F matches ``"s"``) need re.
    """
    if not (text.isascii() and package.isascii()):
        return re.sub(re.escape(package), " ", text, flags=re.IGNORECASE)
    lower, name = text.lower(), package.lower()
    parts, start = [], 0
    while (hit := lower.find(name, start)) != -1:
        parts += [text[start:hit], " "]
        start = hit + len(name)
    parts.append(text[start:])
    return "".join(parts)


def select(
    section_of: dict[str, str], descriptions: Iterable[Description], classes: int = CLASSES
) -> list[Record]:
    """The records of the data set (rules 1-5 of the module docstring).

    Parameters
    ----------
    section_of : dict of str to str
        Package -> ``Section``, from the ``Packages`` index.
    descriptions : iterable of Description
        The ``Translation-en`` stanzas in file order (the order decides which of two equal
        descriptions is kept).
    classes : int
        How many of the most frequent labels to keep.
    """
    seen: set[str] = set()
    kept: list[tuple[str, Description]] = []
    for d in descriptions:
        label = section_of.get(d.package)
        if label is None or d.text in seen:
            continue
        seen.add(d.text)
        kept.append((label, d))
    counts = Counter(label for label, _ in kept)
    top = {name for name, _ in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:classes]}
    records = [
        Record(d.package, label, normalise(d.package, d.text), is_test(d.package))
        for label, d in kept
        if label in top
    ]
    return sorted(records, key=lambda r: (r.label, r.package, r.text))


def build(lists: Path = DEFAULT_LISTS) -> Build:
    """DebDesc-20 from the package lists in ``lists`` (seconds).

    Raises
    ------
    ConfigError
        The lists lack bookworm main's ``Packages`` or ``Translation-en`` index.
    """
    return build_from(find_indexes(lists))


def build_from(indexes: IndexFiles) -> Build:
    """DebDesc-20 from the indexes :func:`~tfyarn.datasets.apt.find_indexes` found."""
    section_of = sections(read_index(indexes.packages))
    descriptions = iter_descriptions(read_index(indexes.translation))
    return Build(tuple(select(section_of, descriptions)), indexes)


def _lines(records: Iterable[Record]) -> Iterator[str]:
    for r in records:
        yield json.dumps({"package": r.package, "label": r.label, "text": r.text}) + "\n"


def write_records(records: Iterable[Record], path: Path) -> None:
    """Write gzipped JSON lines, byte for byte the same for the same records.

    The gzip header carries no name and no time, and the file appears atomically (a
    reader never sees half of it).
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    # not mkstemp: its files are private (0600) whatever the umask, and this one is data
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    try:
        with open(tmp, "wb") as raw, gzip.GzipFile("", "wb", fileobj=raw, mtime=0) as gz:
            for line in _lines(records):
                gz.write(line.encode("utf-8"))
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


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


def read_records(path: Path) -> list[Record]:
    """Every record of a (gzipped or plain) JSON-lines file, with its split flag.

    Raises
    ------
    ConfigError
        The file is missing or a line is not a record.
    """
    if not path.is_file():
        raise ConfigError(
            f"DebDesc-20 not found at {path}: build it with `tfyarn data debdesc --out {path}`"
        )
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as f:
        return list(_parse(f, str(path)))


def cache_path() -> Path:
    """Where a built data set is cached: ``$XDG_CACHE_HOME/tfyarn/data`` (``~/.cache``)."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "tfyarn" / "data" / FILE_NAME


def _fingerprint(indexes: IndexFiles) -> str:
    """Names, sizes and modification times of the lists: a build is current while it holds."""
    lines = []
    for path in (indexes.packages, indexes.translation):
        st = path.stat()
        lines.append(f"{path} {st.st_size} {st.st_mtime_ns}")
    return "\n".join(lines) + "\n"


def cached_build(lists: Path = DEFAULT_LISTS, path: Path | None = None) -> Path:
    """The cached data set, (re)built when missing or when the lists changed since.

    Beside the data file, ``<file>.source`` records which lists (and which versions of them)
    it was built from; an ``apt-get update`` that brings new lists triggers a rebuild.

    Raises
    ------
    ConfigError
        It must be built and the lists lack the indexes (the message says how to get them).
    """
    target = path if path is not None else cache_path()
    source = target.with_name(target.name + ".source")
    try:
        indexes = find_indexes(lists)
    except ConfigError:
        if target.is_file():
            return target  # the lists are gone since: the cached build is all there is
        raise
    if target.is_file() and source.is_file() and source.read_text() == _fingerprint(indexes):
        return target
    save(build_from(indexes), target)
    return target


def save(built: Build, path: Path) -> None:
    """Write the records to ``path`` and, beside it, ``<file>.source``: the lists they came from."""
    write_records(built.records, path)
    path.with_name(path.name + ".source").write_text(_fingerprint(built.indexes))


@dataclass(frozen=True)
class Overlap:
    """How two versions of the data set compare, record by record."""

    same: int
    only_first: int
    only_second: int
    same_order: bool

    def __str__(self) -> str:
        order = "in the same order" if self.same_order else "in a different order"
        return (
            f"{self.same:,} records identical (package, label, text) {order}; "
            f"{self.only_first:,} only in the build, {self.only_second:,} only in the reference"
        )


def compare(first: Sequence[Record], second: Sequence[Record]) -> Overlap:
    """Records common to both (as multisets), and whether the two files list them alike."""
    a = Counter((r.package, r.label, r.text) for r in first)
    b = Counter((r.package, r.label, r.text) for r in second)
    same = sum((a & b).values())
    return Overlap(same, len(first) - same, len(second) - same, list(first) == list(second))
