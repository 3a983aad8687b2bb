"""DebDesc-20 built from Debian package lists (``tfyarn data debdesc``).

Most tests run on a small lists directory written here, whose stanzas exercise each rule
of :mod:`tfyarn.datasets.debdesc`; one compares a build from this machine's lists with the
published copy in ``../shared/data`` where that exists.
"""

from __future__ import annotations

import gzip
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from benchmarks.reproductions import debdesc as loader
from tfyarn.cli.main import main
from tfyarn.datasets import apt
from tfyarn.datasets import debdesc as dd
from tfyarn.datasets.debdesc import Record
from tfyarn.errors import ConfigError

MIRROR = "mirror.example_debian"

PACKAGES = """\
Package: alpha
Version: 1
Section: libs
Description: Alpha library

Package: beta
Section: libs

Package: gamma
Section: doc

Package: delta
Section: doc

Package: dup
Section: libs

Package: dup
Section: x11

Package: eps
Section: games

Package: zeta
Section: misc
"""

# Stanzas in file order. "orphan" has no Packages entry, so it is skipped *before* the
# dedup and beta keeps the same text; delta repeats gamma's raw text and is dropped; beta
# has two descriptions (two records, ordered by text).
TRANSLATION = """\
Package: alpha
Description-md5: 1
Description-en: Alpha library
 ALPHA does things; see alpha-doc.
 .
  An indented line stays indented.

Package: orphan
Description-md5: 2
Description-en: shared synopsis
 The same words.

Package: beta
Description-md5: 2
Description-en: shared synopsis
 The same words.

Package: gamma
Description-md5: 3
Description-en: a manual
 Read it.

Package: delta
Description-md5: 3
Description-en: a manual
 Read it.

Package: beta
Description-md5: 4
Description-en: another synopsis
 Another text.

Package: dup
Description-md5: 5
Description-en: dup it
 Dup.

Package: eps
Description-md5: 6
Description-en: a game
 Play.

Package: zeta
Description-md5: 7
Description-en: misc thing
 Zeta.
"""

EXPECTED = [
    Record("gamma", "doc", "a manual\nRead it.", dd.is_test("gamma")),
    Record("eps", "games", "a game\nPlay.", dd.is_test("eps")),
    Record(
        "alpha",
        "libs",
        "  library\n  does things; see  -doc.\n\n An indented line stays indented.",
        dd.is_test("alpha"),
    ),
    Record("beta", "libs", "another synopsis\nAnother text.", dd.is_test("beta")),
    Record("beta", "libs", "shared synopsis\nThe same words.", dd.is_test("beta")),
    Record("dup", "libs", "  it\n .", dd.is_test("dup")),
    Record("zeta", "misc", "misc thing\n .", dd.is_test("zeta")),
]


def write_lists(directory: Path, translation_suffix: str = ".gz") -> Path:
    """A lists directory as apt leaves it: plain Packages, gzipped Translation-en."""
    directory.mkdir(parents=True, exist_ok=True)
    base = directory / f"{MIRROR}_dists_bookworm_main_"
    Path(f"{base}binary-amd64_Packages").write_text(PACKAGES)
    translation = Path(f"{base}i18n_Translation-en{translation_suffix}")
    if translation_suffix == ".gz":
        translation.write_bytes(gzip.compress(TRANSLATION.encode()))
    else:
        translation.write_text(TRANSLATION)
    (directory / f"{MIRROR}_dists_bookworm_InRelease").write_text("Suite: x\nVersion: 12.99\n")
    # another suite's index must not be read
    security = directory / "sec.example_dists_bookworm-security_main_i18n_Translation-en"
    security.write_text("Package: alpha\nDescription-en: security text\n x\n")
    return directory


