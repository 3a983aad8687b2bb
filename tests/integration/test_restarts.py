"""Jobs survive the loss of a role: the fault matrix on the local Spark cluster (issue 12).

Every fault job is the same 2-worker Keras ``model.fit`` on scikit-learn's digits,
checkpointing every few steps: under ``allreduce`` (no chief: worker:0 is rank 0, the
checkpoint writer) or under ``sync_ps`` with one parameter server. A thread of the test
injects the fault into the running job: SIGKILL of a worker's role process, SIGKILL of
its executor's JVM, SIGSTOP of a role (silent), SIGKILL of the chief (rank 0), SIGKILL
of the ps, a kill in every attempt (restarts exhausted), a user exception (no restart).
Where the job must survive it ends SUCCEEDED, its held-out accuracy within one point of
an uninterrupted run of the same strategy and seed (trained once per module), it redoes
at most one checkpoint interval of steps, and leaves nothing behind.

Why the chief's case is rank 0 under ``allreduce``: the exchange strategies have no role
that only coordinates; a dedicated chief (``chief=True``) is one more trainer, rank 0,
exactly what worker:0 is without one (same writer, same resume path). The dedicated
chief of TF-native ``ps`` runs the ClusterCoordinator loop, whose resume is the user's
``ctx.checkpoint_manager`` loop, not tfyarn's: the one that tests tfyarn's recovery of
its checkpoint writer is rank 0 of an exchange strategy.
"""

from __future__ import annotations

import itertools
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cloudpickle
import pytest

import tfyarn
from tfyarn.errors import RestartsExhaustedError, RoleFailedError
from tfyarn.exchange.checkpoint import checkpoint_files, read_checkpoint
from tfyarn.exchange.ps.snapshot import read_snapshot, snapshot_files

pytestmark = pytest.mark.integration

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fault_job import EVERY, STRIKE_AFTER  # noqa: E402
from fault_job import read_mark as _read_mark  # noqa: E402
from fault_job import run as _run  # noqa: E402
from leftovers import executor_driver, leaked_shm, session_driver, shm_entries  # noqa: E402
from test_launcher import _assert_nothing_left, _role_processes  # noqa: E402

cloudpickle.register_pickle_by_value(sys.modules[__name__])


def _uninterrupted(spark: Any, marks: Path, strategy: str) -> float:
    result = _run(spark, marks, strategy)
    assert [a.kind for a in result.attempts] == [None]
    return float(result.value["accuracy"])


@pytest.fixture(scope="module")
def reference(spark: Any, tmp_path_factory: pytest.TempPathFactory) -> float:
    """Held-out accuracy of the same job, uninterrupted."""
    return _uninterrupted(spark, tmp_path_factory.mktemp("reference") / "marks", "allreduce")


@pytest.fixture(scope="module")
def ps_reference(spark: Any, tmp_path_factory: pytest.TempPathFactory) -> float:
    """Held-out accuracy of the sync_ps job, uninterrupted (same seed)."""
    accuracy = _uninterrupted(spark, tmp_path_factory.mktemp("ps-reference") / "marks", "sync_ps")
    # Converged, as the allreduce job does in 8 epochs: a resume that lost the model's or
    # the ps's state would land well outside one point of it.
    assert accuracy > 0.9, accuracy
    return accuracy


def _executor_jvm(pid: int) -> int:
    """The executor JVM above a role process (role <- Python worker <- daemon <- JVM)."""
    while pid > 1:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        if b"CoarseGrainedExecutorBackend" in cmdline:
            return pid
        stat = Path(f"/proc/{pid}/stat").read_text()
        pid = int(stat.rsplit(")", 1)[1].split()[1])
    raise AssertionError("no executor JVM above the role process")


@dataclass
class Fault:
    """Strikes in the given attempts once trainer ``victim``'s global step passed a mark.

    ``strike`` gets the pid of ``victim``'s role process (a fault of a ps finds its own).
    """

    marks: Path
    victim: str
    attempts: tuple[int, ...]
    strike: Callable[[int], None]
    struck_at: list[float]

    def start(self) -> None:
        threading.Thread(target=self._watch, daemon=True).start()

    def _watch(self) -> None:
        deadline = time.monotonic() + 800
        for attempt in self.attempts:
            path = self.marks / f"{self.victim.replace(':', '-')}.a{attempt}"
            first: int | None = None
            while time.monotonic() < deadline:
                mark = _read_mark(path)
                if mark is not None:
                    first = mark[1] if first is None else first
                    if mark[1] > max(STRIKE_AFTER, first + 3):
                        self.strike(mark[0])
                        self.struck_at.append(time.time())
                        break
                time.sleep(0.05)


