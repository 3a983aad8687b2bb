"""Role errors as a user meets them (issue 19, points 1-4), without Spark.

- one exception per kind of failure (:func:`exit_failure`, :func:`lost_role`): a signal
  from outside is a ``RoleLostError``, the role's own failure a ``RoleFailedError``;
- Spark's text (JVM stack, SQLSTATE) stays out of the message: :func:`parse_stage_failure`
  on texts captured from Spark 4 (``spark_failures/``: a barrier task that raised, one
  whose Python worker was SIGKILLed, one whose executor JVM was SIGKILLed);
- ``train_fn``'s tracebacks name the user's file, line and source (:mod:`code_pickle`);
- a job that times out names what it waited for (:func:`timeout_message`).
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time
import traceback
from pathlib import Path

import cloudpickle
import pytest

from tfyarn.cluster.progress import ProgressServer, RoleState, timeout_message
from tfyarn.cluster.spark_errors import lost_role, parse_stage_failure, strip_jvm
from tfyarn.errors import RoleFailedError, RoleLostError
from tfyarn.node import code_pickle
from tfyarn.node.failure import EXIT_ORPHANED, RoleFailure, exit_failure, likeliest_cause
from tfyarn.node.heartbeat import HeartbeatClient
from tfyarn.transport.auth import new_job_secret

CAPTURED = Path(__file__).parent / "spark_failures"


def _captured(name: str) -> str:
    return (CAPTURED / f"{name}.txt").read_text()


# --- point 1: one exception per kind of failure ---------------------------------------


def test_a_role_killed_by_sigkill_is_lost_with_its_signal_and_last_output() -> None:
    failure = exit_failure("worker:1", "10.0.0.7", -9, "", "epoch 3/10\n", starting=False)
    error = failure.error()
    assert type(error) is RoleLostError and error.restartable
    assert (error.role, error.host, error.signal, error.exit_status) == (
        "worker:1",
        "10.0.0.7",
        9,
        None,
    )
    assert str(error) == (
        "role worker:1 on host 10.0.0.7 was killed by signal 9 (SIGKILL): something outside "
        "it stopped it (the kernel's out-of-memory killer, a container kill or YARN "
        "preemption, an operator); a restart can help (max_restarts=)\n"
        "--- remote traceback (worker:1 @ 10.0.0.7) ---\n"
        "epoch 3/10"
    )
    term = exit_failure("ps:0", "h", -15, "", "", starting=True).error()
    assert type(term) is RoleLostError and term.signal == 15
    assert str(term).startswith(
        "role ps:0 on host h was killed by signal 15 (SIGTERM) while starting:"
    )
    assert term.remote_traceback == "(no output)"


def test_a_role_whose_executor_vanished_is_lost() -> None:
    error = exit_failure("worker:1", "h", EXIT_ORPHANED, "", "", starting=False).error()
    assert type(error) is RoleLostError and error.restartable
    assert error.exit_status == EXIT_ORPHANED and error.signal is None
    assert str(error).startswith("role worker:1 on host h ended because its executor is gone")
    # The same status with a traceback is the role's own code (os._exit(3) after an error).
    tb = "Traceback (most recent call last):\nSystemExit: 3\n"
    own = exit_failure("worker:1", "h", EXIT_ORPHANED, tb, "", starting=False).error()
    assert type(own) is RoleFailedError and not own.restartable


def test_a_crash_in_native_code_is_the_roles_own_failure() -> None:
    error = exit_failure("worker:0", "h", -11, "", "F tensorflow/x.cc\n", starting=False).error()
    assert type(error) is RoleFailedError and not error.restartable
    assert error.signal == 11 and error.exit_status is None
    assert str(error).startswith("role worker:0 on host h crashed with signal 11 (SIGSEGV): ")


def test_a_role_that_raised_or_exited_is_a_role_failed_error_with_its_traceback() -> None:
    tb = 'Traceback (most recent call last):\n  File "t.py", line 3, in f\nValueError: bad\n'
    raised = exit_failure("worker:1", "h", 1, tb, "unrelated log line\n", starting=False)
    error = raised.error()
    assert type(error) is RoleFailedError
    assert str(error).splitlines()[0] == "role worker:1 on host h failed: ValueError: bad"
    assert error.remote_traceback == tb.strip() and error.exit_status == 1
    start = exit_failure("chief:0", "h", 1, tb, "", starting=True).error()
    assert str(start).splitlines()[0] == "role chief:0 on host h failed to start: ValueError: bad"
    exited = exit_failure("worker:1", "h", 17, "", "last words\n", starting=False).error()
    assert type(exited) is RoleFailedError and exited.exit_status == 17
    assert str(exited).splitlines()[0] == (
        "role worker:1 on host h exited with status 17 without a Python traceback; "
        "its last output is below"
    )
    assert exited.remote_traceback == "last words"


def test_failure_records_round_trip_and_refuse_nonsense() -> None:
    failure = RoleFailure("worker:1", "h", "m", "tb", signal=9, lost=True)
    assert RoleFailure.from_json(failure.to_json()) == failure
    with pytest.raises(ValueError, match="either exits with a status or is killed by a signal"):
        RoleFailure("worker:1", "h", "m", "tb", exit_status=1, signal=9)
    with pytest.raises(ValueError, match="role must name the failed role"):
        RoleFailure("", "h", "m", "tb")
    with pytest.raises(ValueError, match="signal is 'nine', not an int"):
        RoleFailure.from_json({**failure.to_json(), "signal": "nine"})
    with pytest.raises(ValueError, match="bad role failure record: host is None, not a string"):
        RoleFailure.from_json({"role": "worker:1"})


def test_the_loss_is_the_cause_not_the_peers_that_lost_their_connection_to_it() -> None:
    peer = RoleFailure("worker:0", "h", "m0", "TransportError", peer_lost=True)
    own = RoleFailure("worker:2", "h", "m2", "ValueError")
    lost = RoleFailure("worker:1", "h", "m1", "", signal=9, lost=True)
    assert likeliest_cause([peer, own, lost]) is lost
    assert likeliest_cause([peer, own]) is own
    assert likeliest_cause([peer]) is peer
    assert likeliest_cause([]) is None
    first = RoleFailure("worker:3", "h", "m3", "ValueError")
    assert likeliest_cause([own, first]) is own  # the earliest among equals


def _wait(predicate, timeout: float = 10.0) -> bool:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return bool(predicate())


def test_the_driver_keeps_each_roles_first_report_and_names_the_lost_role() -> None:
    secret = new_job_secret()
    server = ProgressServer("127.0.0.1", secret, ["worker:0", "worker:1"])
    try:
        w0 = HeartbeatClient(server.address, secret, "worker:0", interval=10)
        w0.send("ready", host="127.0.0.1")
        w0.send("error", error="TransportError: peer closed", traceback="tb0", peer_lost=True)
        assert _wait(lambda: server.failed_role() is not None)
        # the role's own report stays, its task's later record of the exit is ignored
        task0 = HeartbeatClient(server.address, secret, "worker:0", interval=10)
        later = RoleFailure("worker:0", "127.0.0.1", "exited", "tb", exit_status=1)
        task0.send("error", error="exited", traceback="tb", failure=later.to_json())
        # the task of worker:1, whose role process was SIGKILLed, reports the loss
        lost = exit_failure("worker:1", "127.0.0.1", -9, "", "out", starting=False)
        task1 = HeartbeatClient(server.address, secret, "worker:1", interval=10)
        task1.send("error", error=lost.message, traceback="out", failure=lost.to_json())
        assert _wait(lambda: (server.failed_role() or RoleState("?")).task_id == "worker:1")
        cause = server.failed_role()
        assert cause is not None and cause.failure == lost
        first = next(s for s in server.snapshot() if s.task_id == "worker:0")
        assert first.failure is not None and first.failure.peer_lost
        assert first.failure.message == (
            "role worker:0 on host 127.0.0.1 failed: TransportError: peer closed"
        )
        for client in (w0, task0, task1):
            client.close()
    finally:
        server.close()


# --- point 2: no JVM noise ---------------------------------------------------------------


def test_a_python_exception_in_a_barrier_task_is_read_without_the_jvm() -> None:
    stage = parse_stage_failure(_captured("python_exception"))
    assert stage.partition == 1 and stage.kind == "python" and stage.record is None
    assert stage.reason == (
        "Traceback (most recent call last):\n"
        '  File "/tmp/errs/exp.py", line 21, in body\n'
        '    raise MyErr("boom line1\\nline2 TFYARN-MARK {\\"a\\": 1}")\n'
        "MyErr: boom line1\n"
        'line2 TFYARN-MARK {"a": 1}'
    )
    assert stage.summary == "MyErr: boom line1"


def test_the_record_a_task_leaves_in_its_exception_comes_back_from_sparks_text() -> None:
    failure = exit_failure("worker:1", "10.0.0.7", -9, "", "epoch 3\n", starting=False)
    error = failure.carrier()
    formatted = "".join(traceback.format_exception(error))  # as PySpark's worker sends it
    captured = _captured("python_exception")
    python_part = captured[captured.index("Traceback") : captured.index(" SQLSTATE: 38000")]
    text = captured.replace(python_part, formatted.rstrip("\n"))
    stage = parse_stage_failure(text)
    assert stage.record == failure
    assert str(error) == str(failure.error())  # the note is not part of the message


def test_a_lost_executor_is_the_loss_of_the_role_it_ran() -> None:
    stage = parse_stage_failure(_captured("executor_lost"))
    assert (stage.partition, stage.kind) == (1, "executor_lost")
    failure = lost_role(stage, "worker:1", "127.0.0.1")
    assert failure is not None
    error = failure.error(spark_error=_captured("executor_lost"))
    assert type(error) is RoleLostError
    assert str(error) == (
        "role worker:1 on host 127.0.0.1 was lost with its Spark executor (ExecutorLostFailure "
        "(executor 0 exited caused by one of the running tasks) Reason: Command exited with "
        "code 137); a restart can help (max_restarts=)\n"
        "--- remote traceback (worker:1 @ 127.0.0.1) ---\n"
        "(no traceback: the role's executor was lost; see the executor's log on host 127.0.0.1)"
    )
    assert "\tat org.apache.spark" in error.spark_error  # Spark's text, kept apart


def test_a_crashed_python_worker_is_the_loss_of_its_role() -> None:
    stage = parse_stage_failure(_captured("python_worker_crashed"))
    assert (stage.partition, stage.kind) == (1, "worker_crashed")
    failure = lost_role(stage, "worker:1", "h")
    assert failure is not None and failure.lost
    assert failure.message.startswith(
        "role worker:1 on host h was lost: the Spark Python worker running its task died"
    )
    killed = parse_stage_failure(
        "Job aborted due to stage failure: Stage failed because barrier task ResultTask(3, 2) "
        "finished unsuccessfully.\nTaskKilled (Stage cancelled: job group cancelled)"
    )
    assert killed.kind == "killed" and lost_role(killed, "worker:2", "h") is None


@pytest.mark.parametrize("name", ["python_exception", "python_worker_crashed", "executor_lost"])
def test_no_jvm_frames_or_sqlstate_survive(name: str) -> None:
    reason = parse_stage_failure(_captured(name)).reason
    assert "\tat " not in reason and "SQLSTATE" not in reason and "Caused by" not in reason
    assert "SQLSTATE" not in strip_jvm(_captured(name))


# --- point 3: user frames named ----------------------------------------------------------

USER_CODE = """\
def helper(x):
    raise ValueError(f"bad {x}")