def test_the_rules_on_small_lists(tmp_path: Path) -> None:
    built = dd.build(write_lists(tmp_path / "lists"))
    assert list(built.records) == EXPECTED
    assert built.indexes.release == "12.99"
    assert built.summary() == (
        "DebDesc-20: 7 records ("
        f"{7 - sum(r.test for r in EXPECTED)} train, {sum(r.test for r in EXPECTED)} test), "
        "4 labels, from Debian 12.99 lists "
        "mirror.example_debian_dists_bookworm_main_i18n_Translation-en.gz"
    )


def test_the_most_frequent_labels_are_kept_ties_by_name(tmp_path: Path) -> None:
    lists = write_lists(tmp_path / "lists")
    section_of = apt.sections(PACKAGES)
    descriptions = apt.iter_descriptions(TRANSLATION)
    records = dd.select(section_of, descriptions, classes=3)
    # libs 4, then doc, games and misc with 1 each: doc and games win by name
    assert [r.label for r in records] == ["doc", "games", "libs", "libs", "libs", "libs"]
    assert dd.build(lists).records == tuple(EXPECTED)


def test_builds_are_deterministic_and_split_by_sha1(tmp_path: Path) -> None:
    lists = write_lists(tmp_path / "lists")
    first, second = tmp_path / "a.jsonl.gz", tmp_path / "b.jsonl.gz"
    dd.save(dd.build(lists), first)
    dd.save(dd.build(lists), second)
    assert first.read_bytes() == second.read_bytes()
    assert first.read_bytes()[4:8] == b"\0\0\0\0"  # no time in the gzip header
    records = dd.read_records(first)
    assert records == EXPECTED
    assert [r.test for r in records] == [dd.is_test(r.package) for r in records]
    assert dd.label_index(r.label for r in records) == {"doc": 0, "games": 1, "libs": 2, "misc": 3}
    assert (tmp_path / "a.jsonl.gz.source").read_text().count("\n") == 2


@pytest.mark.parametrize(
    ("package", "text"),
    [
        ("abicheck", "ABIcheck checks; abicheck-doc too. Not abichec."),
        ("g++", "G++ and g++-12 and gxx"),
        ("a.b", "aXb a.b A.B"),
        ("sam", "\u017fam SAM sam"),  # long s: only Unicode case rules match it
        ("kit", "\u212ait (Kelvin sign) kit"),
        ("pi", "\u0130 pi PI \u03c0"),
        ("aa", "aaa aaaa"),
    ],
)
def test_name_removal_is_case_insensitive_re_sub(package: str, text: str) -> None:
    expected = re.sub(re.escape(package), " ", text, flags=re.IGNORECASE)
    assert dd.normalise(package, text) == expected


def test_missing_english_descriptions_say_how_to_fetch_them(tmp_path: Path) -> None:
    lists = write_lists(tmp_path / "lists")
    for p in lists.glob(f"{MIRROR}_*Translation-en*"):
        p.unlink()
    with pytest.raises(ConfigError) as info:
        dd.build(lists)
    assert str(info.value) == (
        f"no bookworm main Translation-en index in {lists}: DebDesc-20 is built from the "
        "package lists of a Debian bookworm source with the main component and English "
        "descriptions (which Debian container images turn off); run "
        "`apt-get update -o Acquire::Languages=en` as root"
    )
    with pytest.raises(ConfigError, match="no bookworm main binary-amd64 Packages index"):
        dd.build(tmp_path / "empty")


@pytest.mark.skipif(
    not (apt.APT_HELPER.is_file() and shutil.which("lz4")), reason="needs apt-helper and lz4"
)
def test_lz4_indexes_are_read_through_apt_helper(tmp_path: Path) -> None:
    lists = write_lists(tmp_path / "lists", translation_suffix="")
    plain = next(lists.glob(f"{MIRROR}_*Translation-en"))
    subprocess.run(["lz4", "-q", "--rm", str(plain), f"{plain}.lz4"], check=True)
    assert dd.build(lists).records == tuple(EXPECTED)