def _fault(
    marks: Path, how: str, attempts: tuple[int, ...] = (1,), victim: str = "worker:1"
) -> Fault:
    """A fault that strikes in ``attempts``; ``how`` names it, or one per attempt ("a,b")."""
    named = how.split(",")
    hows = iter(named if len(named) > 1 else named * len(attempts))

    def strike(pid: int) -> None:
        now = next(hows)
        if now == "kill-role":
            os.kill(pid, signal.SIGKILL)
        elif now == "kill-executor":
            os.kill(_executor_jvm(pid), signal.SIGKILL)
        else:
            os.kill(pid, signal.SIGSTOP)

    fault = Fault(marks, victim, attempts, strike, [])
    fault.start()
    return fault


def _wait_dead(pid: int, within: float = 10.0) -> None:
    """Wait until ``pid`` is gone or a zombie (dead, not yet reaped by its task)."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            return
        if state in ("Z", "X"):
            return
        time.sleep(0.01)
    raise AssertionError(f"process {pid} still runs {within:.0f} s after SIGKILL")


def _new_role_process(workspace: str, before: set[int], driver: str) -> int:
    """The pid of the role process started since ``before`` whose workspace is named so."""
    for pid in set(_role_processes(driver=driver)) - before:
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        # python -m tfyarn.node.role_process WORKDIR ...: the workspace is the role's.
        if len(argv) > 3 and Path(argv[3].decode()).name == workspace:
            return pid
    raise AssertionError(f"no role process of workspace {workspace} is running")


def _shm() -> set[str]:
    return shm_entries("tfyarn", "ucx")


def _check_survived(
    result: Any, reference: float, kind: str, fault: Fault, lost_role: str = "worker:1"
) -> None:
    """Each fault ended one attempt (``kind``), each next one resumed; then success."""
    attempts = result.attempts
    faults = len(fault.struck_at)
    assert [a.kind for a in attempts] == [kind] * faults + [None], [a.describe() for a in attempts]
    for lost, resumed in itertools.pairwise(attempts):
        assert lost.role == lost_role and lost.host == "127.0.0.1", lost.describe()
        assert lost.executor.startswith("127.0.0.1:")
        assert resumed.resumed_from_step is not None and resumed.resumed_from_step >= EVERY
        assert resumed.steps_redone is not None and 0 <= resumed.steps_redone <= EVERY
        first = fault.marks / f"{fault.victim.replace(':', '-')}.a{resumed.number}.first"
        recovery = float(first.read_text()) - fault.struck_at[lost.number - 1]
        print(
            f"\n{kind} {lost_role} in attempt {lost.number}: training resumed {recovery:.1f} s "
            f"after the fault, from step {resumed.resumed_from_step}, "
            f"{resumed.steps_redone} steps redone; attempt {resumed.number} took "
            f"{resumed.duration:.1f} s"
        )
    assert abs(result.value["accuracy"] - reference) <= 0.01, (result.value, reference)
    print(f"accuracy {result.value['accuracy']:.4f} vs {reference:.4f} uninterrupted")
    _assert_nothing_left(result.job_id, [r["tf_port"] for r in result.roles.values()])


def test_a_killed_worker_then_its_killed_executor_each_restart_from_the_checkpoint(
    spark: Any, tmp_path: Path, reference: float
) -> None:
    """Two faults, one job: SIGKILL of worker:1's role process in attempt 1, of its
    executor's JVM in attempt 2 (one job's start-up and evaluation serve both)."""
    shm = _shm()
    fault = _fault(tmp_path / "marks", "kill-role,kill-executor", attempts=(1, 2))
    result = _run(spark, tmp_path / "marks", max_restarts=2, checkpoint_every=EVERY)
    assert len(fault.struck_at) == 2, "the faults did not both strike"
    _check_survived(result, reference, "lost", fault)
    assert not leaked_shm(shm, "tfyarn", "ucx")


def test_a_stopped_role_is_taken_for_silent_and_restarted(
    spark: Any, tmp_path: Path, reference: float
) -> None:
    fault = _fault(tmp_path / "marks", "stop")
    result = _run(
        spark, tmp_path / "marks", max_restarts=1, checkpoint_every=EVERY, silent_fail_after=10.0
    )
    assert fault.struck_at, "the fault never struck"
    assert result.attempts[0].duration < fault.struck_at[0] - result.attempts[0].started + 60
    _check_survived(result, reference, "silent", fault)


def test_exhausted_restarts_name_every_attempt(spark: Any, tmp_path: Path) -> None:
    fault = _fault(tmp_path / "marks", "kill-role", attempts=(1, 2))
    with pytest.raises(RestartsExhaustedError) as caught:
        _run(spark, tmp_path / "marks", max_restarts=1, checkpoint_every=EVERY)
    error = caught.value
    assert len(fault.struck_at) == 2
    assert [(a.number, a.kind, a.role) for a in error.attempts] == [  # type: ignore[attr-defined]
        (1, "lost", "worker:1"),
        (2, "lost", "worker:1"),
    ]
    text = str(error)
    assert text.startswith("the job failed in all 2 attempts (max_restarts=1); what ended each:")
    assert "\n- attempt 1 (" in text and "\n- attempt 2 (" in text
    assert error.last.role == "worker:1"
    _assert_nothing_left(error.last.job_id, error.last.ports)


def test_a_user_exception_fails_at_once_without_restart(spark: Any, tmp_path: Path) -> None:
    app = session_driver(spark)
    before = set(_role_processes(driver=app).values())
    with pytest.raises(RoleFailedError) as caught:
        _run(spark, tmp_path / "marks", max_restarts=3, checkpoint_every=EVERY, fail_in="worker:1")
    error = caught.value
    assert type(error) is RoleFailedError and not error.restartable
    assert error.role == "worker:1"
    assert "ValueError: deliberate failure at step" in error.remote_traceback
    assert {p.name.split(".")[1] for p in (tmp_path / "marks").iterdir()} == {"a1"}
    assert set(_role_processes(driver=app).values()) - before <= {error.job_id}
    _assert_nothing_left(error.job_id, error.ports)


def test_a_killed_chief_restarts_from_the_last_checkpoint_it_completed(
    spark: Any, tmp_path: Path, reference: float
) -> None:
    """SIGKILL of rank 0, the checkpoint writer; a torn newer checkpoint is never loaded.

    Right after the kill the newest checkpoint in the folder must be whole (the writer
    renames a fsynced file into place); the test then tears a newer one, as a writer
    on storage without atomic renames could leave it, and leaves the temporary file a
    kill in mid-write leaves. The resumed attempt starts from the whole one, and its
    writer sweeps the temporary file away.
    """
    folder = tmp_path / "checkpoints"
    seen: list[int] = []

    def kill_the_writer(pid: int) -> None:
        os.kill(pid, signal.SIGKILL)
        _wait_dead(pid)  # a rename it was making lands before the folder is looked at
        newest = read_checkpoint(checkpoint_files(folder)[-1])  # raises if it is torn
        assert newest.attempt == 1 and newest.global_step % EVERY == 0, newest
        seen.append(newest.global_step)
        torn = folder / f"ckpt-{newest.global_step + EVERY:012d}.npz"
        torn.write_bytes(Path(checkpoint_files(folder)[-1]).read_bytes()[:1000])
        # And the temporary file it leaves when the kill falls between open and rename.
        (folder / f".{torn.name}.{pid}.tmp").write_bytes(torn.read_bytes())

    fault = Fault(tmp_path / "marks", "worker:0", (1,), kill_the_writer, [])
    fault.start()
    result = _run(
        spark, tmp_path / "marks", max_restarts=1, checkpoint_every=EVERY,
        checkpoint_dir=str(folder),
    )  # fmt: skip
    assert fault.struck_at and seen, "the fault never struck"
    _check_survived(result, reference, "lost", fault, lost_role="worker:0")
    assert result.attempts[1].resumed_from_step == seen[0]
    # The next writer swept the killed one's temporary file.
    assert not [p.name for p in folder.iterdir() if p.name.endswith(".tmp")]


def test_a_killed_ps_restores_the_snapshot_of_the_resumed_checkpoint(
    spark: Any, tmp_path: Path, ps_reference: float
) -> None:
    """SIGKILL of the ps under sync_ps: it comes back with the state the trainers resume at.

    The ps applies one optimizer step per synchronous step, so each snapshot's
    optimizer step equals its tag's global step only if the restarted ps restored the
    snapshot of the checkpoint the trainers resumed from (started empty, its steps would
    count from the resume point).
    """
    folder = tmp_path / "checkpoints"
    app = session_driver(spark)
    before = set(_role_processes(driver=app))

    def kill_the_ps(_: int) -> None:
        os.kill(_new_role_process("ps-0", before, app), signal.SIGKILL)

    fault = Fault(tmp_path / "marks", "worker:0", (1,), kill_the_ps, [])
    fault.start()
    result = _run(
        spark, tmp_path / "marks", "sync_ps", max_restarts=1, checkpoint_every=EVERY,
        checkpoint_dir=str(folder),
    )  # fmt: skip
    assert fault.struck_at, "the fault never struck"
    _check_survived(result, ps_reference, "lost", fault, lost_role="ps:0")
    snapshots = [read_snapshot(p) for p in snapshot_files(folder / "ps-0")]
    resumed = [s for s in snapshots if s.tag is not None and s.tag.attempt == 2]
    assert resumed, [s.tag for s in snapshots]
    for snap in snapshots:
        assert snap.tag is not None
        steps = {b: state.step for b, state in snap.buckets.items()}
        assert set(steps.values()) == {snap.tag.global_step}, (snap.tag, steps)


def test_every_attempt_gets_the_same_shard_in_the_same_order(spark: Any) -> None:
    """A resumed feed skips the rows it had seen only if its shard comes in the same order.

    Spark delivers a shuffle's rows in the order it fetched the map outputs, at random:
    the spread sorts each trainer's shard back into the input's order.
    """
    from tfyarn.cluster.partitioning import KEY_COLUMN, routing_keys, spread
    from tfyarn.errors import ConfigError

    df = spark.range(0, 2000, numPartitions=4)
    keys = routing_keys(spark, 3)

    def shards() -> list[list[int]]:
        spread_df = spread(df, 3, [0, 1], keys)
        assert spread_df.columns == ["id", KEY_COLUMN]
        return spread_df.rdd.glom().map(lambda rows: [r.id for r in rows]).collect()

    first = shards()
    assert first == shards()
    assert first[2] == [] and sorted(first[0] + first[1]) == list(range(2000))
    assert all(shard == sorted(shard) for shard in first)
    with pytest.raises(ConfigError, match="already has a column named '_tfyarn_order'"):
        spread(df.withColumnRenamed("id", "_tfyarn_order"), 3, [0, 1], keys)


# -- elastic: the lost executor does not come back ----------------------------------------


def _executor_id(jvm: int) -> str:
    argv = Path(f"/proc/{jvm}/cmdline").read_bytes().decode().split("\0")
    return argv[argv.index("--executor-id") + 1]


def _executor_jvms(driver: str) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if executor_driver(argv) == driver:
            found.append(int(entry.name))
    return sorted(found)


def _settled_executor_jvms(spark: Any, count: int, within: float = 60.0) -> list[int]:
    """The session's ``count`` executor JVMs, once the executors of earlier tests are gone.

    An executor an earlier test killed can still be shutting down (under load, seconds
    after its replacement registered): wait until exactly ``count`` JVMs with distinct
    executor ids remain, as Spark counts them too.
    """
    _wait_executors(spark, count)
    driver = session_driver(spark)
    deadline = time.monotonic() + within
    jvms: list[int] = []
    while time.monotonic() < deadline:
        jvms, ids = [], set()
        for jvm in _executor_jvms(driver):
            try:
                state = Path(f"/proc/{jvm}/stat").read_text().rsplit(")", 1)[1].split()[0]
                if state not in ("Z", "X"):
                    ids.add(_executor_id(jvm))
                    jvms.append(jvm)
            except (OSError, ValueError):  # gone meanwhile, or its argv already empty
                continue
        if len(jvms) == count and len(ids) == count:
            return jvms
        time.sleep(0.5)
    raise AssertionError(f"{count} executor JVMs expected after {within:.0f} s: {jvms}")


def _wait_executors(spark: Any, count: int, within: float = 120.0) -> None:
    tracker = spark.sparkContext.statusTracker()
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        # getExecutorInfos lists the driver too.
        if len(tracker.getExecutorInfos()) - 1 == count:
            return
        time.sleep(0.5)
    raise AssertionError(f"the session did not get to {count} executors in {within:.0f} s")


def test_a_restart_without_the_lost_executor_goes_on_with_fewer_workers(
    spark: Any, tmp_path: Path, reference: float
) -> None:
    """min_workers: the cluster manager does not replace the executor it took.

    ``SparkContext.killExecutor`` lowers the application's executor target, so that the
    standalone master (like YARN under preemption) starts no replacement; the executor's
    JVM is killed with it, as a container kill does, and worker:1's role process ends on
    its own within a second (its watchdog sees the JVM gone). The job's two workers get
    the session's only two executors, worker:1's is taken mid-training, and the restart
    goes on with worker:0 alone on all the data, from the checkpoint, to the same total.
    """
    backend = spark.sparkContext._jsc.sc()
    jvms = _settled_executor_jvms(spark, 4)
    for jvm in jvms[2:]:
        backend.killExecutor(_executor_id(jvm))
    try:
        _wait_executors(spark, 2)
        marks = tmp_path / "marks"

        orphaned: list[float] = []

        def take(pid: int) -> None:
            # As YARN preempts a container: the cluster lowers the application's executor
            # target (so the master starts no replacement) and stops the JVM. Its Spark
            # worker does (SIGTERM; the JVM's shutdown kills the Python daemon without
            # its SIGHUP to the workers): the Python worker above the role outlives it,
            # and the role's watchdog must not wait for the driver to end the attempt.
            jvm = _executor_jvm(pid)
            backend.killExecutor(_executor_id(jvm))
            _wait_dead(jvm, within=20.0)
            killed = time.monotonic()
            _wait_dead(pid, within=10.0)
            orphaned.append(time.monotonic() - killed)

        fault = Fault(marks, "worker:1", (1,), take, [])
        fault.start()
        result = _run(
            spark, marks, max_restarts=3, checkpoint_every=EVERY, min_workers=1,
            allocation_timeout=5.0,
        )  # fmt: skip
    finally:
        # Back to the session's 4: the target the kills lowered (from 0 or 4, Spark keeps
        # it at least 0) goes up by 4, and the master has 4 one-core workers to fill.
        backend.requestExecutors(4)
        _wait_executors(spark, 4)
    assert fault.struck_at, "the fault never struck"
    # The watchdog looks 4 times a second; the driver's reaction takes several.
    assert orphaned and orphaned[0] < 2.0, orphaned
    lost, *between, smaller = result.attempts
    assert lost.kind == "lost" and (lost.workers, lost.wanted_workers) == (2, 2), lost
    # The first role to report is worker:0, whose peer vanished: a loss all the same.
    assert lost.role in ("worker:1", "worker:0"), lost.describe()
    # An attempt that counted the lost executor before Spark removed it finds its
    # barrier stage held back for want of a slot, and ends: the next one counts again.
    for held in between:
        assert held.kind == "lost" and "did not start within" in held.cause, held.describe()
    assert smaller.succeeded and (smaller.workers, smaller.wanted_workers) == (1, 2)
    assert "with 1 of 2 workers" in smaller.describe()
    # worker:0 alone read every training row: its epochs are twice as long.
    assert result.value["trainers"] == 1
    policy_dir = Path(result.model_dir) / "checkpoints"
    final = read_checkpoint(checkpoint_files(policy_dir)[-1])
    # The last checkpoint ends exactly at the run's total, in the one-trainer shard: the
    # resume position carried the examples trained over (2 x the 2-trainer batches).
    assert final.trainers == 1 and final.attempt == smaller.number
    assert final.shard_position == 8 * result.value["steps_per_epoch"]
    resumed = smaller.resumed_from_step
    assert resumed is not None and resumed >= EVERY
    assert final.global_step == resumed + final.shard_position - 2 * resumed
    # Not the uninterrupted run's model (the last epochs took half the examples per step),
    # but as good a one.
    assert abs(result.value["accuracy"] - reference) <= 0.03, (result.value, reference)
    print(
        f"\nelastic: attempt {smaller.number} ran with 1 of 2 workers from step {resumed} "
        f"(position {2 * resumed} of the larger shard); accuracy "
        f"{result.value['accuracy']:.4f} vs {reference:.4f}; {smaller.describe()}; the lost "
        f"role ended {orphaned[0]:.2f} s after its JVM"
    )


# -- TF-native: a MultiWorkerMirroredStrategy custom loop with ctx.checkpoint_manager --------

_MWMS_STEPS, _MWMS_EVERY, _MWMS_KILL, _MWMS_BATCH = 30, 4, 19, 8


def _mwms_batches(rank: int) -> tuple[Any, Any]:
    """Trainer ``rank``'s batch of every step: a linear target, the same on every attempt."""
    import numpy as np

    rng = np.random.default_rng(100 + rank)
    xs = rng.normal(size=(_MWMS_STEPS, _MWMS_BATCH, 3)).astype(np.float32)
    ys = xs @ np.array([[1.0, 0.0], [2.0, -1.0], [0.5, 0.5]], np.float32)
    return xs, ys


