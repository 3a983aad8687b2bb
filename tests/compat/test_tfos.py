"""TensorFlowOnSpark programs on tfyarn, ported by changing their import lines only.

The digits programs in :mod:`tfos_programs` (InputMode.SPARK, InputMode.TENSORFLOW and
inference) must reach the held-out accuracy of the same model trained with tfyarn's own
API in this run (within 1 point; the SPARK program and the native job take the same rows
in the same order, so they agree exactly). Then the feed's hang modes of
TensorFlowOnSpark (uneven partitions, a worker that stops reading) must complete or fail
with a clear error, and what tfyarn cannot honour must be refused.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import cloudpickle
import numpy as np
import pytest

import tfyarn
from tfyarn.compat.tfos import TFCluster, TFParallel
from tfyarn.errors import ConfigError, RoleFailedError, TransportUnavailableError

sys.path.insert(0, str(Path(__file__).resolve().parent))
from tfos_programs import digits_inference, digits_spark, digits_tensorflow

# The programs and this module are imported from paths the executors do not have: ship
# the functions they define by value.
for _module in (digits_spark, digits_tensorflow, digits_inference, sys.modules[__name__]):
    cloudpickle.register_pickle_by_value(_module)

EPOCHS = 8
BATCH = 32


@pytest.fixture(scope="module")
def args(tmp_path_factory: pytest.TempPathFactory) -> argparse.Namespace:
    """The programs' command-line arguments."""
    return argparse.Namespace(
        cluster_size=2, batch_size=BATCH, epochs=EPOCHS, learning_rate=0.1, seed=0,
        model_dir=str(tmp_path_factory.mktemp("tfos-model")),
        export_dir=str(tmp_path_factory.mktemp("tfos-export") / "digits"),
    )  # fmt: skip


def _digits_rows() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    digits = load_digits()
    train = np.arange(len(digits.target)) % 5 != 0
    order = np.random.RandomState(0).permutation(int(train.sum()))  # as the programs do
    return (digits.data[train] / 16.0).astype("float32")[order], digits.target[train][order]


def _native_train(ctx: tfyarn.NodeContext) -> dict[str, Any]:
    """The SPARK program's model and rows, with tfyarn's own API (``ctx.columns()``)."""
    import keras
    import tensorflow as tf
    from sklearn.datasets import load_digits

    tf.config.threading.set_intra_op_parallelism_threads(1)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    keras.utils.set_random_seed(0)
    strategy = ctx.strategy()
    with strategy.scope():
        model = keras.Sequential(
            [keras.Input((64,)), keras.layers.Dense(64, activation="relu"), keras.layers.Dense(10)]
        )
        optimizer = keras.optimizers.SGD(0.1, momentum=0.9)
    loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True, reduction="none")

    @tf.function(reduce_retracing=True)
    def train_step(x: Any, y: Any) -> Any:
        def replica(x: Any, y: Any) -> Any:
            with tf.GradientTape() as tape:
                per_example = loss_fn(y, model(x, training=True))
                loss = tf.nn.compute_average_loss(
                    per_example, global_batch_size=tf.shape(x)[0] * ctx.num_trainers
                )
            grads = tape.gradient(loss, model.trainable_variables)
            optimizer.apply_gradients(zip(grads, model.trainable_variables, strict=True))
            return loss

        return strategy.run(replica, args=(x, y))

    # The same stream of rows as the DataFeed: EPOCHS passes of the longest shard, the
    # shorter one wrapping around.
    columns = ctx.columns()
    rows = len(columns["y"])
    total = EPOCHS * max(ctx.members[t].rows for t in ctx.trainers)
    steps = 0
    for start in range(0, total, BATCH):
        index = np.arange(start, min(start + BATCH, total)) % rows
        train_step(columns["x"][index], columns["y"][index])
        steps += 1
    digits = load_digits()
    held_out = np.arange(len(digits.target)) % 5 == 0
    # A direct call: under MWMS predict_on_batch gathers every worker's predictions.
    x_test = (digits.data[held_out] / 16.0).astype("float32")
    predicted = np.argmax(model(x_test, training=False), axis=1)
    return {"accuracy": float(np.mean(predicted == digits.target[held_out])), "steps": steps}


@pytest.fixture(scope="module")
def native(spark: Any) -> dict[str, Any]:
    """The native tfyarn run: chief + 1 worker under MWMS, the same rows in one partition."""
    images, labels = _digits_rows()
    rows = [(x.tolist(), int(y)) for x, y in zip(images, labels, strict=True)]
    df = spark.createDataFrame(spark.sparkContext.parallelize(rows, 1), "x array<float>, y long")
    started = time.monotonic()
    result = tfyarn.run(
        spark, _native_train, workers=1, chief=True, strategy="mwms", data=df, progress=False
    )
    print(f"native tfyarn: {result.value} in {time.monotonic() - started:.1f} s")
    return dict(result.value)