def test_the_cache_is_built_once_and_rebuilt_when_the_lists_change(tmp_path: Path) -> None:
    lists = write_lists(tmp_path / "lists")
    target = tmp_path / "cache" / dd.FILE_NAME
    assert dd.cached_build(lists, target) == target
    built_ns = target.stat().st_mtime_ns
    os.utime(target, ns=(built_ns - 10**9, built_ns - 10**9))
    dd.cached_build(lists, target)
    assert target.stat().st_mtime_ns == built_ns - 10**9  # current: not rewritten
    packages = next(lists.glob(f"{MIRROR}_*Packages"))
    packages.write_text(PACKAGES.replace("Section: misc", "Section: text"))
    dd.cached_build(lists, target)
    assert [r.label for r in dd.read_records(target)][-1] == "text"
    shutil.rmtree(lists)
    assert dd.cached_build(lists, target) == target  # lists gone: the build is kept
    with pytest.raises(ConfigError, match="Acquire::Languages=en"):
        dd.cached_build(lists, tmp_path / "other" / dd.FILE_NAME)


def test_the_cli_builds_and_compares(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    lists = write_lists(tmp_path / "lists")
    reference = tmp_path / "ref.jsonl.gz"
    dd.write_records(EXPECTED[:-1], reference)
    out = tmp_path / "out.jsonl.gz"
    argv = ["data", "debdesc", "--lists", str(lists), "--out", str(out)]
    assert main([*argv, "--compare", str(reference)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].endswith(f"Translation-en.gz -> {out}")
    assert lines[1] == (
        f"against {reference}: 6 records identical (package, label, text) in a different "
        "order; 1 only in the build, 0 only in the reference"
    )
    assert dd.read_records(out) == EXPECTED
    assert main([*argv[:2], "--lists", str(tmp_path / "none"), "--out", str(out)]) == 1
    assert "tfyarn: error: no bookworm main binary-amd64 Packages index" in capsys.readouterr().err


def test_without_a_published_copy_the_benchmark_builds_and_caches(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A fresh clone has no ../shared: the loader builds from the lists into the cache."""
    monkeypatch.delenv("TFYARN_DEBDESC", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.setattr(loader, "shared_copy", lambda: tmp_path / "no-shared" / dd.FILE_NAME)
    monkeypatch.setattr(loader, "LISTS", write_lists(tmp_path / "lists"))
    assert loader.default_path() == tmp_path / "xdg" / "tfyarn" / "data" / dd.FILE_NAME
    assert loader.read_records() == EXPECTED
    monkeypatch.setattr(loader, "LISTS", tmp_path / "no-lists")
    (tmp_path / "xdg" / "tfyarn" / "data" / dd.FILE_NAME).unlink()
    with pytest.raises(ConfigError, match=r"no published copy at .*no-shared.*Languages=en"):
        loader.read_records()
    published = tmp_path / "shared" / dd.FILE_NAME
    dd.write_records(EXPECTED[:2], published)
    monkeypatch.setattr(loader, "shared_copy", lambda: published)
    assert loader.default_path() == published
    assert loader.read_records() == EXPECTED[:2]


SHARED = loader.shared_copy()


@pytest.mark.skipif(
    not SHARED.is_file(),
    reason=f"no published copy at {SHARED} to compare with (a fresh clone has no ../shared)",
)
def test_a_build_from_this_machines_lists_matches_the_published_copy(tmp_path: Path) -> None:
    built = dd.build()
    reference = dd.read_records(SHARED)
    overlap = dd.compare(built.records, reference)
    if built.indexes.release != dd.RELEASE:
        # the mirror moved on: the rules still hold when nearly every record is the same
        assert overlap.same >= 0.95 * len(reference), (
            f"lists of Debian {built.indexes.release}, copy of {dd.RELEASE}: {overlap}"
        )
        return
    assert (overlap.same, overlap.only_first, overlap.only_second) == (dd.RECORDS, 0, 0)
    assert list(built.records) == reference
    out = tmp_path / dd.FILE_NAME
    dd.write_records(built.records, out)
    assert gzip.decompress(out.read_bytes()) == gzip.decompress(SHARED.read_bytes())
