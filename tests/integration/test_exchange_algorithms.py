"""The exchange algorithms train a real model on real data (scikit-learn's digits).

EASGD, ADAG and model averaging (whose schedules run in Keras callbacks), and the
compressed all-reduce (against uncompressed synchronous SGD). Two worker processes (plus
one parameter-server process for the ps algorithms), tcp transport, Keras ``model.fit``;
the stated accuracy is on the held-out 20 %.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from tfyarn.exchange import STRATEGY_NAMES
from tfyarn.exchange.local import run_local

pytestmark = pytest.mark.integration

ENV = {"TF_CPP_MIN_LOG_LEVEL": "3", "KERAS_BACKEND": "tensorflow"}
EPOCHS = 8
#: Held-out accuracy every algorithm must reach (logistic regression gets ~0.96).
TARGET_ACCURACY = 0.90
#: The algorithms with a schedule of their own run here (small communication periods:
#: these runs are short); model averaging both every k steps and per epoch. Covered
#: elsewhere, against tighter references: allreduce trains the same digits model through
#: tfyarn.run in tests/compat/test_horovod.py (the native run the Horovod programs must
#: equal), tests/sparkml (plain Keras on the combined batch) and tests/watching; sync_ps
#: and downpour (Keras' side is one code path: the gradients go to the ps, the weights come
#: back) in test_exchange_references.py (the ps's updates against NumPy, through
#: tfyarn.run), test_exchange_launcher.py (the sync_ps example's model.fit on executors)
#: and test_exchange_keras.py.
COVERED_ELSEWHERE = {"allreduce", "sync_ps", "downpour"}
CASES: list[tuple[str, dict[str, Any]]] = [
    (
        name,
        {"easgd": {"tau": 4}, "model_averaging": {"every": 8}, "adag": {"window": 4}}.get(name, {}),
    )
    for name in STRATEGY_NAMES
    if name not in COVERED_ELSEWHERE
] + [
    ("model_averaging", {"every": "epoch"}),
    # compressed gradients, held to the uncompressed reference below: as a half type
    # (bf16 takes the same code path as fp16, and both are replayed bit for bit in
    # tests/unit/test_exchange_collectives.py), and sparsified to the top 10 %
    ("allreduce", {"compression": "fp16"}),
    ("allreduce", {"compression": "topk", "density": 0.1}),
]
#: How far compressed gradients may move the held-out accuracy: one point for a half
#: type; top-k delays 90 % of each step's gradient (error feedback), so two.
COMPRESSION_TOLERANCE = {"fp16": 0.01, "topk": 0.02}
PS_ALGORITHMS = {"sync_ps", "downpour", "easgd", "adag"}


def _digits() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    x = (x / 16.0).astype(np.float32)
    test = np.arange(len(x)) % 5 == 0
    return x[~test], y[~test].astype(np.int32), x[test], y[test].astype(np.int32)


def _digits_job(ctx: Any) -> dict[str, float]:
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(1)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    import keras

    strategy = ctx.strategy()
    xtr, ytr, xte, yte = _digits()
    per = len(xtr) // strategy.size  # equal shards: every worker runs the same steps
    shard = slice(strategy.rank * per, (strategy.rank + 1) * per)
    keras.utils.set_random_seed(strategy.rank)
    model = keras.Sequential(
        [keras.Input((64,)), keras.layers.Dense(64, activation="relu"), keras.layers.Dense(10)]
    )
    model.compile(
        optimizer=strategy.distributed_optimizer(keras.optimizers.Adam(0.01)),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
        # several steps per callback call: the schedules must still count every step
        steps_per_execution=3 if ctx.strategy_options.get("every") == 8 else 1,
    )
    compressed = "compression" in ctx.strategy_options
    start = model.get_weights()
    # compressed runs keep the shard's order, so that the reference below sees the same
    # combined batches
    model.fit(xtr[shard], ytr[shard], batch_size=32, epochs=EPOCHS, verbose=0,
              shuffle=not compressed, callbacks=strategy.callbacks())  # fmt: skip
    _, acc = model.evaluate(xte, yte, verbose=0)
    steps = EPOCHS * -(-per // 32)
    out = {"accuracy": float(acc), "steps": strategy.algorithm.steps, "expected_steps": steps}
    if compressed and strategy.rank == 0:
        # Uncompressed synchronous SGD: one process on the combined batches (rank 0's
        # start, which the exchange broadcast), equal to a float32 all-reduce.
        combined = np.concatenate([
            np.arange(r * per + b, r * per + min(b + 32, per))
            for b in range(0, per, 32) for r in range(strategy.size)
        ])  # fmt: skip
        ref = keras.models.clone_model(model)
        ref.set_weights(start)
        ref.compile(optimizer=keras.optimizers.Adam(0.01), metrics=["accuracy"],
                    loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))  # fmt: skip
        ref.fit(xtr[combined], ytr[combined], batch_size=32 * strategy.size, epochs=EPOCHS,
                shuffle=False, verbose=0)  # fmt: skip
        out["reference_accuracy"] = float(ref.evaluate(xte, yte, verbose=0)[1])
    return out


@pytest.mark.parametrize(
    ("algorithm", "options"),
    CASES,
    ids=["-".join([a, *(f"{k}={v}" for k, v in o.items())]) for a, o in CASES],
)
def test_algorithm_converges_on_digits(algorithm: str, options: dict[str, Any]) -> None:
    res = run_local(
        _digits_job,
        workers=2,
        ps=1 if algorithm in PS_ALGORITHMS else 0,
        strategy=algorithm,
        strategy_options=options,
        env=ENV,
        timeout=300,
    )
    accs = {t: r["accuracy"] for t, r in res.items()}
    print(f"{algorithm} {options}: held-out accuracy {accs}")
    assert set(accs) == {"worker:0", "worker:1"}
    assert min(accs.values()) >= TARGET_ACCURACY, accs
    for r in res.values():  # the schedules saw every step, steps_per_execution or not
        assert r["steps"] == r["expected_steps"]
    if "compression" in options:
        reference = res["worker:0"]["reference_accuracy"]
        print(f"  uncompressed reference (one process, combined batches): {reference:.4f}")
        tolerance = COMPRESSION_TOLERANCE[options["compression"]]
        assert abs(accs["worker:0"] - reference) <= tolerance, (accs, reference)
        # Every rank applies the same decompressed average: the replicas stay equal.
        assert accs["worker:0"] == accs["worker:1"], accs
