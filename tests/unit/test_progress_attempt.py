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
        *("worker:0", "10.0.0.5", "running", "40", "-", "0.3120", "-", "0s", "ago")
    ]
    assert any("worker:1" in line and "2s ago" in line for line in lines)


def _busy_role() -> RoleState:
    """worker:0: two heartbeats 2 s apart (real updates), 0.5 s more in the exchange."""
    state = RoleState("worker:0", host="10.0.0.5")
    state.update({"kind": "ready", "host": "10.0.0.5"})
    state.update({"kind": "metrics", "step": 10, "samples": 100})
    state.update({"kind": "beat", "exchange": {"seconds": 1.0, "operations": 5}})
    # The heartbeats' times are the driver's clock when each arrived: move them apart.
    assert state._rate_mark is not None and state._exchange_mark is not None
    state._rate_mark = (state._rate_mark[0] - 2.0, state._rate_mark[1])
    state._exchange_mark = (state._exchange_mark[0] - 2.0, state._exchange_mark[1])
    state.update({"kind": "metrics", "step": 30, "samples": 400})
    state.update({"kind": "beat", "exchange": {"seconds": 1.5, "operations": 9}})
    return state


def test_the_line_and_the_table_show_samples_per_second_and_the_exchange_share() -> None:
    state = _busy_role()
    assert state.samples_per_s == pytest.approx(200, rel=0.01)
    assert state.exchange_share == pytest.approx(0.25, abs=0.01)
    assert state.exchange is not None and state.exchange.operations == 9
    line = progress_line([state], AttemptNumber(), now=state.last_seen)
    assert line == "tfyarn progress: worker:0:running step=30 samples/s=200 exchange=25%"
    text = _rendered(roles_table([state], AttemptNumber(), now=state.last_seen))
    row = next(line for line in text.splitlines() if "worker:0" in line).split()
    assert [cell for cell in row if cell != "│"][2:7] == ["running", "30", "200", "-", "25%"]


def test_a_role_whose_step_stopped_moving_is_named_stalled() -> None:
    state = _busy_role()
    assert state.step_at is not None
    later = state.step_at + 75.0
    assert "worker:0:stalled 75s step=30" in progress_line(
        [state], AttemptNumber(), now=later, stalled_after=60.0
    )
    assert "worker:0:running" in progress_line(
        [state], AttemptNumber(), now=later, stalled_after=120.0
    )


@pytest.mark.parametrize(("number", "of"), [(0, 3), (4, 3), (1, 0)])
def test_an_attempt_outside_the_run_is_refused(number: int, of: int) -> None:
    with pytest.raises(ValueError, match=f"attempt {number} of {of} is not an attempt"):
        AttemptNumber(number, of)