@pytest.fixture(scope="module")
def spark_program(spark: Any, args: argparse.Namespace) -> TFCluster.TFCluster:
    """The InputMode.SPARK program, run once (its model serves the inference program)."""
    started = time.monotonic()
    cluster = digits_spark.main(spark.sparkContext, args)
    assert cluster.result is not None
    print(f"TFoS SPARK: {cluster.result.value} in {time.monotonic() - started:.1f} s")
    return cluster


def test_spark_mode_program_matches_native_tfyarn(
    native: dict[str, Any], spark_program: TFCluster.TFCluster
) -> None:
    assert spark_program.result is not None
    value = spark_program.result.value
    assert value["accuracy"] > 0.95
    assert abs(value["accuracy"] - native["accuracy"]) <= 0.01, (value, native)
    assert value["steps"] == native["steps"] == int(np.ceil(EPOCHS * 719 / BATCH))
    rows = {t: r["rows"] for t, r in spark_program.result.roles.items()}
    assert rows == {"chief:0": 719, "worker:0": 718}


def test_inference_program_gives_back_every_prediction_in_order(
    spark: Any, args: argparse.Namespace, spark_program: TFCluster.TFCluster
) -> None:
    from sklearn.datasets import load_digits

    started = time.monotonic()
    predictions = digits_inference.main(spark.sparkContext, args)
    digits = load_digits()
    labels = digits.target[np.arange(len(digits.target)) % 5 == 0].tolist()
    assert [label for label, _ in predictions] == labels  # every row, in the input's order
    accuracy = float(np.mean([label == p for label, p in predictions]))
    print(f"TFoS inference: accuracy {accuracy} in {time.monotonic() - started:.1f} s")
    assert spark_program.result is not None
    assert abs(accuracy - spark_program.result.value["accuracy"]) <= 0.01
    assert "digits.keras" in os.listdir(args.model_dir)


def test_tensorflow_mode_program_matches_native_tfyarn(
    spark: Any, args: argparse.Namespace, native: dict[str, Any]
) -> None:
    started = time.monotonic()
    cluster = digits_tensorflow.main(spark.sparkContext, args)
    assert cluster.result is not None
    value = cluster.result.value
    print(f"TFoS TENSORFLOW: {value} in {time.monotonic() - started:.1f} s")
    assert abs(value["accuracy"] - native["accuracy"]) <= 0.01, (value, native)
    assert os.path.exists(os.path.join(args.export_dir, "saved_model.pb"))


# -- the feed: uneven partitions, element types, hang modes ----------------------------

# Elements of plain Python values and NumPy arrays, in input partitions of 1, 40 and 4.
_CHUNKS = [
    [[np.array([i, -i], dtype=np.float32), i, f"s{i}", [i, 2 * i]] for i in range(lo, hi)]
    for lo, hi in ((0, 1), (1, 41), (41, 45))
]


def _read_everything(args: Any, ctx: Any) -> None:
    """Read the feed to its end; report what was read and the TFoS context."""
    feed = ctx.get_data_feed()
    seen, batches = [], 0
    while not feed.should_stop():
        for image, number, text, pair in feed.next_batch(4):
            assert isinstance(image, np.ndarray) and image.dtype == np.float32
            seen.append([image.tolist(), number, text, pair])
        batches += 1
    ctx.tfyarn.report(
        seen=seen, batches=batches, job_name=ctx.job_name, task_index=ctx.task_index,
        executor_id=ctx.executor_id, num_workers=ctx.num_workers,
        tf_config=json.loads(os.environ["TF_CONFIG"]),
    )  # fmt: skip


def test_uneven_partitions_of_plain_elements_feed_every_worker_alike(spark: Any) -> None:
    sc = spark.sparkContext
    rdd = sc.parallelize(range(3), 3).mapPartitionsWithIndex(lambda i, _: iter(_CHUNKS[i]))
    cluster = TFCluster.run(sc, _read_everything, None, 2, 0, input_mode=TFCluster.InputMode.SPARK)
    cluster.train(rdd, num_epochs=2, feed_timeout=60)
    cluster.shutdown()
    assert cluster.result is not None
    metrics = cluster.result.metrics
    rows = [cluster.result.roles[f"worker:{i}"]["rows"] for i in range(2)]
    assert sorted(rows) == [22, 23]
    # Both workers read two passes of the longer shard: the same batches, no one waits.
    assert metrics["worker:0"]["batches"] == metrics["worker:1"]["batches"] == 12  # 46 / 4
    everything = [[e[0].tolist(), e[1], e[2], e[3]] for chunk in _CHUNKS for e in chunk]
    seen = metrics["worker:0"]["seen"] + metrics["worker:1"]["seen"]
    assert len(seen) == 2 * 2 * 23
    assert sorted(map(json.dumps, everything)) == sorted({json.dumps(s) for s in seen})
    for i in range(2):
        assert metrics[f"worker:{i}"]["job_name"] == "worker"
        assert metrics[f"worker:{i}"]["task_index"] == metrics[f"worker:{i}"]["executor_id"] == i
        assert metrics[f"worker:{i}"]["num_workers"] == 2
        assert metrics[f"worker:{i}"]["tf_config"]["task"] == {"type": "worker", "index": i}