def _mwms_model() -> tuple[Any, Any]:
    import keras

    keras.utils.set_random_seed(5)
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    optimizer = keras.optimizers.SGD(0.05, momentum=0.9)
    optimizer.build(model.trainable_variables)
    return model, optimizer


def _mwms_resuming_loop(ctx: Any) -> dict[str, Any]:
    """Each step trains on the batch the step's number picks; worker:1 dies in attempt 1."""
    import tensorflow as tf

    strategy = ctx.strategy()
    xs, ys = _mwms_batches(ctx.trainer_rank)
    with strategy.scope():
        model, optimizer = _mwms_model()
        step = tf.Variable(0, dtype=tf.int64)
    manager = ctx.checkpoint_manager(
        tf.train.Checkpoint(model=model, optimizer=optimizer, step=step), step_counter=step
    )
    started_at = int(step.numpy())  # the restored step on attempt 2

    @tf.function
    def train_step(x: Any, y: Any) -> None:
        def replica(x: Any, y: Any) -> None:
            with tf.GradientTape() as tape:
                per_row = tf.reduce_mean((model(x) - y) ** 2, axis=1)
                loss = tf.nn.compute_average_loss(per_row, global_batch_size=2 * _MWMS_BATCH)
            grads = tape.gradient(loss, model.trainable_variables)
            optimizer.apply_gradients(zip(grads, model.trainable_variables, strict=True))

        strategy.run(replica, args=(x, y))

    while int(step.numpy()) < _MWMS_STEPS:
        i = int(step.numpy())
        train_step(tf.constant(xs[i]), tf.constant(ys[i]))
        step.assign_add(1)
        manager.save()  # every _MWMS_EVERY steps (TF's checkpoint_interval); all must call
        ctx.report(step=i + 1, started_at=started_at)
        if ctx.attempt == 1 and ctx.task_id == "worker:1" and i + 1 == _MWMS_KILL:
            os.kill(os.getpid(), signal.SIGKILL)
    return {"weights": [w.numpy().tolist() for w in model.weights], "started_at": started_at}


