"""Plain Keras 3 ``model.fit`` across Spark executors with tfyarn's ring all-reduce.

Each worker (one per Spark executor) trains the same Keras model on its shard of a
Spark DataFrame. ``strategy.distributed_optimizer`` averages the gradients of all
workers at every step (one fused ring all-reduce over tfyarn's transport), and
``strategy.callbacks()`` starts every worker from the same weights and averages the
epoch metrics. The model code is unchanged Keras: ``model.compile(...)`` then
``model.fit(dataset, epochs=...)``.

Run it with::

    tfyarn submit --profile local-cluster --workers 2 examples/keras_fit_allreduce.py

or choose another algorithm (parameter-server ones need ``--ps 1``)::

    tfyarn submit --profile local-cluster --workers 2 --ps 1 \\
        examples/keras_fit_allreduce.py --strategy easgd

With ``--tensorboard`` each worker's curves (and the exchange's own scalars) are served
by TensorBoard while the job runs, at the address printed at the start.

It prints the held-out accuracy, the transport used and where the model was saved.
"""

from __future__ import annotations

import argparse
from typing import Any

import numpy as np
import pyarrow as pa
from pyspark.sql import SparkSession
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

import tfyarn


def load_split(seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """scikit-learn's digits (1,797 8x8 images), scaled to [0, 1], split 80/20."""
    digits = load_digits()
    x = (digits.data / 16.0).astype(np.float32)
    y = digits.target.astype(np.int64)
    return train_test_split(x, y, test_size=0.2, random_state=seed, stratify=y)


def build_model() -> Any:
    """An ordinary Keras model: nothing in it knows about the cluster."""
    import keras

    return keras.Sequential(
        [
            keras.Input(shape=(64,)),
            keras.layers.Dense(128, activation="relu"),
            keras.layers.Dense(64, activation="relu"),
            keras.layers.Dense(10),
        ]
    )


def make_train_fn(epochs: int, batch_size: int, learning_rate: float) -> Any:
    """The function every worker runs (``train_fn(ctx)``)."""

    def train(ctx: tfyarn.NodeContext) -> dict[str, Any]:
        import keras

        strategy = ctx.strategy()  # the tfyarn exchange strategy chosen in tfyarn.run
        model = build_model()
        model.compile(
            optimizer=strategy.distributed_optimizer(keras.optimizers.Adam(learning_rate)),
            loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
            metrics=["accuracy"],
        )
        # this worker's shard; every worker gets the same number of steps
        dataset = ctx.dataset(batch_size, epochs=epochs, features="x", label="y")
        callbacks = [*strategy.callbacks(), ctx.keras_callback()]
        if ctx.log_dir:  # tfyarn submit --tensorboard (or --log-dir): curves per worker
            callbacks.append(ctx.tensorboard_callback())
        history = model.fit(
            dataset,
            epochs=epochs,
            steps_per_epoch=ctx.steps_per_epoch(batch_size),
            callbacks=callbacks,
            verbose=0,
        )
        result: dict[str, Any] = {"history": history.history, "workers": strategy.size}
        if ctx.is_chief:
            _, x_test, _, y_test = load_split()
            _, accuracy = model.evaluate(x_test, y_test, verbose=0)
            path = ctx.save_model(model, "digits.keras")  # model_dir may be on HDFS
            result.update(test_accuracy=float(accuracy), model_path=path)
        return result

    return train


def main() -> None:
    """Parse the arguments, put the data in a DataFrame, run the job, print the outcome."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--strategy",
        default="allreduce",
        help="allreduce, sync_ps, downpour, easgd, model_averaging or adag",
    )
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--learning-rate", type=float, default=3e-3)
    args = parser.parse_args()

    spark = SparkSession.builder.appName("tfyarn-keras-fit-allreduce").getOrCreate()
    x_train, _, y_train, _ = load_split()
    table = pa.table(
        {
            "x": pa.FixedSizeListArray.from_arrays(pa.array(x_train.reshape(-1)), 64),
            "y": pa.array(y_train),
        }
    )
    result = tfyarn.run(
        spark,
        make_train_fn(args.epochs, args.batch_size, args.learning_rate),
        chief=False,  # worker:0 is rank 0 and saves the model
        strategy=args.strategy,
        data=spark.createDataFrame(table),
    )
    value = result.value
    print(f"strategy {args.strategy} on {value['workers']} workers over {result.transport}")
    print(f"final (worker-averaged) loss: {value['history']['loss'][-1]:.4f}")
    print(f"test accuracy: {value['test_accuracy']:.4f}")
    print(f"model saved to: {value['model_path']}")
    spark.stop()


if __name__ == "__main__":
    main()
