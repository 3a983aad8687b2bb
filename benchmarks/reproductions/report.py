"""The reproduction report: one section per part, tables, targets, plots, how to rerun.

:class:`PartResult` is what a part hands back; :func:`render_markdown` turns a list of them
into the report text (pure); :func:`write_report` writes ``reproduce.md`` and
``reproduce.json`` (the PNGs are written by the parts themselves).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

__all__ = [
    "PartResult",
    "Target",
    "format_cell",
    "merge_parts",
    "read_parts",
    "render_markdown",
    "write_report",
]


@dataclass(frozen=True)
class Target:
    """A stated goal and whether this run met it.

    Parameters
    ----------
    name : str
        What is compared, in words.
    measured : float
        The measured value.
    goal : float
        The threshold.
    higher_is_better : bool
        True when ``measured >= goal`` meets the target, False for ``<=``.
    unit : str
        Printed after both numbers.
    """

    name: str
    measured: float
    goal: float
    higher_is_better: bool = True
    unit: str = ""

    @property
    def met(self) -> bool:
        """Whether the measured value is on the right side of the goal."""
        if math.isnan(self.measured):
            return False
        return self.measured >= self.goal if self.higher_is_better else self.measured <= self.goal


@dataclass
class PartResult:
    """The outcome of one reproduction.

    Parameters
    ----------
    part : int
        1, 2 or 3.
    title : str
        Section title.
    source : str
        The published experiment (author, title, what they reported).
    published : list of dict
        The published figures, one dict per line (printed as a table).
    columns : list of str
        Keys of ``rows`` to print, in order.
    rows : list of dict
        This run's measurements, baselines and tfyarn in the same run.
    targets : list of Target
        Stated goals.
    notes : str
        Markdown: method, deviations from the original, caveats.
    plots : list of str
        PNG file names (relative to the report) to embed.
    command : str
        The exact command that reruns this part.
    seconds : float
        Wall time of the whole part.
    extra : dict
        Anything else worth keeping in the JSON (curves, settings).
    """

    part: int
    title: str
    source: str
    published: list[dict[str, Any]]
    columns: list[str]
    rows: list[dict[str, Any]]
    targets: list[Target] = field(default_factory=list)
    notes: str = ""
    plots: list[str] = field(default_factory=list)
    command: str = ""
    seconds: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)


def format_cell(value: Any) -> str:
    """A table cell: floats to 3 significant decimals, None as a dash."""
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        if math.isnan(value):
            return "n/a"
        if abs(value) >= 100:
            return f"{value:.1f}"
        return f"{value:.3f}"
    return str(value).replace("|", "\\|")


def _table(columns: Sequence[str], rows: Sequence[Mapping[str, Any]]) -> str:
    head = "| " + " | ".join(columns) + " |"
    rule = "|" + "---|" * len(columns)
    body = ["| " + " | ".join(format_cell(r.get(c)) for c in columns) + " |" for r in rows]
    return "\n".join([head, rule, *body])


def _targets(targets: Sequence[Target]) -> str:
    lines = ["| target | measured | goal | met |", "|---|---|---|---|"]
    for t in targets:
        op = ">=" if t.higher_is_better else "<="
        unit = f" {t.unit}" if t.unit else ""
        lines.append(
            f"| {t.name} | {format_cell(float(t.measured))}{unit} | {op} "
            f"{format_cell(float(t.goal))}{unit} | {'yes' if t.met else '**no**'} |"
        )
    return "\n".join(lines)


def render_markdown(parts: Sequence[PartResult], environment: Mapping[str, Any]) -> str:
    """The whole report as markdown (pure: no I/O)."""
    out = ["# tfyarn: published Spark deep-learning experiments, reproduced", ""]
    out.append("Each part runs the original approach and tfyarn on the same data in the same run.")
    out.append("")
    out.append("## Machine and versions")
    out.append("")
    out.extend(f"- {k}: {format_cell(v)}" for k, v in environment.items())
    out.append("")
    for p in sorted(parts, key=lambda p: p.part):
        out.append(f"## Part {p.part}: {p.title}")
        out.append("")
        out.append(f"**Published:** {p.source}")
        out.append("")
        if p.published:
            keys = list(dict.fromkeys(k for row in p.published for k in row))
            out.append(_table(keys, p.published))
            out.append("")
        out.append(f"**This run** ({p.seconds:.0f} s for the whole part):")
        out.append("")
        out.append(_table(p.columns, p.rows))
        out.append("")
        if p.targets:
            out.append(_targets(p.targets))
            out.append("")
        if p.notes:
            out.append(p.notes.strip())
            out.append("")
        out.extend(f"![part {p.part}]({name})" for name in p.plots)
        if p.plots:
            out.append("")
        out.append("Rerun:")
        out.append("")
        out.append(f"```\n{p.command}\n```")
        out.append("")
    return "\n".join(out)


def write_report(
    out_dir: str | Path, parts: Sequence[PartResult], environment: Mapping[str, Any]
) -> dict[str, Path]:
    """Write ``reproduce.md`` and ``reproduce.json`` under ``out_dir``; return their paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    md = out / "reproduce.md"
    md.write_text(render_markdown(parts, environment))
    payload = {
        "environment": dict(environment),
        "parts": [
            {**asdict(p), "targets": [{**asdict(t), "met": t.met} for t in p.targets]}
            for p in parts
        ],
    }
    js = out / "reproduce.json"
    js.write_text(json.dumps(payload, indent=2, default=str) + "\n")
    return {"markdown": md, "json": js}


def read_parts(out_dir: str | Path) -> list[PartResult]:
    """The parts of an earlier ``reproduce.json`` under ``out_dir`` (none if absent)."""
    path = Path(out_dir) / "reproduce.json"
    if not path.is_file():
        return []
    try:
        payload = json.loads(path.read_text())
        parts = []
        for p in payload.get("parts", []):
            targets = [
                Target(**{k: v for k, v in t.items() if k != "met"}) for t in p.get("targets", [])
            ]
            parts.append(PartResult(**{**p, "targets": targets}))
        return parts
    except (ValueError, TypeError, KeyError):
        return []  # an unreadable old report is replaced, not merged


def merge_parts(previous: Sequence[PartResult], new: Sequence[PartResult]) -> list[PartResult]:
    """``previous`` parts not rerun, plus ``new`` ones, in part order (pure)."""
    rerun = {p.part for p in new}
    kept = [p for p in previous if p.part not in rerun]
    return sorted([*kept, *new], key=lambda p: p.part)
