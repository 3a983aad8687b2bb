"""``tfyarn bench reproduce``: run the chosen parts and write the report."""

from __future__ import annotations

import argparse
import shlex
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from typing import Any

from benchmarks.common import DEFAULT_OUT

__all__ = ["add_arguments", "command_line", "run"]

PARTS = ("1", "2", "3", "all")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``tfyarn bench reproduce``."""
    parser.add_argument("--part", choices=PARTS, default="all", help="which reproduction")
    parser.add_argument(
        "--out", default=DEFAULT_OUT, help=f"output directory (default {DEFAULT_OUT}/)"
    )
    parser.add_argument(
        "--mlp-iterations",
        type=int,
        default=None,
        help="part 2: L-BFGS iterations of the MLlib MLP (default: its time budget's)",
    )
    parser.add_argument(
        "--mlp-rows",
        type=int,
        default=None,
        help="part 2: training records of the MLlib MLP (default 1000; 0: all, needs ~84 GB)",
    )


def command_line(part: str, out: str, extra: Sequence[str] = ()) -> str:
    """The command that reruns ``part`` (printed in the report)."""
    args = ["tfyarn", "bench", "reproduce", "--part", part, "--out", out, *extra]
    return " ".join(shlex.quote(a) for a in args)


def _parts(args: argparse.Namespace) -> list[tuple[int, Callable[[], Any]]]:
    out = args.out

    def part1() -> Any:
        from benchmarks.reproductions import lstm_iris

        return lstm_iris.run_part(out)

    def part2() -> Any:
        from benchmarks.reproductions import debdesc_mlp

        return debdesc_mlp.run_part(out, mlp_iterations=args.mlp_iterations, mlp_rows=args.mlp_rows)

    def part3() -> Any:
        from benchmarks.reproductions import easgd_adagrad

        return easgd_adagrad.run_part(out)

    every = [(1, part1), (2, part2), (3, part3)]
    return every if args.part == "all" else [every[int(args.part) - 1]]


def _failed(part: int, exc: BaseException, seconds: float) -> Any:
    from benchmarks.reproductions.report import PartResult

    return PartResult(
        part=part,
        title="failed",
        source="",
        published=[],
        columns=["error"],
        rows=[{"error": f"{type(exc).__name__}: {str(exc)[-500:]}"}],
        notes="```\n" + "".join(traceback.format_exception(exc))[-4000:] + "\n```",
        seconds=seconds,
    )


def run(args: argparse.Namespace) -> int:
    """Run the parts one after the other; a failed part is reported, the others still run.

    Parts already in ``--out/reproduce.json`` and not rerun stay in the report.
    """
    from benchmarks.reproductions.report import merge_parts, read_parts, write_report
    from benchmarks.reproductions.sparkenv import versions

    environment = versions()
    # a part rerun alone replaces its own section of an earlier report in --out
    earlier = read_parts(args.out)
    results: list[Any] = []
    status = 0
    for part, fn in _parts(args):
        begun = time.monotonic()
        try:
            result = fn()
        except Exception as exc:  # report it, run the other parts
            print(f"part {part} failed: {exc}", file=sys.stderr, flush=True)
            result = _failed(part, exc, time.monotonic() - begun)
            status = 1
        extra: list[str] = []
        if part == 2:
            for flag, value in (
                ("--mlp-iterations", args.mlp_iterations),
                ("--mlp-rows", args.mlp_rows),
            ):
                if value is not None:
                    extra += [flag, str(value)]
        result.command = command_line(str(part), args.out, extra)
        results.append(result)
        paths = write_report(args.out, merge_parts(earlier, results), environment)
        print(
            f"part {part} done in {time.monotonic() - begun:.0f} s; report: {paths['markdown']}",
            flush=True,
        )
    return status
