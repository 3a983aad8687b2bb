"""Inference in TensorFlowOnSpark's InputMode.SPARK: an RDD of images in, predictions out.

Each node loads the trained model, reads its rows with ``DataFeed(ctx.mgr, False)`` and
gives back one ``(label, prediction)`` per row with ``batch_results``;
``cluster.inference`` returns them as an RDD.
"""

# ported: from tensorflowonspark import TFCluster, TFNode
from tfyarn.compat.tfos import TFCluster, TFNode


def main_fun(args, ctx):
    import keras
    import numpy as np
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(1)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    model = keras.saving.load_model(f"{args.model_dir}/digits.keras")
    tf_feed = TFNode.DataFeed(ctx.mgr, False)
    while not tf_feed.should_stop():
        batch = tf_feed.next_batch(args.batch_size)
        if len(batch) == 0:
            break
        images = np.stack([item[0] for item in batch])
        predicted = np.argmax(model.predict_on_batch(images), axis=1)
        labels = [int(item[1]) for item in batch]
        tf_feed.batch_results([(y, int(p)) for y, p in zip(labels, predicted, strict=True)])


def main(sc, args):
    import numpy as np
    from sklearn.datasets import load_digits

    digits = load_digits()
    held_out = np.arange(len(digits.target)) % 5 == 0
    images = (digits.data[held_out] / 16.0).astype("float32")
    data = sc.parallelize(list(zip(images, digits.target[held_out].tolist(), strict=True)), 3)

    cluster = TFCluster.run(
        sc, main_fun, args, args.cluster_size, num_ps=0, input_mode=TFCluster.InputMode.SPARK
    )
    predictions = cluster.inference(data).collect()
    cluster.shutdown()
    return predictions
