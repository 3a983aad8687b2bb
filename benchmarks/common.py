"""What every tfyarn benchmark shares: measurement records and the JSON/markdown/PNG writers.

A benchmark produces :class:`Row` records (one per backend, mode and size), measured with
its baselines in the same run, and hands them to :func:`write_report`, which writes
``<name>.json`` (rows plus the machine and the command line), ``<name>.md`` (a table)
and ``<name>.png`` (throughput against size, one line per backend and mode).
"""

from __future__ import annotations

import json
import os
import platform
import sys
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

__all__ = [
    "DEFAULT_OUT",
    "Row",
    "format_size",
    "machine_info",
    "markdown_table",
    "parse_size",
    "write_json",
    "write_markdown",
    "write_png",
    "write_report",
]

#: Where results go unless ``--out`` says otherwise (git-ignored).
DEFAULT_OUT = "results"

_UNITS = {
    "": 1,
    "B": 1,
    "K": 1 << 10,
    "KIB": 1 << 10,
    "M": 1 << 20,
    "MIB": 1 << 20,
    "G": 1 << 30,
    "GIB": 1 << 30,
}


@dataclass
class Row:
    """One measurement.

    Parameters
    ----------
    backend : str
        What moved the bytes (``"tcp"``, ``"raw-socket"``, ``"memcpy"`` ...).
    mode : str
        ``"one-way"`` (throughput of a stream of messages) or ``"round-trip"``
        (ping-pong of one message).
    size : int
        Message size in bytes.
    reps : int
        Timed repetitions (after warm-up).
    seconds : float
        Wall time of the timed repetitions.
    gbps : float
        Payload bytes moved per second, in GB/s (10^9); for round trips both directions
        count.
    latency_us : float
        Seconds per repetition, in microseconds (one round trip, or one message).
    extra : dict
        Anything else worth keeping (e.g. the baseline's tool output).
    """

    backend: str
    mode: str
    size: int
    reps: int
    seconds: float
    gbps: float
    latency_us: float
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def measured(
        cls, backend: str, mode: str, size: int, reps: int, seconds: float, **extra: Any
    ) -> Row:
        """Build a row from a timing; throughput and latency are derived."""
        moved = size * reps * (2 if mode == "round-trip" else 1)
        seconds = max(seconds, 1e-12)
        return cls(
            backend,
            mode,
            size,
            reps,
            seconds,
            moved / seconds / 1e9,
            seconds / reps * 1e6,
            dict(extra),
        )


def parse_size(text: str) -> int:
    """``"4K"``, ``"64MiB"``, ``"1048576"`` -> bytes.

    Raises
    ------
    ValueError
        Not a positive size with an optional K/M/G (KiB/MiB/GiB) suffix.
    """
    t = text.strip().upper()
    num = t.rstrip("KMGIB")
    unit = t[len(num) :]
    if not num.isdigit() or unit not in _UNITS or int(num) <= 0:
        raise ValueError(f"bad size {text!r}: use e.g. 4K, 64M, 1G or a number of bytes")
    return int(num) * _UNITS[unit]


def format_size(n: int) -> str:
    """Bytes as ``4 KiB``, ``64 MiB``."""
    for unit, scale in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= scale and n % scale == 0:
            return f"{n // scale} {unit}"
    return f"{n} B"


def machine_info() -> dict[str, Any]:
    """What the numbers were measured on."""
    return {
        "host": platform.node(),
        "platform": platform.platform(),
        "python": sys.version.split()[0],
        "cpus": os.cpu_count(),
        "time_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "argv": sys.argv,
    }


def write_json(path: Path, rows: Sequence[Row], meta: Mapping[str, Any]) -> Path:
    """Write ``{"meta": ..., "rows": [...]}``; return the path."""
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {"meta": dict(meta), "rows": [asdict(r) for r in rows]}
    path.write_text(json.dumps(payload, indent=2, default=str) + "\n")
    return path


def markdown_table(headers: Sequence[str], lines: Iterable[Sequence[Any]]) -> str:
    """A GitHub markdown table."""
    out = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    out.extend("| " + " | ".join(str(c) for c in line) + " |" for line in lines)
    return "\n".join(out) + "\n"


def write_markdown(path: Path, title: str, rows: Sequence[Row], notes: str = "") -> Path:
    """Write the rows as a table grouped by size, then ``notes`` (markdown); return the path."""
    path.parent.mkdir(parents=True, exist_ok=True)
    ordered = sorted(rows, key=lambda r: (r.size, r.mode, -r.gbps))
    table = markdown_table(
        ["size", "mode", "backend", "GB/s", "latency (us)", "reps"],
        (
            [format_size(r.size), r.mode, r.backend, f"{r.gbps:.3f}", f"{r.latency_us:.1f}", r.reps]
            for r in ordered
        ),
    )
    path.write_text(f"# {title}\n\n{notes}\n\n{table}" if notes else f"# {title}\n\n{table}")
    return path


def write_png(path: Path, title: str, rows: Sequence[Row]) -> Path | None:
    """Plot GB/s against message size (log-log), one line per backend and mode.

    Returns None (and writes nothing) when matplotlib is not installed: the JSON and
    markdown carry the same numbers.
    """
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    path.parent.mkdir(parents=True, exist_ok=True)
    modes = sorted({r.mode for r in rows})
    # One colour per backend in every panel, so that lines can be compared across modes.
    colour = {b: f"C{i % 10}" for i, b in enumerate(sorted({r.backend for r in rows}))}
    sizes = sorted({r.size for r in rows})
    fig, axes = plt.subplots(1, len(modes), figsize=(6.5 * len(modes), 4.8), squeeze=False)
    for ax, mode in zip(axes[0], modes, strict=True):
        for backend in sorted({r.backend for r in rows if r.mode == mode}):
            pts = sorted((r.size, r.gbps) for r in rows if r.mode == mode and r.backend == backend)
            ax.plot(
                [p[0] for p in pts],
                [p[1] for p in pts],
                marker="o",
                label=backend,
                color=colour[backend],
            )
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xticks(sizes, [format_size(n).replace(" ", "") for n in sizes])
        ax.set_xlabel("message size")
        ax.set_ylabel("GB/s")
        ax.set_title(f"{title}: {mode}")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_report(
    out_dir: str | os.PathLike[str],
    name: str,
    title: str,
    rows: Sequence[Row],
    meta: Mapping[str, Any] | None = None,
    notes: str = "",
) -> dict[str, Path | None]:
    """Write ``name``.json/.md/.png under ``out_dir``; return the paths written."""
    out = Path(out_dir)
    info = {**machine_info(), **(meta or {})}
    return {
        "json": write_json(out / f"{name}.json", rows, info),
        "markdown": write_markdown(out / f"{name}.md", title, rows, notes),
        "png": write_png(out / f"{name}.png", title, rows),
    }
