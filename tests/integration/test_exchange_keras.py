"""Keras 3 ``model.fit`` and GradientTape loops across real worker processes.

Each test is one local job (separate processes, tcp transport, real TensorFlow).
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import pytest

from tfyarn.errors import RoleFailedError
from tfyarn.exchange.local import run_local

pytestmark = pytest.mark.integration

ENV = {"TF_CPP_MIN_LOG_LEVEL": "3", "KERAS_BACKEND": "tensorflow"}


def _tf_setup() -> Any:
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(1)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    return tf


def _mlp(seed: int) -> Any:
    import keras

    keras.utils.set_random_seed(seed)
    return keras.Sequential(
        [keras.Input((6,)), keras.layers.Dense(16, activation="tanh"), keras.layers.Dense(3)]
    )


def _toy_data() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(7)
    x = rng.standard_normal((64, 6)).astype(np.float32)
    y = (x[:, 0] > 0).astype(np.int32) + (x[:, 1] > 0.5).astype(np.int32)
    return x, y


def _equivalence_job(ctx: Any) -> dict[str, Any]:
    """allreduce on 2 workers (8 samples each per step) vs 1 process on the 16-sample batch."""
    tf = _tf_setup()
    import keras

    strategy = ctx.strategy()
    r, n = strategy.rank, strategy.size
    x, y = _toy_data()
    half = 16 // n
    idx = np.concatenate([np.arange(16 * i + half * r, 16 * i + half * (r + 1)) for i in range(4)])
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)

    # The sizes of the arrays each exchange carried, in the order the exchanges ran.
    exchanged: list[list[int]] = []
    algorithm = strategy.algorithm
    exchange = algorithm.exchange_gradients

    def recorded(grads: Any, bucket: int = 0) -> Any:
        exchanged.append([int(g.size) for g in grads])
        return exchange(grads, bucket=bucket)

    algorithm.exchange_gradients = recorded  # type: ignore[method-assign]

    # model.fit: each rank starts from a different init; rank 0's is broadcast
    model = _mlp(seed=100 + r)
    init = [w.copy() for w in model.get_weights()]
    opt = strategy.distributed_optimizer(keras.optimizers.SGD(0.1, momentum=0.9))
    model.compile(optimizer=opt, loss=loss)
    model.fit(x[idx], y[idx], batch_size=half, epochs=2, shuffle=False, verbose=0,
              callbacks=strategy.callbacks())  # fmt: skip
    fit_weights = model.get_weights()

    # custom GradientTape loop, same data, same starting point
    tape_model = _mlp(seed=200 + r)
    tape_opt = strategy.distributed_optimizer(keras.optimizers.SGD(0.1, momentum=0.9))
    tape_opt.build(tape_model.trainable_variables)
    strategy.begin(tape_model, tape_opt)
    tape_init = [w.copy() for w in tape_model.get_weights()]

    @tf.function
    def step(xb: Any, yb: Any) -> Any:
        with tf.GradientTape() as tape:
            value = loss(yb, tape_model(xb, training=True))
        grads = tape.gradient(value, tape_model.trainable_variables)
        tape_opt.apply_gradients(zip(grads, tape_model.trainable_variables, strict=True))
        return strategy.allreduce_tensors([value])[0]  # the loss averaged over workers

    mean_losses = []
    for _epoch in range(2):
        for i in range(4):
            sl = idx[i * half : (i + 1) * half]
            mean_losses.append(float(step(tf.constant(x[sl]), tf.constant(y[sl]))))
            strategy.step_end(tape_model)
    strategy.end(tape_model)
    tape_weights = tape_model.get_weights()

    out: dict[str, Any] = {"fit": fit_weights, "tape": tape_weights, "mean_losses": mean_losses,
                           "exchanged": exchanged}  # fmt: skip
    if r == 0:  # the reference: one process, combined 16-sample batches, rank 0's init
        for name, start in (("ref_fit", init), ("ref_tape", tape_init)):
            ref = _mlp(seed=0)
            ref.set_weights(start)
            ref.compile(optimizer=keras.optimizers.SGD(0.1, momentum=0.9), loss=loss)
            ref.fit(x, y, batch_size=16, epochs=2, shuffle=False, verbose=0)
            out[name] = ref.get_weights()
    return out


#: The sizes of the MLP's gradients in backward order: bias 3, kernel 16x3, bias 16,
#: kernel 6x16.
BACKWARD = [3, 48, 16, 96]


@pytest.mark.parametrize(
    "options",
    [{"bucket_bytes": 64}, {"bucket_bytes": 256, "cycle_time_ms": 20}],
    ids=["planned-buckets", "fusion-cycle"],
)
def test_allreduce_two_workers_equal_one_worker_on_the_combined_batch(
    options: dict[str, Any],
) -> None:
    """Also with the gradients exchanged in several groups, last layer first.

    ``bucket_bytes=64`` cuts the MLP's gradients (384, 64, 192 and 12 bytes) into four
    planned buckets per step; with ``cycle_time_ms`` the groups are whatever is ready
    within the cycle, up to 256 bytes, as rank 0 decides.
    """
    res = run_local(
        _equivalence_job, workers=2, strategy="allreduce", env=ENV, timeout=300,
        strategy_options=options,
    )  # fmt: skip
    w0, w1 = res["worker:0"], res["worker:1"]
    steps = 2 * 4 * 2  # fit and tape: 2 epochs of 4 steps each
    assert w0["exchanged"] == w1["exchanged"]  # the same groups on both ranks
    if "cycle_time_ms" not in options:
        # one bucket per gradient, each crossing into Python as one flat array
        assert w0["exchanged"] == [[n] for n in BACKWARD] * steps
    else:
        # the gradients one by one, in groups of up to 256 bytes
        flat = [n for group in w0["exchanged"] for n in group]
        assert flat == BACKWARD * steps  # every gradient once per step, last layer first
        for group in w0["exchanged"]:
            assert len(group) == 1 or 4 * sum(group) <= 256, group
    # the in-graph all-reduce gave both workers the same mean loss at every step
    assert w0["mean_losses"] == w1["mean_losses"]
    for kind in ("fit", "tape"):
        for a, b, ref in zip(w0[kind], w1[kind], w0[f"ref_{kind}"], strict=True):
            np.testing.assert_array_equal(a, b)  # identical steps on both ranks
            np.testing.assert_allclose(a, ref, rtol=1e-5, atol=1e-6)
        # and training did move the weights (the comparison is not trivially true)
        assert max(np.abs(a - b).max() for a, b in zip(w0[kind], _init_of(kind), strict=True)) > 0


def _init_of(kind: str) -> list[np.ndarray]:
    return _mlp(seed=100 if kind == "fit" else 200).get_weights()


def _lstm_job(ctx: Any) -> dict[str, Any]:
    _tf_setup()
    import keras

    strategy = ctx.strategy()
    rng = np.random.default_rng(strategy.rank)
    # sequence task: is the sum of the sequence positive?
    x = rng.standard_normal((256, 8, 1)).astype(np.float32)
    y = (x.sum(axis=(1, 2)) > 0).astype(np.int32)
    keras.utils.set_random_seed(strategy.rank)
    model = keras.Sequential([keras.Input((8, 1)), keras.layers.LSTM(16), keras.layers.Dense(2)])
    model.compile(
        optimizer=strategy.distributed_optimizer(keras.optimizers.Adam(0.01)),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    hist = model.fit(x, y, batch_size=32, epochs=6, verbose=0, callbacks=strategy.callbacks())
    return {"loss": hist.history["loss"], "acc": hist.history["accuracy"],
            "weights": model.get_weights()}  # fmt: skip


def test_lstm_trains_with_allreduce() -> None:
    res = run_local(_lstm_job, workers=2, strategy="allreduce", env=ENV, timeout=300)
    w0, w1 = res["worker:0"], res["worker:1"]
    # metrics are averaged over workers, so both report the same history
    assert w0["loss"] == pytest.approx(w1["loss"])
    assert w0["loss"][-1] < 0.7 * w0["loss"][0]
    assert w0["acc"][-1] >= 0.85
    for a, b in zip(w0["weights"], w1["weights"], strict=True):
        np.testing.assert_array_equal(a, b)


def _failing_job(ctx: Any) -> None:
    _tf_setup()
    import keras

    strategy = ctx.strategy()

    class Crash(keras.callbacks.Callback):
        def on_train_batch_end(self, batch: int, logs: Any = None) -> None:
            if strategy.rank == 1 and batch == 3:
                os._exit(17)  # the worker dies mid-fit, without any goodbye

    x, y = _toy_data()
    model = _mlp(0)
    model.compile(
        optimizer=strategy.distributed_optimizer(keras.optimizers.SGD(0.1)),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    model.fit(x, y, batch_size=4, epochs=50, verbose=0,
              callbacks=[*strategy.callbacks(), Crash()])  # fmt: skip


@pytest.mark.parametrize("strategy", ["allreduce", "sync_ps"])
def test_worker_dying_mid_fit_fails_the_job_without_hanging(strategy: str) -> None:
    ps = 1 if strategy == "sync_ps" else 0
    with pytest.raises(RoleFailedError) as info:
        run_local(_failing_job, workers=2, ps=ps, strategy=strategy, env=ENV, timeout=240)
    text = str(info.value)
    assert "exited with code 17" in text or "TransportError" in text or "closed" in text
