"""The restart loop's decisions without Spark: restart or raise, the exhausted message,
silent and stuck roles, steps redone, and the restart settings of tfyarn.run."""

from __future__ import annotations

import os
from typing import Any

import pytest

from tfyarn.cluster.attempts import Attempt
from tfyarn.cluster.options import LaunchOptions, launch_options
from tfyarn.cluster.plan import RoleSpec
from tfyarn.cluster.progress import RoleState
from tfyarn.cluster.restarts import (
    AttemptProgress,
    LivenessWatch,
    RestartPolicy,
    RoleSilentError,
    RoleStuckError,
    exhausted_message,
    failure_kind,
    least_executors,
    pick_cause,
    run_attempts,
    should_restart,
    steps_redone,
)
from tfyarn.errors import ConfigError, RestartsExhaustedError, RoleFailedError, RoleLostError
from tfyarn.node.failure import EXIT_ORPHANED
from tfyarn.node.job import JobSpec


def _lost(role: str = "worker:1") -> RoleLostError:
    return RoleLostError(role, "10.0.0.7", "", f"role {role} on host 10.0.0.7 killed by signal 9")


def _error(role: str = "worker:0") -> RoleFailedError:
    return RoleFailedError(role, "10.0.0.8", "Traceback...\nValueError: bad", "ValueError: bad")


def _attempt(number: int) -> Attempt:
    return Attempt(number, 100.0, 130.0, "role worker:1 killed", "lost", "worker:1", "h")


def test_only_losses_restart_and_only_while_restarts_are_left() -> None:
    policy = RestartPolicy(max_restarts=2)
    assert should_restart(_lost(), [_attempt(1)], policy)
    assert should_restart(_lost(), [_attempt(1), _attempt(2)], policy)
    assert not should_restart(_lost(), [_attempt(1), _attempt(2), _attempt(3)], policy)
    assert not should_restart(_error(), [_attempt(1)], policy)
    assert should_restart(_error(), [_attempt(1)], RestartPolicy(2, retry_on_errors=True))
    assert not should_restart(KeyboardInterrupt(), [_attempt(1)], policy)
    assert not should_restart(_lost(), [_attempt(1)], RestartPolicy(0))
    with pytest.raises(ConfigError, match="max_restarts must be 0 or more, got -1"):
        RestartPolicy(-1)


def test_failure_kinds() -> None:
    assert failure_kind(_lost()) == "lost"
    assert failure_kind(_error()) == "error"
    assert failure_kind(RoleSilentError("ps:0", "h", "")) == "silent"
    assert failure_kind(RoleStuckError("ps:0", "h", "")) == "stuck"


def test_a_loss_is_the_cause_of_the_errors_it_brings_about() -> None:
    peer, lost = _error("worker:0"), _lost("worker:1")
    assert pick_cause(peer, [lost]) is lost
    assert pick_cause(peer, [RuntimeError("spark")]) is peer
    assert pick_cause(lost, [peer]) is lost


def test_sparks_report_of_a_lost_executor_wins_over_the_orphaned_roles() -> None:
    orphaned = RoleLostError("worker:1", "h", "", "role worker:1 ... executor is gone")
    orphaned.exit_status = EXIT_ORPHANED
    spark = RoleLostError("worker:1", "h", "", "role worker:1 ... (ExecutorLostFailure ...)")
    spark.spark_error = "ExecutorLostFailure (executor 1 exited ...)"
    assert pick_cause(orphaned, [_error(), spark]) is spark
    assert pick_cause(_lost("worker:0"), [spark]).role == "worker:0"  # the first loss
    other = RoleLostError("worker:0", "h", "", "x")
    other.spark_error = "ExecutorLostFailure"
    assert pick_cause(orphaned, [other]) is orphaned  # another role's: not the same loss


def _runner(outcomes: list[BaseException | str]) -> Any:
    calls: list[int] = []

    def launch(number: int, progress: AttemptProgress) -> str:
        calls.append(number)
        progress.reached = 10 * number + 7  # how far this attempt trained
        progress.executors["worker:1"] = f"10.0.0.7:{4000 + number}"
        outcome = outcomes[number - 1]
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome

    return launch, calls


