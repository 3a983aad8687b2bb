"""``tfyarn bench NAME``: run a benchmark from the source tree's ``benchmarks/`` package.

Benchmarks are listed in :data:`BENCHMARKS` (name -> module). A benchmark module provides
``add_arguments(parser)`` and ``run(args) -> int``; add one by adding its entry here (or
calling :func:`register_benchmark` before the parser is built). ``tfyarn bench all``
runs every benchmark with its default options.

The benchmarks live next to the ``tfyarn`` package in a source checkout (they are not
installed with the wheel), so this command needs one.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

from tfyarn.errors import ConfigError

__all__ = ["BENCHMARKS", "register", "register_benchmark"]

#: Benchmark name -> module providing ``add_arguments(parser)`` and ``run(args) -> int``.
BENCHMARKS: dict[str, str] = {
    "transport": "benchmarks.transport_bench",
    "exchange": "benchmarks.exchange_bench",
    "reproduce": "benchmarks.reproductions",
}


def register_benchmark(name: str, module_name: str) -> None:
    """Add ``tfyarn bench NAME`` backed by ``module_name``."""
    if not name.isidentifier() or name == "all":
        raise ConfigError(f"invalid benchmark name {name!r}")
    BENCHMARKS[name] = module_name


def _benchmarks_module(module_name: str) -> ModuleType:
    """Import a benchmark module, putting the source checkout on ``sys.path`` if needed."""
    root = Path(__file__).resolve().parents[2]
    if (root / "benchmarks" / "__init__.py").is_file() and str(root) not in sys.path:
        sys.path.insert(0, str(root))
    try:
        return importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigError(
            f"cannot import {module_name} ({exc}); `tfyarn bench` runs from a source checkout "
            "of tfyarn (the benchmarks/ directory is not installed with the package)"
        ) from exc


def _unavailable(exc: ConfigError) -> Any:
    def fail(_args: argparse.Namespace) -> int:
        raise exc

    return fail


def _run_one(args: argparse.Namespace) -> int:
    return int(_benchmarks_module(BENCHMARKS[args.benchmark]).run(args) or 0)


def _run_all(args: argparse.Namespace) -> int:
    status = 0
    for name, module_name in BENCHMARKS.items():
        module = _benchmarks_module(module_name)
        parser = argparse.ArgumentParser(prog=f"tfyarn bench {name}")
        module.add_arguments(parser)
        sub_args = parser.parse_args(["--out", args.out])
        sub_args.benchmark = name
        print(f"== tfyarn bench {name}", flush=True)
        status = max(status, int(module.run(sub_args) or 0))
    return status


def register(subparsers: Any) -> None:
    """Add ``tfyarn bench`` and one sub-command per benchmark."""
    parser = subparsers.add_parser(
        "bench",
        help="measure transports and training against baselines (JSON, markdown, PNG)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="benchmark", metavar="BENCHMARK", required=True)
    for name, module_name in BENCHMARKS.items():
        try:
            module = _benchmarks_module(module_name)
        except ConfigError as exc:
            # Without a source checkout the benchmark is listed but says why it cannot run.
            p = sub.add_parser(name, help=f"(unavailable: {exc})")
            p.set_defaults(func=_unavailable(exc))
            continue
        p = sub.add_parser(name, help=(module.__doc__ or name).strip().splitlines()[0])
        module.add_arguments(p)
        p.set_defaults(func=_run_one)
    p = sub.add_parser("all", help="run every benchmark with its defaults")
    p.add_argument("--out", default="results", help="output directory (default results/)")
    p.set_defaults(func=_run_all)
