"""What a new user meets first: ``--help`` of ``tfyarn submit`` and ``tfyarn bench``."""

from __future__ import annotations

import re

import pytest

from tfyarn.cli import bench, submit
from tfyarn.cli.main import main

#: Sphinx/numpydoc markup that has no place in a terminal.
MARKUP = re.compile(r"``|:(?:data|func|mod|class|meth|attr):`")


@pytest.mark.parametrize(
    "argv",
    [
        ["submit", "--help"],
        ["submit", "-h"],
        ["submit", "--workers", "2", "--help"],
        ["submit", "--help", "train.py"],
    ],
)
def test_submit_help_prints_the_help_and_exits_0(
    argv: list[str], capsys: pytest.CaptureFixture
) -> None:
    with pytest.raises(SystemExit) as done:
        main(argv)
    assert done.value.code == 0
    out, err = capsys.readouterr()
    assert out.startswith("usage: tfyarn submit ")
    assert submit.DESCRIPTION.splitlines()[0] in out
    assert "--no-chief" in out and "--conf KEY=VALUE overrides the profile's value" in out
    assert not MARKUP.search(out) and err == ""


def test_submit_without_script_or_help_still_says_what_is_missing(
    capsys: pytest.CaptureFixture,
) -> None:
    assert main(["submit", "--workers", "2"]) == 1
    assert capsys.readouterr().err == (
        "tfyarn: error: no training script given: tfyarn submit [options] SCRIPT.py [args]\n"
    )


@pytest.mark.parametrize("argv", [["bench", "--help"], ["bench", "transport", "--help"]])
def test_bench_help_is_user_text_without_sphinx_markup(
    argv: list[str], capsys: pytest.CaptureFixture
) -> None:
    with pytest.raises(SystemExit) as done:
        main(argv)
    assert done.value.code == 0
    out = capsys.readouterr().out
    assert not MARKUP.search(out), out
    assert "BENCHMARKS" not in out and "register_benchmark" not in out


def test_bench_help_lists_each_benchmark_by_its_plain_summary(
    capsys: pytest.CaptureFixture,
) -> None:
    with pytest.raises(SystemExit):
        main(["bench", "--help"])
    out = " ".join(capsys.readouterr().out.split())  # argparse wraps the help column
    assert "Measure tfyarn's transports and distributed training against baselines" in out
    assert "Throughput and latency of every transport, with baselines." in out
    assert "Ring all-reduce vs Open MPI, and training throughput scaling." in out


def test_summary_strips_the_title_and_sphinx_roles() -> None:
    doc = "``tfyarn bench x``: compare :mod:`.foo` with ``bar`` and :func:`~a.b`.\n\nMore."
    assert bench.summary(doc, "x") == "Compare foo with bar and a.b."
    assert bench.summary(None, "x") == "x"
