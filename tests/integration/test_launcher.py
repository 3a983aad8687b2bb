"""The launcher end to end on a real local Spark cluster (separate executor processes) with
real TensorFlow: ParameterServerStrategy, MultiWorkerMirroredStrategy, uneven data,
failing roles, too few executors, Ctrl-C. After every failure nothing may be left behind:
no role processes, no workspaces, no held ports."""

from __future__ import annotations

import os
import signal
import socket
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pytest
from leftovers import port_held_by_this_session, session_driver, spark_driver_of

import tfyarn

pytestmark = pytest.mark.integration

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "examples"))
import cloudpickle  # noqa: E402
import digits_ps  # noqa: E402

# The example and this module are imported from paths the executors do not have: ship
# the functions they define by value.
cloudpickle.register_pickle_by_value(digits_ps)
cloudpickle.register_pickle_by_value(sys.modules[__name__])


def _role_processes(job_id: str = "", driver: str = "") -> dict[int, str]:
    """Live tfyarn role processes (of job ``job_id``, or of any job): pid -> job id.

    ``driver``: only those under an executor of that driver (:func:`session_driver`).
    """
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if b"role_process" not in (entry / "cmdline").read_bytes():
                continue
            env = (entry / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        for item in env:
            if item.startswith(b"TFYARN_JOB="):
                job = item.split(b"=", 1)[1].decode()
                if not job_id or job == job_id:
                    found[int(entry.name)] = job
    if driver:
        found = {pid: job for pid, job in found.items() if spark_driver_of(pid) == driver}
    return found


def _workspaces(job_id: str) -> list[Path]:
    return list(Path(tempfile.gettempdir()).glob(f"tfyarn-{job_id}"))


def _describe(folders: list[Path]) -> str:
    """What lies in left-over folders: every entry with its age (a clue to who left it)."""
    now, lines = time.time(), []
    for folder in folders:
        for entry in sorted([folder, *folder.rglob("*")]):
            try:
                age = now - entry.lstat().st_mtime
            except OSError:
                continue
            lines.append(f"{entry} ({age:.1f} s old)")
    return "\n".join(lines)


def _assert_nothing_left(job_id: str, ports: list[int], within: float = 30.0) -> None:
    """The job's role processes, workspaces and ports are gone within ``within`` seconds.

    Scoped to one job: other tfyarn jobs may run on the same host at the same time.
    """
    assert job_id
    deadline = time.monotonic() + within
    while time.monotonic() < deadline and (_role_processes(job_id) or _workspaces(job_id)):
        time.sleep(0.5)
    assert _role_processes(job_id) == {}
    left = _workspaces(job_id)
    assert left == [], _describe(left)
    for port in ports:
        with socket.socket() as s:
            # SO_REUSEADDR tolerates TIME_WAIT leftovers of closed connections (as every
            # server does) but still fails on a socket that is bound or listening.
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                s.bind(("127.0.0.1", port))
                s.listen()
            except OSError:
                # Once released, the port may be reused by anyone: as the local port of an
                # outgoing connection, or bound by the other test group's daemons. Only
                # a listening socket of this session's processes is a leak (a server's).
                holders = port_held_by_this_session(port)
                assert not holders, f"port {port} is still held after the job by {holders}"


def _digits_df(
    spark: Any, rows: int | None = None, partitions: list[int] | None = None, ids: bool = False
) -> Any:
    x_train, _, y_train, _ = digits_ps.load_split()
    if rows is not None:
        x_train, y_train = x_train[:rows], y_train[:rows]
    columns = {
        "x": pa.FixedSizeListArray.from_arrays(pa.array(x_train.reshape(-1)), 64),
        "y": pa.array(y_train),
    }
    if ids:  # each row's number, to count which rows a trainer was fed
        columns["id"] = pa.array(np.arange(len(y_train), dtype=np.int64))
    table = pa.table(columns)
    df = spark.createDataFrame(table)
    if partitions is None:
        return df
    # Rebuild with deliberately uneven input partitions (sizes as given).
    pieces, start = [], 0
    for size in partitions:
        pieces.append(spark.createDataFrame(table.slice(start, size)).coalesce(1))
        start += size
    out = pieces[0]
    for piece in pieces[1:]:
        out = out.union(piece)
    return out


def test_parameter_server_strategy_trains_digits(spark: Any, tmp_path: Path) -> None:
    result = tfyarn.run(
        spark,
        digits_ps.make_train_fn(epochs=6, batch_size=32, learning_rate=3e-3),
        workers=2,
        ps=1,
        strategy="ps",
        data=_digits_df(spark),
        model_dir=str(tmp_path / "model"),
        progress=False,
    )
    # TensorFlow's ClusterCoordinator runs each step on whichever worker is free, reading
    # that worker's shard, with stale weights: under the suite's load the 270 steps gave
    # 0.889 once (above 0.9 in every other run). Untrained, the model scores about 0.1.
    print(f"ParameterServerStrategy: held-out accuracy {result.value['test_accuracy']:.4f}")
    assert result.value["test_accuracy"] >= 0.85
    assert Path(result.value["model_path"]).is_file()
    assert set(result.roles) == {"chief:0", "worker:0", "worker:1", "ps:0"}
    assert result.roles["worker:0"]["rows"] + result.roles["worker:1"]["rows"] == 1437
    assert result.roles["chief:0"]["rows"] == 0 and result.roles["ps:0"]["rows"] == 0
    assert result.startup_time is not None and result.startup_time > 0
    _assert_nothing_left(result.job_id, [r["tf_port"] for r in result.roles.values()])


def _mwms_train(ctx: tfyarn.NodeContext) -> dict[str, Any]:
    import keras
    import tensorflow as tf

    strategy = ctx.strategy()
    batch = 16
    with strategy.scope():
        model = keras.Sequential([keras.Input(shape=(64,)), keras.layers.Dense(10)])
        optimizer = keras.optimizers.SGD(0.1)
    loss_fn = keras.losses.SparseCategoricalCrossentropy(
        from_logits=True, reduction="sum_over_batch_size"
    )

    def shard(_: Any = None) -> Any:
        # features=None: x is a dict of the columns but the label, "id" among them.
        return ctx.dataset(batch, epochs=2, label="y", seed=ctx.index)

    # The dataset is this worker's shard in per-trainer batches: distributed from a
    # function, TensorFlow neither shards nor re-batches it.
    dist = strategy.distribute_datasets_from_function(shard)

    @tf.function
    def step(x: Any, y: Any) -> Any:
        def replica(x: Any, y: Any) -> Any:
            with tf.GradientTape() as tape:
                loss = loss_fn(y, model(x["x"], training=True))
            grads = tape.gradient(loss, model.trainable_variables)
            optimizer.apply_gradients(zip(grads, model.trainable_variables, strict=True))
            return loss

        per_replica = strategy.run(replica, args=(x, y))
        return strategy.reduce(tf.distribute.ReduceOp.MEAN, per_replica, axis=None)

    steps, losses, seen = 0, [], []
    for x, y in dist:
        losses.append(float(step(x, y)))
        for ids in strategy.experimental_local_results(x["id"]):
            seen += [int(i) for i in ids.numpy()]
        steps += 1
    # experimental_distribute_dataset takes its batches for global ones (split over the
    # workers' replicas) and auto-shards what it gets unless told not to; ctx.dataset
    # tells it not to. Only iterated: every row must still come through.
    fed = []
    for x, _ in strategy.experimental_distribute_dataset(shard()):
        for ids in strategy.experimental_local_results(x["id"]):
            fed += [int(i) for i in ids.numpy()]
    checksum = float(sum(float(tf.reduce_sum(w)) for w in model.weights))
    ctx.report(
        steps=steps, checksum=checksum, first_loss=losses[0], last_loss=losses[-1], seen=seen,
        fed=fed, shard=[int(i) for i in ctx.columns()["id"]],
    )  # fmt: skip
    return {"steps": steps, "checksum": checksum, "losses": losses}


def test_multi_worker_mirrored_with_uneven_partitions_runs_equal_steps(spark: Any) -> None:
    # 301 rows from input partitions of 280, 20 and 1 rows: 151/150 rows per worker.
    df = _digits_df(spark, rows=301, partitions=[280, 20, 1], ids=True)
    result = tfyarn.run(
        spark, _mwms_train, workers=2, chief=False, strategy="mwms", data=df, progress=False
    )
    rows = [result.roles[f"worker:{i}"]["rows"] for i in range(2)]
    assert sum(rows) == 301 and abs(rows[0] - rows[1]) <= 3  # balanced, nothing dropped
    steps = [result.metrics[f"worker:{i}"]["steps"] for i in range(2)]
    assert steps[0] == steps[1] == 2 * int(np.ceil(max(rows) / 16))
    # Each worker trained on its own whole shard, twice (2 epochs; the last batches of
    # the shorter shard run into a third pass); through experimental_distribute_dataset
    # too, where TensorFlow's auto-sharding, left on, fed each worker every other batch
    # of its shard (half its rows; the defect before 2026-12-04).
    shards = [result.metrics[f"worker:{i}"]["shard"] for i in range(2)]
    assert sorted(shards[0] + shards[1]) == list(range(301))
    for shard, i in zip(shards, range(2), strict=True):
        seen = Counter(result.metrics[f"worker:{i}"]["seen"])
        assert sum(seen.values()) == steps[i] * 16
        assert set(seen) == set(shard), f"worker:{i} was not fed its whole shard"
        assert all(2 <= n <= 3 for n in seen.values()), seen
        fed = Counter(result.metrics[f"worker:{i}"]["fed"])
        assert sum(fed.values()) == steps[i] * 16 and set(fed) == set(shard), fed
    # synchronous training: both workers end with the same weights
    assert result.metrics["worker:0"]["checksum"] == pytest.approx(
        result.metrics["worker:1"]["checksum"], rel=1e-6
    )
    assert result.value["losses"][-1] < result.value["losses"][0]
    _assert_nothing_left(result.job_id, [r["tf_port"] for r in result.roles.values()])


def _fail_on(task: str, delay: float = 0.0) -> Any:
    def train(ctx: tfyarn.NodeContext) -> None:
        if ctx.task_id == task:
            time.sleep(delay)
            raise ValueError(f"deliberate failure in {ctx.task_id}")
        ctx.wait_training_finished(timeout=600) if ctx.role == "ps" else time.sleep(600)

    return train


@pytest.mark.parametrize("task", ["worker:1", "ps:0"])
def test_a_failing_role_fails_the_job_fast_and_leaves_nothing(spark: Any, task: str) -> None:
    started = time.monotonic()
    with pytest.raises(tfyarn.RoleFailedError) as failure:
        tfyarn.run(spark, _fail_on(task, delay=2.0), workers=2, ps=1, progress=False, timeout=300)
    elapsed = time.monotonic() - started
    error = failure.value
    assert error.role == task
    assert error.host == "127.0.0.1"
    assert f"ValueError: deliberate failure in {task}" in error.remote_traceback
    assert "Traceback" in error.remote_traceback
    assert elapsed < 120, f"the failure took {elapsed:.0f} s to surface"
    _assert_nothing_left(error.job_id, error.ports)


def test_too_few_executors_is_a_clear_error(spark: Any) -> None:
    started = time.monotonic()
    with pytest.raises(tfyarn.AllocationError, match=r"needs 7 executors .* only 4 registered"):
        tfyarn.run(spark, _fail_on("none"), workers=4, ps=2, allocation_timeout=3, progress=False)
    assert time.monotonic() - started < 30


def test_bad_arguments_fail_before_anything_starts(spark: Any) -> None:
    with pytest.raises(tfyarn.ConfigError, match="unknown strategy 'bogus'"):
        tfyarn.run(spark, _fail_on("none"), workers=1, strategy="bogus")
    with pytest.raises(tfyarn.ConfigError, match="strategy='ps' needs at least one parameter"):
        tfyarn.run(spark, _fail_on("none"), workers=1, strategy="ps")
    with pytest.raises(tfyarn.ConfigError, match="needs data= as a Spark DataFrame"):
        tfyarn.run(spark, _fail_on("none"), workers=1, data=object(), input_mode="spark")
    # A column the roles could not load is named before any executor is taken.
    prices = spark.range(4).selectExpr("id", "cast(id * 2 as decimal(10, 1)) as price")
    with pytest.raises(tfyarn.ConfigError, match=r"column 'price' has type decimal\(10,1\)"):
        tfyarn.run(spark, _fail_on("none"), workers=1, data=prices)


def test_ctrl_c_on_the_driver_cancels_the_job_and_cleans_up(spark: Any) -> None:
    app = session_driver(spark)
    before = set(_role_processes(driver=app).values())
    jobs: list[str] = []

    def interrupt_when_running() -> None:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline:
            mine = [j for j in _role_processes(driver=app).values() if j not in before]
            if len(mine) >= 3:  # chief and both workers are up
                jobs.append(mine[0])
                break
            time.sleep(0.5)
        time.sleep(1.0)
        os.kill(os.getpid(), signal.SIGINT)

    threading.Thread(target=interrupt_when_running, daemon=True).start()
    with pytest.raises(KeyboardInterrupt):
        tfyarn.run(spark, _fail_on("none"), workers=2, progress=False, timeout=300)
    assert jobs, "the roles never came up"
    _assert_nothing_left(jobs[0], [])