def make():
    def train_fn(ctx):
        return helper(ctx)

    return train_fn
"""

LOAD_AND_CALL = textwrap.dedent(
    """
    import pickle, sys, traceback
    fn = pickle.loads(sys.stdin.buffer.read())
    try:
        fn(3)
    except ValueError:
        traceback.print_exc()
    """
)


def _traceback_elsewhere(tmp_path: Path, dumps) -> str:  # type: ignore[no-untyped-def]
    """The traceback of the user's function pickled by ``dumps``, called in a fresh
    interpreter after its source file is gone (as on a host that never had it)."""
    source = tmp_path / "user_train.py"
    source.write_text(USER_CODE)
    namespace: dict[str, object] = {"__name__": "__main__"}
    exec(compile(USER_CODE, str(source), "exec"), namespace)  # a script's __main__
    payload = dumps(namespace["make"]())  # type: ignore[operator]
    source.unlink()
    run = subprocess.run(
        [sys.executable, "-c", LOAD_AND_CALL], input=payload, capture_output=True, timeout=60
    )
    assert run.returncode == 0, run.stderr.decode()
    return run.stderr.decode()


def test_tracebacks_of_train_fn_name_the_users_file_line_and_source(tmp_path: Path) -> None:
    plain = _traceback_elsewhere(tmp_path, cloudpickle.dumps)
    assert 'File "<dynamic-code>", line 7, in train_fn' in plain  # what cloudpickle does
    shown = _traceback_elsewhere(tmp_path, code_pickle.dumps)
    path = tmp_path / "user_train.py"
    assert "<dynamic-code>" not in shown
    assert shown.endswith(
        f'  File "{path}", line 7, in train_fn\n'
        "    return helper(ctx)\n"
        "           ^^^^^^^^^^^\n"
        f'  File "{path}", line 2, in helper\n'
        '    raise ValueError(f"bad {x}")\n'
        "ValueError: bad 3\n"
    )


# --- point 4: what a timed-out job was waiting for ---------------------------------------


def test_a_timeout_names_the_role_without_progress_and_the_ones_done() -> None:
    now = 1000.0
    stuck = RoleState("worker:1", state="running", host="h", step=3, last_seen=now - 1)
    stuck.ready_at, stuck.step_at = now - 40, now - 25
    done = RoleState("worker:0", state="done", host="h", step=9, last_seen=now - 5)
    assert timeout_message(60, [done, stuck], heartbeat_interval=2, now=now) == (
        "the job did not finish within timeout=60 s and was cancelled: worker:1 has been "
        "running with no step progress for 25 s; worker:0 is done. Raise timeout= if "
        "training legitimately takes longer; a role with no step progress is blocked (on a "
        "peer, on data) or does not report its steps (ctx.report(step=...))"
    )


def test_a_timeout_names_silent_starting_and_serving_roles() -> None:
    now = 1000.0
    never_stepped = RoleState("chief:0", state="running", last_seen=now - 1)
    never_stepped.ready_at = now - 30
    silent = RoleState("worker:0", state="running", step=5, last_seen=now - 45)
    starting = RoleState("worker:1", last_seen=now - 2)
    serving = RoleState("ps:0", state="serving", last_seen=now - 1)
    text = timeout_message(
        100, [never_stepped, silent, starting, serving], heartbeat_interval=2, now=now
    )
    assert text.startswith(
        "the job did not finish within timeout=100 s and was cancelled: chief:0 has been "
        "running with no step progress for 30 s; worker:0 has sent no heartbeat for 45 s; "
        "worker:1 is still starting; ps:0 is serving. "
    )


def test_step_progress_is_timed_from_the_last_step_change() -> None:
    state = RoleState("worker:0")
    state.update({"kind": "ready", "host": "h"})
    state.update({"kind": "metrics", "step": 1})
    first = state.step_at
    assert first is not None
    state.update({"kind": "metrics", "step": 1, "loss": 0.5})  # same step: no progress
    assert state.step_at == first
    time.sleep(0.01)
    state.update({"kind": "metrics", "step": 2})
    assert state.step_at is not None and state.step_at > first
