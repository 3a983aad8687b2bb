"""Horovod programs on tfyarn (issue 14): only their import lines changed.

Two programs in Horovod's idioms (``horovod_keras_program``: ``model.fit`` with
``DistributedOptimizer`` and the callbacks; ``horovod_tape_program``: a ``tf.function``
loop with ``DistributedGradientTape`` and ``broadcast_variables`` after the first step)
run through ``tfyarn.horovod.spark.run`` on 2 ranks. The reference is the same models,
seeds, shards and batches trained with tfyarn's native API (``tfyarn.run(...,
strategy="allreduce")`` and ``ctx.strategy().distributed_optimizer``) in one more job,
which then checks ``hvd.init()`` inside a plain ``tfyarn.run`` and Horovod's collectives
against NumPy. Three Spark jobs in all.
"""

from __future__ import annotations

import sys
from typing import Any

import cloudpickle
import horovod_keras_program as keras_program
import horovod_tape_program as tape_program
import numpy as np
import pytest

import tfyarn

pytestmark = pytest.mark.integration

for _module in (sys.modules[__name__], keras_program, tape_program):
    # the executors cannot import tests/compat: ship these modules' code by value
    cloudpickle.register_pickle_by_value(_module)

ENV = {"TF_CPP_MIN_LOG_LEVEL": "3", "KERAS_BACKEND": "tensorflow"}
EPOCHS, BATCH = 4, 32
KERAS_RATE, TAPE_RATE = 0.05, 0.05
RANKS = 2


def _one_thread() -> None:
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(1)
    tf.config.threading.set_inter_op_parallelism_threads(1)


def _native_fit(strategy: Any) -> dict[str, Any]:
    """The Keras program with tfyarn's native API (same seed, shard, model, batches)."""
    import keras

    keras.utils.set_random_seed(keras_program.SEED)
    x, y, x_test, y_test = keras_program.load_digits_split()
    x, y = x[strategy.rank :: strategy.size], y[strategy.rank :: strategy.size]
    model = keras_program.build_model()
    optimizer = keras.optimizers.SGD(KERAS_RATE * strategy.size, momentum=0.9)
    model.compile(
        optimizer=strategy.distributed_optimizer(optimizer),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
        jit_compile=False,
    )
    history = model.fit(
        x, y, batch_size=BATCH, epochs=EPOCHS, callbacks=strategy.callbacks(), verbose=0
    )
    _, accuracy = model.evaluate(x_test, y_test, verbose=0)
    return {"accuracy": float(accuracy), "loss": [float(v) for v in history.history["loss"]]}


def _native_tape(strategy: Any) -> dict[str, Any]:
    """The GradientTape program with tfyarn's native API (``begin``/``step_end``/``end``)."""
    import keras
    import tensorflow as tf

    keras.utils.set_random_seed(keras_program.SEED)
    x, y, x_test, y_test = keras_program.load_digits_split()
    x, y = x[strategy.rank :: strategy.size], y[strategy.rank :: strategy.size]
    model = keras_program.build_model()
    loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    optimizer = keras.optimizers.SGD(TAPE_RATE * strategy.size, momentum=0.9)
    optimizer = strategy.distributed_optimizer(optimizer)

    @tf.function
    def training_step(images: Any, labels: Any) -> Any:
        with tf.GradientTape() as tape:
            loss = loss_fn(labels, model(images, training=True))
        grads = tape.gradient(loss, model.trainable_variables)
        optimizer.apply_gradients(zip(grads, model.trainable_variables, strict=True))
        return loss

    strategy.begin(model, optimizer)
    steps = len(x) // BATCH
    order_rng = np.random.default_rng(keras_program.SEED)
    for _ in range(EPOCHS):
        order = order_rng.permutation(len(x))
        for step in range(steps):
            batch = order[step * BATCH : (step + 1) * BATCH]
            training_step(x[batch], y[batch])
            strategy.step_end(model)
    strategy.end(model)
    predicted = np.argmax(model(x_test, training=False), axis=1)
    return {"accuracy": float(np.mean(predicted == y_test))}


def _rank_inputs(rank: int) -> dict[str, np.ndarray]:
    """What rank ``rank`` contributes to each collective (the driver recomputes them)."""
    rng = np.random.default_rng(100 + rank)
    return {
        "gather_f": np.arange((rank + 1) * 3, dtype=np.float32).reshape(rank + 1, 3) + 10 * rank,
        "gather_i": np.full(rank + 2, rank, np.int32),
        "x": rng.standard_normal((5, 2)).astype(np.float32),
        "n": np.array([3 * rank + 1, -rank], np.int64),
        "scatter": np.arange(10, dtype=np.float32).reshape(5, 2) * (rank + 1),
    }


