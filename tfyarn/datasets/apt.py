"""Debian package lists as apt keeps them under ``/var/lib/apt/lists``.

apt stores one file per index it downloaded, named after the URI with ``/`` turned into
``_`` (``deb.debian.org_debian_dists_bookworm_main_binary-amd64_Packages.lz4``) and,
depending on its configuration, compressed (``Acquire::GzipIndexes``). This module finds
the ``Packages`` and English ``Translation-en`` indexes of one suite and component, reads
them whatever their compression, and extracts the two fields DebDesc-20 needs: each
package's ``Section`` and each English ``Description-en``.

Debian images built for containers set ``Acquire::Languages "none"``, so their lists
hold no ``Translation-en``; ``apt-get update -o Acquire::Languages=en`` fetches it.
"""

from __future__ import annotations

import bz2
import gzip
import lzma
import shutil
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from tfyarn.errors import ConfigError

__all__ = [
    "APT_HELPER",
    "DEFAULT_LISTS",
    "FETCH_HINT",
    "Description",
    "IndexFiles",
    "find_indexes",
    "iter_descriptions",
    "read_index",
    "sections",
]

#: Where apt keeps the lists it downloaded.
DEFAULT_LISTS = Path("/var/lib/apt/lists")
#: apt's own helper; ``cat-file`` decompresses every format apt can store (lz4, zstd...).
APT_HELPER = Path("/usr/lib/apt/apt-helper")
#: What a user runs to get the lists, English descriptions included.
FETCH_HINT = "`apt-get update -o Acquire::Languages=en` as root"

# Suffixes apt may give a stored index, and how Python reads each (None: apt-helper).
_OPENERS: dict[str, Callable[[Path], bytes] | None] = {
    "": Path.read_bytes,
    ".gz": lambda p: gzip.decompress(p.read_bytes()),
    ".xz": lambda p: lzma.decompress(p.read_bytes()),
    ".lzma": lambda p: lzma.decompress(p.read_bytes()),
    ".bz2": lambda p: bz2.decompress(p.read_bytes()),
    ".lz4": None,
    ".zst": None,
}


@dataclass(frozen=True)
class IndexFiles:
    """The indexes of one suite/component/architecture on one mirror.

    Attributes
    ----------
    packages : Path
        The ``Packages`` index (one stanza per binary package).
    translation : Path
        The ``Translation-en`` index (``Package``, ``Description-md5``, ``Description-en``).
    release : str
        The suite's ``Version`` from its ``InRelease``/``Release`` file (e.g. ``"12.15"``),
        ``""`` when apt kept none.
    """

    packages: Path
    translation: Path
    release: str

    def __post_init__(self) -> None:
        for path in (self.packages, self.translation):
            if not path.is_file():
                raise ConfigError(f"{path} is not a file; run {FETCH_HINT}")


@dataclass(frozen=True)
class Description:
    """One ``Translation-en`` stanza: the package and its description as apt stores it.

    ``text`` is the ``Description-en`` field: the synopsis on the first line, then the
    long description's lines, each still starting with the space of the control format.
    """

    package: str
    text: str


def _stored(directory: Path, stem: str) -> list[Path]:
    """The files ``<mirror>_<stem><suffix>`` for every mirror, with a known suffix."""
    found = []
    for path in sorted(directory.glob(f"*_{stem}*")):
        suffix = path.name.split(stem, 1)[1]
        if suffix in _OPENERS and path.is_file():
            found.append(path)
    return found


def _release_version(directory: Path, mirror: str, suite: str) -> str:
    for name in ("InRelease", "Release"):
        path = directory / f"{mirror}_dists_{suite}_{name}"
        if path.is_file():
            for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
                if line.startswith("Version:"):
                    return line.split(":", 1)[1].strip()
    return ""


def find_indexes(
    directory: Path = DEFAULT_LISTS,
    *,
    suite: str = "bookworm",
    component: str = "main",
    architecture: str = "amd64",
) -> IndexFiles:
    """The ``Packages`` and ``Translation-en`` indexes of ``suite/component`` in ``directory``.

    Only the suite itself is read (not ``-updates`` or ``-security``). When several mirrors
    are listed, the first in sorted order that has both indexes is used.

    Raises
    ------
    ConfigError
        Either index is missing, with the command that fetches it.
    """
    base = f"dists_{suite}_{component}_"
    packages = _stored(directory, f"{base}binary-{architecture}_Packages")
    translations = {
        p.name.split("_dists_", 1)[0]: p for p in _stored(directory, f"{base}i18n_Translation-en")
    }
    for path in packages:
        mirror = path.name.split("_dists_", 1)[0]
        if mirror in translations:
            release = _release_version(directory, mirror, suite)
            return IndexFiles(path, translations[mirror], release)
    what = f"binary-{architecture} Packages" if not packages else "Translation-en"
    raise ConfigError(
        f"no {suite} {component} {what} index in {directory}: DebDesc-20 is built from "
        f"the package lists of a Debian {suite} source with the {component} component and "
        f"English descriptions (which Debian container images turn off); run {FETCH_HINT}"
    )


def read_index(path: Path) -> str:
    """The text of a stored index, decompressed according to its suffix.

    Raises
    ------
    ConfigError
        The suffix needs apt's helper (lz4, zstd) and it is missing or fails.
    """
    suffix = path.suffix if path.suffix in _OPENERS else ""
    opener = _OPENERS[suffix]
    if opener is not None:
        return opener(path).decode("utf-8")
    helper = str(APT_HELPER) if APT_HELPER.is_file() else shutil.which("apt-helper")
    if helper is None:
        raise ConfigError(
            f"cannot read {path}: {suffix} indexes need apt's helper ({APT_HELPER}), which "
            "is not installed; install apt or store the lists uncompressed"
        )
    done = subprocess.run([helper, "cat-file", str(path)], capture_output=True, check=False)
    if done.returncode != 0:
        err = done.stderr.decode("utf-8", "replace").strip()
        raise ConfigError(f"apt-helper cat-file {path} failed ({err}); run {FETCH_HINT}")
    return done.stdout.decode("utf-8")


def sections(packages_text: str) -> dict[str, str]:
    """Package name -> ``Section``, from a ``Packages`` index (first stanza of a name wins)."""
    result: dict[str, str] = {}
    package = ""
    for line in packages_text.splitlines():
        if line.startswith("Package:"):
            package = line[8:].strip()
        elif line.startswith("Section:") and package:
            result.setdefault(package, line[8:].strip())
        elif not line:
            package = ""
    return result


def iter_descriptions(translation_text: str) -> Iterator[Description]:
    """Every stanza of a ``Translation-en`` index, in file order.

    A package can have several stanzas (one per distinct description its versions on the
    various architectures carry).
    """
    for stanza in translation_text.split("\n\n"):
        package, lines, inside = "", [], False
        for line in stanza.split("\n"):
            if line.startswith("Package:"):
                package, inside = line[8:].strip(), False
            elif line.startswith("Description-en:"):
                lines, inside = [line[15:].strip()], True
            elif inside and line[:1] in (" ", "\t"):
                lines.append(line)
            else:
                inside = False
        if package and lines:
            yield Description(package, "\n".join(lines))