def test_a_mwms_custom_loop_resumes_from_its_tensorflow_checkpoint(
    spark: Any, tmp_path: Path
) -> None:
    """``ctx.checkpoint_manager`` under ``mwms``: worker:1 is SIGKILLed at step 19, the
    restart restores model, momentum and step from the chief's newest TensorFlow
    checkpoint (step 17: TF's interval counts from the first save, at step 1), redoes
    steps 18-19, and ends with the weights of single-process SGD on the combined batches,
    which an attempt that started over or lost the optimizer's momentum would not."""
    import numpy as np
    import tensorflow as tf

    result = tfyarn.run(
        spark, _mwms_resuming_loop, workers=2, chief=False, strategy="mwms", progress=False,
        max_restarts=1, checkpoint_dir=str(tmp_path / "ckpt"), checkpoint_every=_MWMS_EVERY,
        timeout=600,
    )  # fmt: skip
    lost, resumed = result.attempts
    assert (lost.kind, lost.role, resumed.kind) == ("lost", "worker:1", None), lost.describe()
    assert result.value["started_at"] == 17
    assert {result.metrics[f"worker:{i}"]["started_at"] for i in range(2)} == {17}

    model, optimizer = _mwms_model()
    (x0, y0), (x1, y1) = _mwms_batches(0), _mwms_batches(1)
    for i in range(_MWMS_STEPS):
        x, y = np.concatenate([x0[i], x1[i]]), np.concatenate([y0[i], y1[i]])
        with tf.GradientTape() as tape:
            loss = tf.reduce_mean(tf.reduce_mean((model(x) - y) ** 2, axis=1))
        grads = tape.gradient(loss, model.trainable_variables)
        optimizer.apply_gradients(zip(grads, model.trainable_variables, strict=True))
    for got, want in zip(result.value["weights"], model.weights, strict=True):
        np.testing.assert_allclose(np.array(got), want.numpy(), rtol=1e-5, atol=1e-6)
    _assert_nothing_left(result.job_id, [r["tf_port"] for r in result.roles.values()])
