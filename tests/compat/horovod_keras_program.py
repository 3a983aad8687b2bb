"""A Horovod Keras program (our own code, written in Horovod's idiom) for the tests.

Only its two tfyarn import lines differ from the same program on Horovod
(``import horovod.keras as hvd`` and ``import horovod.spark``): see
``docs/migration.md``. :func:`load_digits_split` and :func:`build_model` are
shared with the GradientTape program and the native tfyarn versions in the tests.
"""

from __future__ import annotations

from typing import Any

import numpy as np

import tfyarn.horovod.keras as hvd
from tfyarn import horovod

SEED = 7


def load_digits_split() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """scikit-learn's digits scaled to [0, 1]; every 5th row held out for testing."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = (digits.data / 16.0).astype(np.float32)
    y = digits.target.astype(np.int64)
    test = np.arange(len(x)) % 5 == 0
    return x[~test], y[~test], x[test], y[test]


def build_model() -> Any:
    """A small MLP."""
    import keras

    return keras.Sequential(
        [keras.Input((64,)), keras.layers.Dense(64, activation="relu"), keras.layers.Dense(10)]
    )


def train(epochs: int = 4, batch_size: int = 32, learning_rate: float = 0.05) -> dict[str, Any]:
    """One rank: train on its shard with ``model.fit``, evaluate on the held-out rows."""
    import keras
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(1)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    hvd.init()
    keras.utils.set_random_seed(SEED)
    x, y, x_test, y_test = load_digits_split()
    x, y = x[hvd.rank() :: hvd.size()], y[hvd.rank() :: hvd.size()]
    model = build_model()
    optimizer = keras.optimizers.SGD(learning_rate * hvd.size(), momentum=0.9)
    optimizer = hvd.DistributedOptimizer(optimizer)
    model.compile(
        optimizer=optimizer,
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    callbacks = [
        hvd.callbacks.BroadcastGlobalVariablesCallback(0),
        hvd.callbacks.MetricAverageCallback(),
    ]
    history = model.fit(x, y, batch_size=batch_size, epochs=epochs, callbacks=callbacks, verbose=0)
    _, accuracy = model.evaluate(x_test, y_test, verbose=0)
    return {
        "rank": hvd.rank(),
        "size": hvd.size(),
        "local_rank": hvd.local_rank(),
        "accuracy": float(accuracy),
        "loss": [float(v) for v in history.history["loss"]],
    }


def main(num_proc: int = 2, env: dict[str, str] | None = None, **kwargs: Any) -> list[Any]:
    """Run :func:`train` on ``num_proc`` ranks; every rank's result, by rank."""
    return horovod.spark.run(train, kwargs=kwargs, num_proc=num_proc, env=env, verbose=0)
