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
import re
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

from tfyarn.errors import ConfigError

__all__ = ["BENCHMARKS", "DESCRIPTION", "register", "register_benchmark", "summary"]

#: What ``tfyarn bench --help`` says (the module docstring is for developers).
DESCRIPTION = """\
Measure tfyarn's transports and distributed training against baselines measured in the
same run, and write the results (JSON, a markdown report and PNG plots) to --out.

  tfyarn bench transport --scale 0.25     # a quick run
  tfyarn bench recovery --params 10e6     # kill -> training resumed, checkpoint cost
  tfyarn bench inference                  # KerasModel.transform vs a naive UDF vs predict
  tfyarn bench links --rates 1gbit,10gbit # all-reduce on tbf-limited links, fp16/bf16 too
  tfyarn bench overlap                    # exchange time hidden behind backpropagation
  tfyarn bench scaling --quick            # 1-4 trainers on tbf-limited links vs MWMS (root)
  tfyarn bench all --out results          # every benchmark with its defaults

`tfyarn bench NAME --help` lists a benchmark's options. The benchmarks come with a source
checkout of tfyarn (they are not installed with the package): run this command from one.
"""

#: A docstring's own title (```tfyarn bench x``: ``), then Sphinx roles and literals.
_TITLE = re.compile(r"^``tfyarn bench [\w-]+``:\s*")
_ROLE = re.compile(r":[a-z]+:`~?\.?([^`]+)`")
_LITERAL = re.compile(r"``([^`]+)``")

#: Benchmark name -> module providing ``add_arguments(parser)`` and ``run(args) -> int``.
BENCHMARKS: dict[str, str] = {
    "transport": "benchmarks.transport_bench",
    "exchange": "benchmarks.exchange_bench",
    "reproduce": "benchmarks.reproductions",
    "recovery": "benchmarks.recovery_bench",
    "inference": "benchmarks.inference_bench",
    "links": "benchmarks.link_bench",
    "overlap": "benchmarks.overlap_bench",
    "scaling": "benchmarks.scaling_bench",
}


def register_benchmark(name: str, module_name: str) -> None:
    """Add ``tfyarn bench NAME`` backed by ``module_name``."""
    if not name.isidentifier() or name == "all":
        raise ConfigError(f"invalid benchmark name {name!r}")
    BENCHMARKS[name] = module_name


def summary(doc: str | None, name: str) -> str:
    """A benchmark docstring's first line as plain text for ``--help`` (no Sphinx markup)."""
    if not doc or not doc.strip():
        return name
    text = _TITLE.sub("", doc.strip().splitlines()[0])
    text = _LITERAL.sub(r"\1", _ROLE.sub(r"\1", text))
    return text[:1].upper() + text[1:]


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
        description=DESCRIPTION,
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
        text = summary(module.__doc__, name)
        p = sub.add_parser(name, help=text, description=text)
        module.add_arguments(p)
        p.set_defaults(func=_run_one)
    p = sub.add_parser(
        "all",
        help="run every benchmark with its defaults",
        description="Run every benchmark with its default options, one after the other.",
    )
    p.add_argument("--out", default="results", help="output directory (default results/)")
    p.set_defaults(func=_run_all)