def _collective_checks() -> dict[str, Any]:
    """Horovod's collectives, from ``hvd.init()`` inside a plain ``tfyarn.run`` train_fn."""
    import tensorflow as tf

    import tfyarn.horovod.tensorflow as hvd

    hvd.init()
    rank = hvd.rank()
    mine = _rank_inputs(rank)
    x = tf.constant(mine["x"])

    @tf.function
    def summed_in_graph(t: Any) -> Any:
        return hvd.allreduce(t, op=hvd.Sum, name="in graph")

    variable = tf.Variable(mine["x"])
    hvd.broadcast_variables([variable], root_rank=1)
    out: dict[str, Any] = {
        "topology": [hvd.rank(), hvd.size(), hvd.local_rank(), hvd.local_size(),
                     hvd.cross_rank(), hvd.cross_size()],
        "allgather_f": hvd.allgather(mine["gather_f"]).numpy(),
        "allgather_i": hvd.allgather(mine["gather_i"]).numpy(),
        "average": hvd.allreduce(x).numpy(),
        "sum": hvd.allreduce(x, op=hvd.Sum).numpy(),
        "sum_graph": summed_in_graph(x).numpy(),
        "min": hvd.allreduce(x, op=hvd.Min).numpy(),
        "max": hvd.allreduce(x, op=hvd.Max).numpy(),
        "product": hvd.allreduce(x, op=hvd.Product).numpy(),
        "scaled": hvd.allreduce(x, op=hvd.Sum, prescale_factor=2.0, postscale_factor=0.25).numpy(),
        "fp16": hvd.allreduce(x, compression=hvd.Compression.fp16).numpy(),
        "average_int": hvd.allreduce(mine["n"]).numpy(),
        "reducescatter": hvd.reducescatter(mine["scatter"], op=hvd.Sum).numpy(),
        "broadcast": hvd.broadcast(x, root_rank=1).numpy(),
        "variable": variable.numpy(),
        "object": hvd.broadcast_object({"from": rank, "items": [rank] * 3}, root_rank=1),
        "objects": hvd.allgather_object(("rank", rank)),
        "join": hvd.join(),
    }  # fmt: skip
    return out


def _native_job(ctx: Any) -> dict[str, Any]:
    _one_thread()
    strategy = ctx.strategy()
    fit = _native_fit(strategy)
    tape = _native_tape(strategy)
    import tfyarn.horovod.tensorflow as hvd

    checks = _collective_checks()
    return {"fit": fit, "tape": tape, "collectives": hvd.allgather_object(checks)}


@pytest.fixture(scope="module")
def native(spark: Any) -> dict[str, Any]:
    """The native tfyarn job's results (worker 0's, with every rank's collective checks)."""
    result = tfyarn.run(
        spark, _native_job, workers=RANKS, chief=False, strategy="allreduce", env=ENV,
        progress=False,
    )  # fmt: skip
    return result.value


def test_horovod_keras_program_matches_native_api(spark: Any, native: dict[str, Any]) -> None:
    results = keras_program.main(
        RANKS, env=ENV, epochs=EPOCHS, batch_size=BATCH, learning_rate=KERAS_RATE
    )
    # every rank's value, in rank order
    assert [r["rank"] for r in results] == [0, 1]
    assert [(r["size"], r["local_rank"]) for r in results] == [(2, 0), (2, 1)]
    accuracy = results[0]["accuracy"]
    assert results[1]["accuracy"] == accuracy  # the ranks hold the same model
    assert accuracy >= 0.9, results
    assert abs(accuracy - native["fit"]["accuracy"]) <= 0.01, (results, native["fit"])
    # the same steps as the native run: the averaged epoch losses agree to float noise
    np.testing.assert_allclose(results[0]["loss"], native["fit"]["loss"], rtol=1e-5)


def test_horovod_tape_program_matches_native_api(spark: Any, native: dict[str, Any]) -> None:
    results = tape_program.main(
        RANKS, env=ENV, epochs=EPOCHS, batch_size=BATCH, learning_rate=TAPE_RATE
    )
    assert [r["rank"] for r in results] == [0, 1]
    accuracy = results[0]["accuracy"]
    assert results[1]["accuracy"] == accuracy
    assert accuracy >= 0.9, results
    assert abs(accuracy - native["tape"]["accuracy"]) <= 0.01, (results, native["tape"])
    assert results[0]["loss"][-1] < results[0]["loss"][0]


def test_collectives_inside_tfyarn_run_match_numpy(native: dict[str, Any]) -> None:
    checks = native["collectives"]
    inputs = [_rank_inputs(r) for r in range(RANKS)]
    xs = np.stack([i["x"] for i in inputs])
    full_scatter = sum(i["scatter"] for i in inputs)
    for rank, got in enumerate(checks):
        # one host: local ranks are the ranks; each rank is its own "cross" group
        assert got["topology"] == [rank, RANKS, rank, RANKS, 0, 1]
        np.testing.assert_array_equal(
            got["allgather_f"], np.concatenate([i["gather_f"] for i in inputs])
        )
        np.testing.assert_array_equal(
            got["allgather_i"], np.concatenate([i["gather_i"] for i in inputs])
        )
        assert got["allgather_i"].dtype == np.int32
        np.testing.assert_allclose(got["average"], xs.mean(0), rtol=1e-6)
        np.testing.assert_allclose(got["sum"], xs.sum(0), rtol=1e-6)
        np.testing.assert_allclose(got["sum_graph"], xs.sum(0), rtol=1e-6)
        np.testing.assert_array_equal(got["min"], xs.min(0))
        np.testing.assert_array_equal(got["max"], xs.max(0))
        np.testing.assert_allclose(got["product"], xs.prod(0), rtol=1e-6)
        np.testing.assert_allclose(got["scaled"], xs.sum(0) * 2.0 * 0.25, rtol=1e-6)
        np.testing.assert_allclose(got["fp16"], xs.mean(0), rtol=2e-3, atol=2e-3)
        assert got["fp16"].dtype == np.float32
        np.testing.assert_array_equal(got["average_int"], sum(i["n"] for i in inputs) // RANKS)
        rows = [3, 2]  # 5 rows over 2 ranks: the first rank gets the extra one
        start = sum(rows[:rank])
        np.testing.assert_allclose(got["reducescatter"], full_scatter[start : start + rows[rank]])
        np.testing.assert_array_equal(got["broadcast"], inputs[1]["x"])
        np.testing.assert_array_equal(got["variable"], inputs[1]["x"])
        assert got["object"] == {"from": 1, "items": [1, 1, 1]}
        assert got["objects"] == [("rank", 0), ("rank", 1)]
        assert got["join"] in (0, 1)
    assert checks[0]["join"] == checks[1]["join"]
