"""``tfyarn doctor``: report Java, Spark, TensorFlow, transports and what is wrong."""

from __future__ import annotations

import argparse
import dataclasses
import json
from typing import Any

from tfyarn.doctor import run_checks

__all__ = ["register"]


def register(subparsers: Any) -> None:
    """Add the ``doctor`` subcommand."""
    parser = subparsers.add_parser("doctor", help="check this machine's set-up and say what to fix")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.set_defaults(func=_main)


def _main(args: argparse.Namespace) -> int:
    checks = run_checks()
    failed = [c for c in checks if c.required and not c.ok]
    if args.json:
        print(
            json.dumps(
                {"ok": not failed, "checks": [dataclasses.asdict(c) for c in checks]}, indent=2
            )
        )
        return 1 if failed else 0
    from rich.console import Console
    from rich.table import Table

    table = Table(title="tfyarn doctor", show_lines=False)
    for column in ("check", "status", "found", "what to do"):
        table.add_column(column, overflow="fold")
    for c in checks:
        status = "[green]ok[/]" if c.ok else ("[red]FAIL[/]" if c.required else "[yellow]n/a[/]")
        table.add_row(c.name, status, c.detail, c.fix)
    console = Console()
    console.print(table)
    if failed:
        console.print(f"[red]{len(failed)} required check(s) failed[/]")
    return 1 if failed else 0