def test_lost_attempts_restart_resume_and_are_all_listed() -> None:
    launch, calls = _runner([_lost(), _lost(), "done"])
    said: list[str] = []
    resume = {1: None, 2: 15, 3: 20}
    result, attempts = run_attempts(
        launch, RestartPolicy(3), resume_step=resume.__getitem__, say=said.append
    )
    assert result == "done" and calls == [1, 2, 3]
    assert [a.kind for a in attempts] == ["lost", "lost", None]
    assert [a.resumed_from_step for a in attempts] == [None, 15, 20]
    # attempt 1 reached 17, attempt 2 resumed at 15: 2 redone; attempt 2 reached 27 -> 7
    assert [a.steps_redone for a in attempts] == [None, 2, 7]
    assert attempts[0].executor == "10.0.0.7:4001" and attempts[0].role == "worker:1"
    assert attempts[-1].succeeded and not attempts[0].succeeded
    assert said[1] == "tfyarn: attempt 2 of 4 starts, from the checkpoint at step 15"


def test_exhausted_restarts_list_every_cause() -> None:
    launch, _ = _runner([_lost("worker:1"), _lost("chief:0")])
    with pytest.raises(RestartsExhaustedError) as caught:
        run_attempts(launch, RestartPolicy(1), resume_step=lambda n: None, say=lambda s: None)
    error = caught.value
    assert [a.role for a in error.attempts] == ["worker:1", "chief:0"]  # type: ignore[attr-defined]
    assert error.last.role == "chief:0"
    text = str(error)
    assert text.startswith("the job failed in all 2 attempts (max_restarts=1); what ended each:")
    assert (
        "- attempt 1 (" in text and "lost - worker:1 on 10.0.0.7 (executor 10.0.0.7:4001)" in text
    )
    assert "- attempt 2 (" in text and "role chief:0 on host 10.0.0.7 killed by signal 9" in text
    assert text == exhausted_message(error.attempts, RestartPolicy(1))  # type: ignore[arg-type]


def test_a_user_error_fails_at_once_and_without_restarts_the_error_is_the_roles() -> None:
    launch, calls = _runner([_error(), "never"])
    with pytest.raises(RoleFailedError, match="ValueError: bad") as caught:
        run_attempts(launch, RestartPolicy(3), resume_step=lambda n: None, say=lambda s: None)
    assert type(caught.value) is RoleFailedError and calls == [1]
    launch, calls = _runner([_lost(), "never"])
    with pytest.raises(RoleLostError):
        run_attempts(launch, RestartPolicy(0), resume_step=lambda n: None, say=lambda s: None)
    assert calls == [1]


def _state(task: str, state: str = "running", step: int | None = None, seen: float = 0.0) -> Any:
    s = RoleState(task, state=state, host="10.0.0.9", step=step)
    s.last_seen = seen
    return s


def test_silent_roles_are_lost_and_stalled_trainers_stuck() -> None:
    watch = LivenessWatch(silent_after=10.0, stall_after=30.0)
    assert watch.check([_state("worker:0", seen=95.0)], now=100.0) is None
    assert watch.check([_state("worker:0", state="starting", seen=0.0)], now=100.0) is None
    assert watch.check([_state("worker:0", state="done", seen=0.0)], now=100.0) is None
    silent = watch.check([_state("worker:1", seen=80.0)], now=100.0)
    assert silent is not None and (silent.task_id, silent.kind) == ("worker:1", "silent")
    error = silent.error()
    assert isinstance(error, RoleSilentError) and error.restartable
    assert str(error).startswith(
        "role worker:1 on host 10.0.0.9 sent no heartbeat for 20 s (silent_fail_after=10 s)"
    )
    # heartbeats keep coming, the step does not move
    assert watch.check([_state("worker:0", step=5, seen=100.0)], now=100.0) is None
    assert watch.check([_state("worker:0", step=5, seen=129.0)], now=129.0) is None
    stuck = watch.check([_state("worker:0", step=5, seen=131.0)], now=131.0)
    assert stuck is not None and stuck.kind == "stuck"
    assert isinstance(stuck.error(), RoleStuckError)
    assert watch.check([_state("worker:0", step=6, seen=140.0)], now=140.0) is None
    assert LivenessWatch(None, None).check([_state("w", step=1, seen=0.0)], now=1e6) is None


