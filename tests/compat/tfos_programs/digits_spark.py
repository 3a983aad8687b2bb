"""Digits in TensorFlowOnSpark's InputMode.SPARK: the driver feeds an RDD of (image, label).

A TensorFlowOnSpark program in its usual shape: ``main_fun(args, ctx)`` builds a
MultiWorkerMirroredStrategy model and trains on what ``TFNode.DataFeed`` reads; the driver
starts the cluster, feeds the RDD with ``cluster.train`` and shuts down. The chief reports
the held-out accuracy and saves the model for the inference program.
"""

# ported: from tensorflowonspark import TFCluster, TFNode
from tfyarn.compat.tfos import TFCluster, TFNode


def main_fun(args, ctx):
    import keras
    import numpy as np
    import tensorflow as tf
    from sklearn.datasets import load_digits

    tf.config.threading.set_intra_op_parallelism_threads(1)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    keras.utils.set_random_seed(args.seed)
    strategy = tf.distribute.MultiWorkerMirroredStrategy()
    with strategy.scope():
        model = keras.Sequential(
            [keras.Input((64,)), keras.layers.Dense(64, activation="relu"), keras.layers.Dense(10)]
        )
        optimizer = keras.optimizers.SGD(args.learning_rate, momentum=0.9)
    loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True, reduction="none")

    @tf.function(reduce_retracing=True)
    def train_step(x, y):
        def replica(x, y):
            with tf.GradientTape() as tape:
                per_example = loss_fn(y, model(x, training=True))
                loss = tf.nn.compute_average_loss(
                    per_example, global_batch_size=tf.shape(x)[0] * ctx.num_workers
                )
            grads = tape.gradient(loss, model.trainable_variables)
            optimizer.apply_gradients(zip(grads, model.trainable_variables, strict=True))
            return loss

        return strategy.run(replica, args=(x, y))

    tf_feed = TFNode.DataFeed(ctx.mgr)
    steps = 0
    while not tf_feed.should_stop():
        batch = tf_feed.next_batch(args.batch_size)
        if len(batch) == 0:
            break
        x = np.stack([item[0] for item in batch]).astype("float32")
        y = np.array([item[1] for item in batch], dtype="int64")
        train_step(x, y)
        steps += 1

    digits = load_digits()
    held_out = np.arange(len(digits.target)) % 5 == 0
    x_test = (digits.data[held_out] / 16.0).astype("float32")
    predicted = np.argmax(model(x_test, training=False), axis=1)
    accuracy = float(np.mean(predicted == digits.target[held_out]))
    if ctx.job_name == "chief":
        model.save(f"{args.model_dir}/digits.keras")
    return {"accuracy": accuracy, "steps": steps}


def main(sc, args):
    import numpy as np
    from sklearn.datasets import load_digits

    digits = load_digits()
    train = np.arange(len(digits.target)) % 5 != 0
    order = np.random.RandomState(args.seed).permutation(int(train.sum()))  # shuffled once
    images = (digits.data[train] / 16.0).astype("float32")[order]
    labels = digits.target[train][order]
    data = sc.parallelize(list(zip(images, labels, strict=True)), 1)

    cluster = TFCluster.run(
        sc,
        main_fun,
        args,
        args.cluster_size,
        num_ps=0,
        input_mode=TFCluster.InputMode.SPARK,
        master_node="chief",
    )
    cluster.train(data, args.epochs)
    cluster.shutdown()
    return cluster
