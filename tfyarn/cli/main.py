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
SUBCOMMANDS: tuple[str, ...] = (
    "submit",
    "doctor",
    "bench",
    "yarn_dev",
    "logs",
    "history",
    "service",
    "pack_env",
    "data",
)


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


def _parse(parser: argparse.ArgumentParser, argv: list[str]) -> argparse.Namespace:
    """Parse ``argv``; subcommands with ``TAKES_SCRIPT`` get ``script``, its args, passthrough.

    Such a subcommand (``submit``) wraps another program: its own options come before the
    script, options it does not know are passed through, and everything after the script
    belongs to the script.
    """
    command = argv[0] if argv else ""
    module = None
    if command in SUBCOMMANDS:
        module = importlib.import_module(f"tfyarn.cli.{command}")
    if module is None or not getattr(module, "TAKES_SCRIPT", False) or "-h" in argv[1:2]:
        return parser.parse_args(argv)
    own, script, script_args = module.split_argv(argv[1:])
    args, passthrough = parser.parse_known_args([command, *own])
    args.script, args.script_args, args.passthrough = script, script_args, passthrough
    return args


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``tfyarn`` command line; return the exit status."""
    parser = build_parser()
    try:
        args = _parse(parser, list(sys.argv[1:] if argv is None else argv))
        return int(args.func(args) or 0)
    except TFYarnError as exc:
        print(f"tfyarn: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("tfyarn: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