def test_progress_follows_global_steps_and_resume_reports() -> None:
    progress = AttemptProgress(resumed_from=40)
    trainer = _state("worker:0", step=12)
    trainer.metrics = {"executor": "h:1"}
    ps = _state("ps:0", step=999)
    progress.observe([trainer, ps], ["worker:0"])
    assert (progress.reached, progress.executors) == (52, {"worker:0": "h:1"})
    trainer.metrics = {"global_step": 60, "resumed_from_step": 45}
    progress.observe([trainer], ["worker:0"])
    assert (progress.reached, progress.resumed_from) == (60, 45)
    assert steps_redone(None, progress) is None
    assert steps_redone(AttemptProgress(reached=58), progress) == 13
    assert steps_redone(AttemptProgress(reached=30), progress) == 0


def test_attempt_records_are_checked() -> None:
    with pytest.raises(ValueError, match="a failed attempt needs a cause and kind"):
        Attempt(1, 0.0, 1.0, kind="lost")
    with pytest.raises(ValueError, match=r"ended .* before it started"):
        Attempt(1, 2.0, 1.0)
    with pytest.raises(ValueError, match="kind must be one of lost, error, silent, stuck"):
        Attempt(1, 0.0, 1.0, "x", "bogus")  # type: ignore[arg-type]
    ok = Attempt(2, 0.0, 31.0, steps_redone=3, resumed_from_step=40)
    assert ok.describe().endswith("31 s), resumed from step 40, 3 steps redone: succeeded")


def _options(conf: dict[str, str] | None = None, **given: Any) -> LaunchOptions:
    args: dict[str, Any] = {
        "workers": 2, "ps": None, "data": None, "input_mode": None, "strategy": None,
        "transport": None, "interface": None, "service": None,
    }  # fmt: skip
    args.update(given)
    return launch_options((conf or {}).get, **args)


def test_restart_settings_and_checkpoint_defaults() -> None:
    assert _options().max_restarts == 0 and _options().checkpoint_policy("/m") is None
    options = _options({"maxRestarts": "3"})
    policy = options.checkpoint_policy("/models/run")
    assert options.max_restarts == 3 and policy is not None
    assert (policy.directory, policy.every_steps, policy.every_seconds) == (
        os.path.join("/models/run", "checkpoints"),
        None,
        60.0,
    )
    conf = {"maxRestarts": "3", "checkpoint.dir": "/shared/ck", "checkpoint.every": "25"}
    policy = _options(conf).checkpoint_policy("/m")
    assert policy is not None and (policy.directory, policy.every_steps) == ("/shared/ck", 25)
    policy = _options(conf, max_restarts=1, checkpoint_every="5m").checkpoint_policy("/m")
    assert policy is not None and policy.every_seconds == 300.0
    assert _options(checkpoint_every=10).checkpoint_policy("/m") is not None  # asked for


def test_bad_restart_settings_are_named() -> None:
    with pytest.raises(ConfigError) as caught:
        _options(max_restarts=-1, checkpoint_every="often", silent_fail_after=3.0)
    text = str(caught.value)
    assert text.startswith("3 problems with tfyarn.run's arguments:")
    assert "- max_restarts must be at least 0, got -1" in text
    assert "checkpoint_every='often' is neither a step count" in text
    assert "silent_fail_after=3.0 s would take a role for lost between two heartbeats" in text
    with pytest.raises(ConfigError, match=r"spark.tfyarn.maxRestarts='lots' is not valid"):
        _options({"maxRestarts": "lots"})


def test_each_attempt_has_its_own_workspace() -> None:
    role = RoleSpec(2, "worker", 1)
    job = JobSpec("j", (role,), (role,), b"", b"s", ("h", 1))
    assert job.workspace_name(role) == "worker-1"
    assert (
        JobSpec("j", (role,), (role,), b"", b"s", ("h", 1), attempt=2).workspace_name(role)
        == "worker-1.a2"
    )
    with pytest.raises(ValueError, match=r"JobSpec\.attempt counts from 1, got 0"):
        JobSpec("j", (role,), (role,), b"", b"s", ("h", 1), attempt=0)


