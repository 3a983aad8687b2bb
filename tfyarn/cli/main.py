"""Entry point of the ``tfyarn`` console script.

Each subcommand lives in its own module of this package and exposes
``register(subparsers) -> None``, which adds its parser and sets ``func`` to a callable
``func(args) -> int`` (the exit status). Add a subcommand by adding its module name to
:data:`SUBCOMMANDS`.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from tfyarn.errors import TFYarnError

#: Modules of :mod:`tfyarn.cli` that provide subcommands, in help order.
SUBCOMMANDS: tuple[str, ...] = ("submit", "doctor")


def build_parser() -> argparse.ArgumentParser:
    """Build the top-level parser with every subcommand registered."""
    parser = argparse.ArgumentParser(
        prog="tfyarn",
        description="Train TensorFlow models on Spark and YARN clusters.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in SUBCOMMANDS:
        importlib.import_module(f"tfyarn.cli.{name}").register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``tfyarn`` command line; return the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except TFYarnError as exc:
        print(f"tfyarn: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("tfyarn: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
