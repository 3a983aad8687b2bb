"""The live progress display names the attempt it shows (issue 12, issue 18 point 4)."""

from __future__ import annotations

import io

import pytest
from rich.console import Console

from tfyarn.cluster.progress import AttemptNumber, RoleState, progress_line, roles_table


def _states() -> list[RoleState]:
    running = RoleState("worker:0", state="running", host="10.0.0.5", step=40, loss=0.312)
    running.last_seen = 100.0
    starting = RoleState("worker:1", host="10.0.0.6")
    starting.last_seen = 98.0
    return [running, starting]


def _rendered(table: object) -> str:
    console = Console(file=io.StringIO(), width=100, color_system=None)
    console.print(table)
    return console.file.getvalue()  # type: ignore[attr-defined]


def test_the_progress_line_names_the_attempt_of_a_run_that_restarts() -> None:
    assert progress_line(_states(), AttemptNumber(2, 3)) == (
        "tfyarn progress (attempt 2 of 3): worker:0:running step=40 loss=0.3120  worker:1:starting"
    )


def test_a_run_without_restarts_shows_no_attempt() -> None:
    assert progress_line(_states(), AttemptNumber()) == (
        "tfyarn progress: worker:0:running step=40 loss=0.3120  worker:1:starting"
    )
    title = _rendered(roles_table(_states(), AttemptNumber(), now=100.0)).splitlines()[0]
    assert title.strip() == "tfyarn roles"


def test_the_live_table_title_names_the_attempt() -> None:
    text = _rendered(roles_table(_states(), AttemptNumber(1, 4), now=100.0))
    lines = [line.strip() for line in text.splitlines()]
    assert lines[0] == "tfyarn roles, attempt 1 of 4"
    row = next(line for line in lines if "worker:0" in line).split()
    assert [cell for cell in row if cell != "│"] == [
        *("worker:0", "10.0.0.5", "running", "40", "-", "0.3120", "0s", "ago")
    ]
    assert any("worker:1" in line and "2s ago" in line for line in lines)


@pytest.mark.parametrize(("number", "of"), [(0, 3), (4, 3), (1, 0)])
def test_an_attempt_outside_the_run_is_refused(number: int, of: int) -> None:
    with pytest.raises(ValueError, match=f"attempt {number} of {of} is not an attempt"):
        AttemptNumber(number, of)