def _stops_reading(args: Any, ctx: Any) -> None:
    feed = ctx.get_data_feed()
    feed.next_batch(2)
    if ctx.task_index == 1:
        time.sleep(300)  # stuck: neither reads nor calls feed.terminate()
    while not feed.should_stop():
        feed.next_batch(2)


def test_a_worker_that_stops_reading_fails_the_job_after_feed_timeout(spark: Any) -> None:
    sc = spark.sparkContext
    cluster = TFCluster.run(sc, _stops_reading, None, 2, 0, input_mode=TFCluster.InputMode.SPARK)
    started = time.monotonic()
    with pytest.raises(RoleFailedError, match=r"worker:1") as failed:
        cluster.train(sc.parallelize(range(40), 2), feed_timeout=4)
    assert "FeedTimeoutError" in str(failed.value) and "feed_timeout=4" in str(failed.value)
    assert time.monotonic() - started < 90


def _roles_say_who_they_are(args: Any, ctx: Any) -> str:
    if ctx.job_name == "ps":
        time.sleep(600)  # a TFoS ps's server.join(): never returns by itself
    ctx.tfyarn.report(
        job_name=ctx.job_name, executor_id=ctx.executor_id, num_workers=ctx.num_workers,
        tf_config=json.loads(os.environ["TF_CONFIG"]), cluster_spec=ctx.cluster_spec,
    )  # fmt: skip
    return f"{args}:{ctx.job_name}"


def test_tensorflow_mode_with_a_ps_that_never_returns_and_master_naming(spark: Any) -> None:
    sc = spark.sparkContext
    started = time.monotonic()
    cluster = TFCluster.run(sc, _roles_say_who_they_are, "args", 3, 1, master_node="master")
    cluster.shutdown(timeout=240)  # the ps role ends once the trainers are done
    assert time.monotonic() - started < 240
    assert cluster.result is not None and cluster.result.value == "args:master"
    chief, worker = cluster.result.metrics["chief:0"], cluster.result.metrics["worker:0"]
    assert (chief["job_name"], chief["executor_id"], worker["executor_id"]) == ("master", 1, 2)
    assert chief["tf_config"]["task"] == {"type": "master", "index": 0}
    assert sorted(chief["tf_config"]["cluster"]) == sorted(chief["cluster_spec"])
    assert sorted(chief["cluster_spec"]) == ["master", "ps", "worker"]
    assert chief["num_workers"] == worker["num_workers"] == 2


def _one_copy(args: Any, ctx: Any) -> dict[str, Any]:
    return {"executor_id": ctx.executor_id, "num_workers": ctx.num_workers, "args": args}


def test_tfparallel_runs_independent_copies(spark: Any) -> None:
    value = TFParallel.run(spark.sparkContext, _one_copy, [1, 2], 2)
    assert value == {"executor_id": 0, "num_workers": 2, "args": [1, 2]}


def test_what_tfyarn_cannot_honour_is_refused(
    spark: Any, spark_program: TFCluster.TFCluster
) -> None:
    sc = spark.sparkContext
    rdd = sc.parallelize([(1.0, 2)], 1)
    with pytest.raises(ConfigError, match=r"cluster.train\(\) after cluster.train\(\)"):
        spark_program.train(rdd)
    with pytest.raises(ConfigError, match="ssc"):
        spark_program.shutdown(ssc=object())
    spark_mode = TFCluster.InputMode.SPARK
    with pytest.raises(ConfigError, match="qname='other'"):
        TFCluster.run(sc, _read_everything, None, 2, 0, input_mode=spark_mode).train(
            rdd, qname="other"
        )
    # RDMA is UCX over an RDMA device, and this host has none: refused before any role
    # starts, never replaced by TCP.
    with pytest.raises(TransportUnavailableError):
        TFCluster.run(sc, _read_everything, None, 2, 0, input_mode=spark_mode, rdma=True).train(rdd)
