"""``tfyarn history``: the jobs this user ran, one job's record, and its plot.

Every ``tfyarn.run`` appends its record to the history folder as it goes
(``spark.tfyarn.history.dir``, default ``~/.cache/tfyarn/history``):

  tfyarn history                   list the jobs, newest last
  tfyarn history show JOB          one job: settings, roles, attempts, result
  tfyarn history plot JOB -o F     a PNG of loss and samples/s per role, restarts marked

JOB is a job id, or the start of one.
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

from tfyarn.cluster.history import (
    JobHistory,
    default_history_dir,
    find_history,
    list_histories,
    plot_history,
)

__all__ = ["register"]


def register(subparsers: Any) -> None:
    """Add the ``history`` subcommand."""
    parser = subparsers.add_parser(
        "history",
        help="list past jobs, show one, plot its loss and speed",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--dir",
        default=None,
        help="the history folder (default: $TFYARN_HISTORY_DIR, else ~/.cache/tfyarn/history)",
    )
    sub = parser.add_subparsers(dest="action", metavar="ACTION")
    sub.add_parser("list", help="list the jobs (the default)")
    show = sub.add_parser("show", help="print one job's record")
    show.add_argument("job", metavar="JOB", help="job id, or its start")
    show.add_argument("--json", action="store_true", help="every event, as JSON lines")
    plot = sub.add_parser("plot", help="write a PNG of loss and samples/s per role over time")
    plot.add_argument("job", metavar="JOB", help="job id, or its start")
    plot.add_argument("-o", "--output", help="the PNG to write (default: JOB.png here)")
    parser.set_defaults(func=_main)


def _folder(args: argparse.Namespace) -> str:
    return args.dir or default_history_dir()


def _console() -> Any:
    """A rich console; 120 columns wide when not a terminal (rich's 80 wraps job ids)."""
    from rich.console import Console

    return Console(width=None if Console().is_terminal else 120)


def _clock(seconds: float | None) -> str:
    return "-" if seconds is None else time.strftime("%m-%d %H:%M:%S", time.localtime(seconds))


def _wall(history: JobHistory) -> str:
    end = history.end
    if end and isinstance(end.get("wall_time"), int | float):
        return f"{end['wall_time']:.0f} s"
    return "-"


def _list(folder: str) -> int:
    from rich.table import Table

    histories = list_histories(folder)
    console = _console()
    if not histories:
        console.print(f"no jobs in {folder}")
        return 0
    table = Table(title=f"tfyarn jobs ({folder})")
    for column in ("job", "started", "status", "attempts", "workers", "ps", "strategy", "wall"):
        table.add_column(column, no_wrap=column in ("job", "started"))
    for h in histories:
        settings = h.job.get("settings", {})
        table.add_row(
            h.job_id,
            _clock(h.started),
            h.status,
            str(len(h.attempts) or "-"),
            str(settings.get("workers", "?")),
            str(settings.get("ps", 0)),
            str(settings.get("strategy") or "-"),
            _wall(h),
        )
    console.print(table)
    return 0


def _show(history: JobHistory, as_json: bool) -> int:
    if as_json:
        for event in history.events:
            print(json.dumps(event, default=str))
        return 0
    from rich.table import Table

    console = _console()
    console.print(f"[bold]job {history.job_id}[/bold]: {history.status}, started "
                  f"{_clock(history.started)}, wall {_wall(history)}")  # fmt: skip
    settings = history.job.get("settings", {})
    for key, value in settings.items():
        if value not in (None, {}, ""):
            console.print(f"  {key}: {value}")
    end = history.end or {}
    for key in ("transport", "startup_time", "model_dir", "tensorboard_url", "error"):
        if end.get(key) is not None and end[key] != settings.get(key):
            console.print(f"  {key}: {end[key]}")
    table = Table(title="attempts")
    for column in ("attempt", "duration", "outcome", "role", "host", "resumed from"):
        table.add_column(column)
    for a in history.attempts:
        outcome = "succeeded" if not a.get("kind") else f"{a['kind']}: {a.get('cause', '')}"
        table.add_row(
            str(a.get("number")),
            f"{float(a['ended']) - float(a['started']):.0f} s",
            outcome[:120],
            a.get("role") or "-",
            a.get("host") or "-",
            "-" if a.get("resumed_from_step") is None else str(a["resumed_from_step"]),
        )
    console.print(table)
    if history.samples:
        last = history.samples[-1]
        roles = Table(title=f"roles at {_clock(float(last['time']))}")
        for column in ("role", "host", "state", "step", "loss", "samples/s", "exchange"):
            roles.add_column(column)
        for r in last.get("roles", ()):
            share = r.get("exchange_share")
            roles.add_row(
                str(r.get("task")),
                str(r.get("host") or "-"),
                str(r.get("state")),
                "-" if r.get("step") is None else str(r["step"]),
                "-" if r.get("loss") is None else f"{r['loss']:.4f}",
                "-" if r.get("samples_per_s") is None else f"{r['samples_per_s']:,.0f}",
                "-" if share is None else f"{100 * share:.0f}%",
            )
        console.print(roles)
    if history.torn:
        console.print(f"({history.torn} torn line(s) skipped: the driver stopped mid-write)")
    return 0


def _main(args: argparse.Namespace) -> int:
    folder = _folder(args)
    if args.action in (None, "list"):
        return _list(folder)
    history = find_history(folder, args.job)
    if args.action == "show":
        return _show(history, args.json)
    out = args.output or f"{history.job_id}.png"
    print(plot_history(history, out))
    return 0
