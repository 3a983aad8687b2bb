"""``tfyarn data debdesc``: build DebDesc-20 from this machine's Debian package lists.

DebDesc-20 (49,944 English descriptions of Debian bookworm packages, labelled with their
archive section, 20 classes) is what ``tfyarn bench reproduce`` trains its text MLP on.
It is built in seconds, deterministically, from bookworm main's ``Packages`` and
``Translation-en`` indexes under /var/lib/apt/lists. Debian container images skip the
English descriptions; fetch them with ``apt-get update -o Acquire::Languages=en``.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

__all__ = ["register"]


#: Help of the ``data`` command and of each data set it builds.
_HELP = "build the data sets the benchmarks use"
_DEBDESC_HELP = "DebDesc-20 from the Debian package lists"


def register(subparsers: Any) -> None:
    """Add the ``data`` subcommand and its data sets."""
    formatter = argparse.RawDescriptionHelpFormatter
    parser = subparsers.add_parser(
        "data", help=_HELP, description=__doc__, formatter_class=formatter
    )
    sets = parser.add_subparsers(dest="dataset", metavar="DATASET", required=True)
    _add_debdesc(
        sets.add_parser(
            "debdesc", help=_DEBDESC_HELP, description=__doc__, formatter_class=formatter
        )
    )


def _add_debdesc(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help="where to write the gzipped JSON lines (default: the cache the benchmarks "
        "read, ~/.cache/tfyarn/data/debdesc20.jsonl.gz)",
    )
    parser.add_argument(
        "--lists",
        type=Path,
        default=Path("/var/lib/apt/lists"),
        help="apt's lists directory (default: /var/lib/apt/lists)",
    )
    parser.add_argument(
        "--compare",
        type=Path,
        default=None,
        metavar="PATH",
        help="also report how many records match those of another copy (e.g. "
        "../shared/data/debdesc20.jsonl.gz)",
    )
    parser.set_defaults(func=_debdesc)


def _debdesc(args: argparse.Namespace) -> int:
    from tfyarn.datasets.debdesc import build, cache_path, compare, read_records, save

    out = args.out if args.out is not None else cache_path()
    built = build(args.lists)
    save(built, out)
    print(f"{built.summary()} -> {out}")
    if args.compare is not None:
        print(f"against {args.compare}: {compare(built.records, read_records(args.compare))}")
    return 0
