"""When the driver gives up on a ps or evaluator that does not stop after training ended.

The grace counts from when the role could act on "finish": told, and its train_fn
started. A ps still importing TensorFlow when the trainers end is not stuck (it failed
the TFoS ps test under load, 30 s after "finish", while it was still starting).
"""

from __future__ import annotations

from tfyarn.cluster.launcher import _not_stopped
from tfyarn.cluster.progress import RoleState

GRACE, STARTUP = 30.0, 300.0


def _role(task: str, state: str, ready_at: float | None) -> RoleState:
    return RoleState(task, state=state, ready_at=ready_at)


def _stuck(roles: list[RoleState], told: dict[str, float], now: float) -> list[str]:
    return _not_stopped(roles, ["ps:0"], told, 10.0, now, GRACE, STARTUP)


def test_a_running_ps_gets_the_grace_from_when_it_was_told() -> None:
    ps = [_role("ps:0", "running", ready_at=5.0)]
    assert _stuck(ps, {"ps:0": 10.0}, now=39.0) == []
    assert _stuck(ps, {"ps:0": 10.0}, now=41.0) == ["ps:0"]


def test_a_ps_that_started_after_training_ended_gets_it_from_its_start() -> None:
    ps = [_role("ps:0", "running", ready_at=50.0)]
    assert _stuck(ps, {"ps:0": 10.0}, now=79.0) == []
    assert _stuck(ps, {"ps:0": 10.0}, now=81.0) == ["ps:0"]


def test_a_ps_still_starting_or_not_yet_told_gets_its_start_up_timeout_on_top() -> None:
    for roles, told in (([_role("ps:0", "starting", None)], {"ps:0": 10.0}),
                        ([_role("ps:0", "running", 20.0)], {})):  # fmt: skip
        assert _stuck(roles, told, now=10.0 + STARTUP + GRACE - 1) == []
        assert _stuck(roles, told, now=10.0 + STARTUP + GRACE + 1) == ["ps:0"]


def test_ended_roles_and_trainers_are_never_stuck() -> None:
    roles = [_role("ps:0", "done", 5.0), _role("worker:0", "running", 5.0)]
    assert _stuck(roles, {"ps:0": 10.0}, now=1000.0) == []
    roles = [_role("ps:0", "failed", 5.0)]
    assert _stuck(roles, {"ps:0": 10.0}, now=1000.0) == []
