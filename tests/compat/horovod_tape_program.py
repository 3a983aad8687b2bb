"""A Horovod TensorFlow 2 program (our own code, in Horovod's GradientTape idiom).

Only its two tfyarn import lines differ from the same program on Horovod
(``import horovod.tensorflow as hvd`` and ``import horovod.spark``). The data and the model
come from the Keras program's module (a test convenience: the same rows and layers).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from horovod_keras_program import SEED, build_model, load_digits_split

import tfyarn.horovod.tensorflow as hvd
from tfyarn import horovod


def train(epochs: int = 4, batch_size: int = 32, learning_rate: float = 0.05) -> dict[str, Any]:
    """One rank: a ``tf.function`` training loop on its shard, then the held-out accuracy."""
    import keras
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(1)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    hvd.init()
    keras.utils.set_random_seed(SEED)
    x, y, x_test, y_test = load_digits_split()
    x, y = x[hvd.rank() :: hvd.size()], y[hvd.rank() :: hvd.size()]
    model = build_model()
    loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    optimizer = keras.optimizers.SGD(learning_rate * hvd.size(), momentum=0.9)

    @tf.function
    def training_step(images: Any, labels: Any, first_batch: bool) -> Any:
        with tf.GradientTape() as tape:
            loss = loss_fn(labels, model(images, training=True))
        tape = hvd.DistributedGradientTape(tape)
        grads = tape.gradient(loss, model.trainable_variables)
        optimizer.apply_gradients(zip(grads, model.trainable_variables, strict=True))
        # Horovod's idiom: broadcast once the optimizer has created its state
        if first_batch:
            hvd.broadcast_variables(model.variables, root_rank=0)
            hvd.broadcast_variables(optimizer.variables, root_rank=0)
        return loss

    steps = len(x) // batch_size
    order_rng = np.random.default_rng(SEED)
    losses = []
    for epoch in range(epochs):
        order = order_rng.permutation(len(x))
        for step in range(steps):
            batch = order[step * batch_size : (step + 1) * batch_size]
            loss = training_step(x[batch], y[batch], epoch == 0 and step == 0)
        losses.append(float(hvd.allreduce(loss)))
    predicted = np.argmax(model(x_test, training=False), axis=1)
    return {
        "rank": hvd.rank(),
        "size": hvd.size(),
        "accuracy": float(np.mean(predicted == y_test)),
        "loss": losses,
    }


def main(num_proc: int = 2, env: dict[str, str] | None = None, **kwargs: Any) -> list[Any]:
    """Run :func:`train` on ``num_proc`` ranks; every rank's result, by rank."""
    return horovod.spark.run(train, kwargs=kwargs, num_proc=num_proc, env=env, verbose=0)