def test_submit_options_and_profile_defaults() -> None:
    import argparse

    from tfyarn.cli.submit import build_plan

    def plan(profile: str, **given: Any) -> dict[str, str]:
        options = argparse.Namespace(
            profile=profile, conf_dir=None, workers=2, ps=0, chief=False, no_chief=True,
            evaluator=False, transport=None, interface=None, service=None, output_json=None,
            max_restarts=None, checkpoint_dir=None, checkpoint_every=None, min_workers=None,
            tls=False,
            tensorboard=False,
            log_dir=None,
            metrics_port=None,
        )  # fmt: skip
        vars(options).update(given)
        env = {"TFYARN_SPARK_MASTER": "spark://m:7077", "HADOOP_CONF_DIR": "/etc/hadoop"}
        return build_plan(options, [], "t.py", [], env).properties

    assert plan("yarn-client")["spark.tfyarn.maxRestarts"] == "3"
    assert plan("yarn-cluster")["spark.tfyarn.maxRestarts"] == "3"
    assert "spark.tfyarn.maxRestarts" not in plan("local-cluster")
    given = plan("local-cluster", max_restarts=2, checkpoint_dir="/s/ck", checkpoint_every="30s")
    assert (
        given["spark.tfyarn.maxRestarts"],
        given["spark.tfyarn.checkpoint.dir"],
        given["spark.tfyarn.checkpoint.every"],
    ) == ("2", "/s/ck", "30s")
    assert plan("yarn-client", max_restarts=0)["spark.tfyarn.maxRestarts"] == "0"
    with pytest.raises(ConfigError, match="--max-restarts must be 0 or more, got -2"):
        plan("local-cluster", max_restarts=-2)
    assert plan("yarn-client", min_workers=1)["spark.tfyarn.minWorkers"] == "1"
    assert "spark.tfyarn.minWorkers" not in plan("yarn-client")
    with pytest.raises(ConfigError, match="--min-workers must be 1 or more, got 0"):
        plan("yarn-client", min_workers=0)


# -- elastic restarts (min_workers) ----------------------------------------------------------


def test_only_a_restart_with_min_workers_may_start_smaller() -> None:
    # 1 chief + 4 workers + 1 ps = 6 roles; min_workers=2 lets a restart go on with 4.
    assert least_executors(1, roles=6, workers=4, min_workers=2) is None  # first attempt
    assert least_executors(2, roles=6, workers=4, min_workers=None) is None
    assert least_executors(2, roles=6, workers=4, min_workers=4) is None
    assert least_executors(2, roles=6, workers=4, min_workers=2) == 4
    assert least_executors(3, roles=2, workers=2, min_workers=1) == 1


def test_min_workers_settings_are_checked_and_taken_from_spark() -> None:
    assert _options({"minWorkers": "1"}, max_restarts=2).min_workers == 1
    assert _options(max_restarts=2, min_workers=2).min_workers == 2
    with pytest.raises(ConfigError, match=r"min_workers=3 is more than workers=2"):
        _options(max_restarts=2, min_workers=3)
    with pytest.raises(ConfigError, match=r"min_workers must be at least 1, got 0"):
        _options(max_restarts=2, min_workers=0)
    with pytest.raises(ConfigError, match=r"min_workers=1 only applies to restarts"):
        _options(min_workers=1)


def test_a_scaled_down_attempt_says_so() -> None:
    small = Attempt(2, 100.0, 160.0, workers=1, wanted_workers=2, resumed_from_step=16)
    full = Attempt(2, 100.0, 160.0, workers=2, wanted_workers=2)
    assert small.scaled_down and not full.scaled_down
    assert "resumed from step 16, with 1 of 2 workers: succeeded" in small.describe()
    with pytest.raises(ValueError, match=r"workers must be a count \(0 or more\) or None"):
        Attempt(1, 100.0, 160.0, workers=-1)


def test_a_broken_connection_to_a_peer_is_told_apart_from_the_roles_own_error() -> None:
    from tfyarn.errors import TransportError
    from tfyarn.node.role_process import lost_a_peer

    broken = TransportError("peer closed the connection (0 of 24 bytes received)")
    assert lost_a_peer(broken)
    try:
        try:
            raise broken
        except TransportError as exc:
            raise RuntimeError("allreduce failed") from exc
    except RuntimeError as chained:
        assert lost_a_peer(chained)

    # What TensorFlow raises for an error inside a tf.py_function: only the text is kept.
    class UnknownError(Exception):
        pass

    UnknownError.__module__ = "tensorflow.python.framework.errors_impl"
    assert lost_a_peer(UnknownError("Graph execution error:\nTransportError: peer closed"))
    assert not lost_a_peer(UnknownError("Graph execution error:\nValueError: bad shape"))
    assert not lost_a_peer(ValueError("TransportError: in a user's own message"))
