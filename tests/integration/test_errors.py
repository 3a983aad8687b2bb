"""Errors as a new user meets them (issue 19, points 1-4), on a real local Spark cluster.

One job per kind of failure, each short (no TensorFlow is imported):

1. every role failure is a ``RoleFailedError``: the role's own exception and a role that
   fails at start-up are ``RoleFailedError`` (no restart helps); a role SIGKILLed and a
   role whose executor JVM dies are ``RoleLostError`` (restartable), with the signal;
2. no JVM stack or SQLSTATE in ``str(error)``;
3. the traceback names the test file and the line that raised, not ``<dynamic-code>``;
4. a job that times out says which role made no progress and which one was done.

The executor-loss job runs last: the cluster replaces the executor it kills, and the
test waits for that before it ends.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import cloudpickle
import pytest

import tfyarn
from tfyarn.cluster import validate

pytestmark = pytest.mark.integration

# This module is imported from a path the executors do not have: ship its functions.
cloudpickle.register_pickle_by_value(sys.modules[__name__])

#: Lines that say Spark's part of a failure leaked into our message.
JVM_NOISE = ("SQLSTATE", "\tat ", "org.apache.spark", "py4j", "Py4JJavaError")


def _assert_clean(error: BaseException) -> None:
    text = str(error)
    for noise in JVM_NOISE:
        assert noise not in text, f"{noise!r} in the error's message:\n{text}"


def _waiting_worker(ctx: tfyarn.NodeContext) -> None:
    time.sleep(600)  # the job is cancelled long before


def _stamp(path: str) -> None:
    Path(path).write_text(repr(time.time()))


def _raising(task: str) -> Any:
    def user_helper(name: str) -> None:
        raise ValueError(f"deliberate failure in {name}")

    def train(ctx: tfyarn.NodeContext) -> None:
        if ctx.task_id == task:
            user_helper(ctx.task_id)
        _waiting_worker(ctx)

    return train, user_helper.__code__.co_firstlineno + 1


def test_a_failure_at_start_up_is_a_role_failed_error_at_once(spark: Any) -> None:
    started = time.monotonic()
    with pytest.raises(tfyarn.RoleFailedError) as info:
        tfyarn.run(
            spark, _waiting_worker, workers=2, chief=False, interface="nope0", progress=False
        )
    error = info.value
    assert type(error) is tfyarn.RoleFailedError and not error.restartable
    assert error.role in ("worker:0", "worker:1") and error.host == "127.0.0.1"
    assert str(error).startswith(
        f"role {error.role} on host 127.0.0.1 failed to start: ConfigError: network interface "
        f"'nope0' does not exist on host {socket.gethostname()}; interfaces here: lo"
    )
    assert "Traceback (most recent call last):" in error.remote_traceback
    assert "SQLSTATE" in error.spark_error  # Spark's own text, kept apart
    _assert_clean(error)
    assert time.monotonic() - started < 60


def test_the_roles_own_exception_names_the_users_file_and_line(spark: Any) -> None:
    train, line = _raising("worker:1")
    with pytest.raises(tfyarn.RoleFailedError) as info:
        tfyarn.run(spark, train, workers=2, chief=False, progress=False, timeout=300)
    error = info.value
    assert type(error) is tfyarn.RoleFailedError and not error.restartable
    assert (error.role, error.host) == ("worker:1", "127.0.0.1")
    assert str(error).splitlines()[0] == (
        "role worker:1 on host 127.0.0.1 failed: ValueError: deliberate failure in worker:1"
    )
    assert f'File "{__file__}", line {line}, in user_helper\n' in error.remote_traceback
    assert '    raise ValueError(f"deliberate failure in {name}")\n' in error.remote_traceback
    assert "<dynamic-code>" not in error.remote_traceback
    _assert_clean(error)


def test_a_role_killed_by_sigkill_is_lost_with_its_signal_at_once(spark: Any) -> None:
    stamp = os.path.join(tempfile.mkdtemp(prefix="tfyarn-test-"), "killed-at")

    def train(ctx: tfyarn.NodeContext) -> None:
        if ctx.task_id == "worker:1":
            print("worker:1 is about to be killed", flush=True)
            _stamp(stamp)
            os.kill(os.getpid(), signal.SIGKILL)
        _waiting_worker(ctx)

    with pytest.raises(tfyarn.RoleLostError) as info:
        tfyarn.run(spark, train, workers=2, chief=False, progress=False, timeout=300)
    surfaced = time.time()
    error = info.value
    assert error.restartable and isinstance(error, tfyarn.RoleFailedError)
    assert (error.role, error.host) == ("worker:1", "127.0.0.1")
    assert (error.signal, error.exit_status) == (9, None)
    assert str(error).startswith(
        "role worker:1 on host 127.0.0.1 was killed by signal 9 (SIGKILL): something outside "
        "it stopped it"
    )
    assert "worker:1 is about to be killed" in error.remote_traceback  # its own last output
    _assert_clean(error)
    took = surfaced - float(Path(stamp).read_text())
    assert took < 15, f"the kill took {took:.1f} s to surface"


def test_a_timed_out_job_names_what_it_was_waiting_for(spark: Any) -> None:
    def train(ctx: tfyarn.NodeContext) -> None:
        if ctx.task_id == "worker:1":
            ctx.report(step=1)
            _waiting_worker(ctx)

    started = time.monotonic()
    with pytest.raises(tfyarn.TFYarnError) as info:
        tfyarn.run(spark, train, workers=2, chief=False, progress=False, timeout=20)
    took = time.monotonic() - started
    text = str(info.value)
    found = re.match(
        r"the job did not finish within timeout=20 s and was cancelled: worker:1 has been "
        r"running with no step progress for (\d+) s; worker:0 is done\. Raise timeout= ",
        text,
    )
    assert found is not None, text
    assert 0 < int(found[1]) <= 20
    assert took < 20 + 15, f"the timeout took {took - 20:.0f} s more to end the job"


def _executor_pid() -> int:
    """The pid of the Spark executor JVM above this role process."""
    pid = os.getppid()
    while pid > 1:
        if b"CoarseGrainedExecutorBackend" in Path(f"/proc/{pid}/cmdline").read_bytes():
            return pid
        stat = Path(f"/proc/{pid}/stat").read_text()
        pid = int(stat.rsplit(")", 1)[1].split()[1])  # the parent's pid
    raise RuntimeError("no executor JVM above this process")


def test_a_role_whose_executor_dies_is_lost(spark: Any) -> None:
    def train(ctx: tfyarn.NodeContext) -> None:
        if ctx.task_id == "worker:1":
            os.kill(_executor_pid(), signal.SIGKILL)
        _waiting_worker(ctx)

    try:
        with pytest.raises(tfyarn.RoleLostError) as info:
            tfyarn.run(spark, train, workers=2, chief=False, progress=False, timeout=300)
        error = info.value
        assert (error.role, error.host) == ("worker:1", "127.0.0.1")
        # Two reports of the same loss race: Spark's stage failure (with its reason) and,
        # when the role's Python worker outlived the JVM, the task's report that the
        # role's watchdog ended it (status 3). The driver prefers Spark's when both came
        # within its settle time; either names the role and is a loss.
        text = str(error)
        if text.startswith("role worker:1 on host 127.0.0.1 was lost with its Spark executor"):
            assert text.startswith(
                "role worker:1 on host 127.0.0.1 was lost with its Spark executor "
                "(ExecutorLostFailure (executor "
            )
            assert "ExecutorLostFailure" in error.spark_error
        else:
            assert text.startswith(
                "role worker:1 on host 127.0.0.1 ended because its executor is gone"
            ), text
            assert error.exit_status == 3
        assert error.restartable
        _assert_clean(error)
    finally:  # the cluster replaces the executor; later tests need all of them
        validate.wait_for_slots(spark.sparkContext, 4, 180)
