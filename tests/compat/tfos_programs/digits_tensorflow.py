"""Digits in TensorFlowOnSpark's InputMode.TENSORFLOW: each worker reads its own shard.

``TFCluster.run`` starts the cluster and returns; every node loads the data itself, takes
its shard by ``ctx.executor_id``, trains under MultiWorkerMirroredStrategy with tf.data and
exports a SavedModel; ``shutdown()`` waits for the end.
"""

# ported: from tensorflowonspark import TFCluster, compat
from tfyarn.compat.tfos import TFCluster, compat


def main_fun(args, ctx):
    import math

    import keras
    import numpy as np
    import tensorflow as tf
    from sklearn.datasets import load_digits

    tf.config.threading.set_intra_op_parallelism_threads(1)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    keras.utils.set_random_seed(args.seed)
    strategy = tf.distribute.MultiWorkerMirroredStrategy()

    digits = load_digits()
    index = np.arange(len(digits.target))
    train, held_out = index % 5 != 0, index % 5 == 0
    order = np.random.RandomState(args.seed).permutation(int(train.sum()))  # shuffled once
    images = (digits.data[train] / 16.0).astype("float32")[order]
    labels = digits.target[train][order]
    images = images[ctx.executor_id :: ctx.num_workers]
    labels = labels[ctx.executor_id :: ctx.num_workers]
    steps = args.epochs * math.ceil(int(train.sum()) / (args.batch_size * ctx.num_workers))
    dataset = tf.data.Dataset.from_tensor_slices((images, labels)).repeat().batch(args.batch_size)

    with strategy.scope():
        model = keras.Sequential(
            [keras.Input((64,)), keras.layers.Dense(64, activation="relu"), keras.layers.Dense(10)]
        )
        optimizer = keras.optimizers.SGD(args.learning_rate, momentum=0.9)
    loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True, reduction="none")

    @tf.function
    def train_step(x, y):
        def replica(x, y):
            with tf.GradientTape() as tape:
                per_example = loss_fn(y, model(x, training=True))
                loss = tf.nn.compute_average_loss(
                    per_example, global_batch_size=args.batch_size * ctx.num_workers
                )
            grads = tape.gradient(loss, model.trainable_variables)
            optimizer.apply_gradients(zip(grads, model.trainable_variables, strict=True))
            return loss

        return strategy.run(replica, args=(x, y))

    for x, y in dataset.take(steps):
        train_step(x, y)

    # Every worker takes part in the export; only the chief's copy is kept.
    compat.export_saved_model(model, args.export_dir, ctx.job_name == "chief")
    x_test = (digits.data[held_out] / 16.0).astype("float32")
    predicted = np.argmax(model(x_test, training=False), axis=1)
    return {"accuracy": float(np.mean(predicted == digits.target[held_out])), "steps": steps}


def main(sc, args):
    cluster = TFCluster.run(
        sc,
        main_fun,
        args,
        args.cluster_size,
        num_ps=0,
        input_mode=TFCluster.InputMode.TENSORFLOW,
        master_node="chief",
    )
    cluster.shutdown()
    return cluster
