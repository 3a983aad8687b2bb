"""The reproduction report: markdown sections, targets, JSON, and the CLI wiring."""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import pytest

from benchmarks.reproductions import report, runner
from benchmarks.reproductions.report import PartResult, Target
from tfyarn.cli.main import build_parser


def _part(n: int, **kw: object) -> PartResult:
    defaults: dict[str, object] = {
        "part": n,
        "title": f"title {n}",
        "source": "someone, 2016",
        "published": [{"setting": "3 partitions", "seconds": 1704.81}],
        "columns": ["approach", "accuracy", "wall time (s)"],
        "rows": [
            {"approach": "tfyarn allreduce", "accuracy": 0.9666, "wall time (s)": 41.234},
            {"approach": "original | pipe", "accuracy": None, "wall time (s)": 1234.5},
        ],
        "targets": [Target("time", 41.2, 60.0, higher_is_better=False, unit="s")],
        "notes": "Method: as published.",
        "plots": [f"reproduce_part{n}.png"],
        "command": f"tfyarn bench reproduce --part {n} --out results",
        "seconds": 99.0,
    }
    defaults.update(kw)
    return PartResult(**defaults)  # type: ignore[arg-type]


def test_target_met_in_both_directions_and_never_for_nan() -> None:
    assert Target("t", 41.0, 60.0, higher_is_better=False).met
    assert not Target("t", 61.0, 60.0, higher_is_better=False).met
    assert Target("acc", 0.95, 0.95).met
    assert not Target("acc", 0.94, 0.95).met
    assert not Target("acc", math.nan, 0.95).met


def test_format_cell() -> None:
    assert report.format_cell(None) == "-"
    assert report.format_cell(0.96666) == "0.967"
    assert report.format_cell(1704.81) == "1704.8"
    assert report.format_cell(math.nan) == "n/a"
    assert report.format_cell(True) == "yes"
    assert report.format_cell("a|b") == "a\\|b"


def test_markdown_has_every_part_in_order_with_tables_targets_plots_and_command() -> None:
    env = {"machine": "2 cores, 24 GiB", "pyspark": "4.3.0"}
    text = report.render_markdown([_part(3), _part(1, targets=[Target("acc", 0.5, 0.95)])], env)
    assert text.index("## Part 1: title 1") < text.index("## Part 3: title 3")
    assert "- machine: 2 cores, 24 GiB" in text and "- pyspark: 4.3.0" in text
    assert "| approach | accuracy | wall time (s) |" in text
    assert "| tfyarn allreduce | 0.967 | 41.234 |" in text
    assert "| original \\| pipe | - | 1234.5 |" in text
    assert "| setting | seconds |" in text and "| 3 partitions | 1704.8 |" in text
    assert "| time | 41.200 s | <= 60.000 s | yes |" in text
    assert "| acc | 0.500 | >= 0.950 | **no** |" in text
    assert "![part 3](reproduce_part3.png)" in text
    assert "```\ntfyarn bench reproduce --part 1 --out results\n```" in text


def test_write_report_writes_markdown_and_json(tmp_path: Path) -> None:
    paths = report.write_report(tmp_path / "out", [_part(2)], {"machine": "m"})
    assert paths["markdown"].read_text().startswith("# tfyarn: published Spark")
    payload = json.loads(paths["json"].read_text())
    assert payload["environment"] == {"machine": "m"}
    (part,) = payload["parts"]
    assert part["part"] == 2 and part["rows"][0]["accuracy"] == pytest.approx(0.9666)
    assert part["targets"][0]["met"] is True


def test_cli_has_reproduce_with_part_and_out() -> None:
    args = build_parser().parse_args(["bench", "reproduce", "--part", "2", "--out", "x"])
    assert (args.benchmark, args.part, args.out) == ("reproduce", "2", "x")
    with pytest.raises(SystemExit):
        build_parser().parse_args(["bench", "reproduce", "--part", "4"])


def test_rerun_command_and_part_selection() -> None:
    assert runner.command_line("2", "my out", ["--mlp-iterations", "3"]) == (
        "tfyarn bench reproduce --part 2 --out 'my out' --mlp-iterations 3"
    )
    ns = argparse.Namespace(part="all", out="o", mlp_iterations=None, mlp_rows=None)
    assert [n for n, _ in runner._parts(ns)] == [1, 2, 3]
    ns.part = "3"
    assert [n for n, _ in runner._parts(ns)] == [3]


def test_a_part_rerun_alone_replaces_only_its_own_section(tmp_path: Path) -> None:
    report.write_report(tmp_path, [_part(1), _part(2, title="old two")], {"machine": "m"})
    earlier = report.read_parts(tmp_path)
    assert [p.part for p in earlier] == [1, 2]
    assert earlier[0].targets[0].met and earlier[0].rows == _part(1).rows
    merged = report.merge_parts(earlier, [_part(2, title="new two"), _part(3)])
    assert [(p.part, p.title) for p in merged] == [(1, "title 1"), (2, "new two"), (3, "title 3")]
    (tmp_path / "reproduce.json").write_text("not json")
    assert report.read_parts(tmp_path) == []
    assert report.read_parts(tmp_path / "absent") == []
