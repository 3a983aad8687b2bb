"""Digits on a Spark cluster with TensorFlow's ParameterServerStrategy.

A chief (coordinator), workers and parameter servers, one per Spark executor. The training
data is a Spark DataFrame spread over the workers; the chief schedules training steps on
them with ``ClusterCoordinator`` and evaluates the model on held-out data at the end.

Run it with::

    tfyarn submit --profile local-cluster --workers 2 --ps 1 examples/digits_ps.py

It prints the test accuracy and where the model was saved.
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
    import keras

    return keras.Sequential(
        [
            keras.Input(shape=(64,)),
            keras.layers.Dense(128, activation="relu"),
            keras.layers.Dense(64, activation="relu"),
            keras.layers.Dense(10),
        ]
    )


def make_train_fn(epochs: int, batch_size: int, learning_rate: float):
    """The function each role runs; only the chief does work under strategy='ps'."""

    def train(ctx: tfyarn.NodeContext) -> dict[str, Any]:
        import keras
        import tensorflow as tf

        strategy = ctx.strategy()
        coordinator = tf.distribute.coordinator.ClusterCoordinator(strategy)
        with strategy.scope():
            model = build_model()
            optimizer = keras.optimizers.Adam(learning_rate)
            loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True)

        dataset = ctx.per_worker_dataset(coordinator, batch_size, features="x", label="y")
        iterator = iter(dataset)

        @tf.function
        def train_step(iterator: Any) -> Any:
            def replica_step(x: Any, y: Any) -> Any:
                with tf.GradientTape() as tape:
                    loss = loss_fn(y, model(x, training=True))
                grads = tape.gradient(loss, model.trainable_variables)
                optimizer.apply_gradients(zip(grads, model.trainable_variables, strict=True))
                return loss

            x, y = next(iterator)
            return strategy.run(replica_step, args=(x, y))

        steps = ctx.steps_per_epoch(batch_size)
        for epoch in range(epochs):
            losses = [coordinator.schedule(train_step, args=(iterator,)) for _ in range(steps)]
            coordinator.join()
            loss = float(np.mean([remote.fetch() for remote in losses]))
            ctx.report(
                epoch=epoch + 1, step=(epoch + 1) * steps, loss=loss, samples=steps * batch_size
            )

        _, x_test, _, y_test = load_split()
        # Copy the trained weights (held by the parameter servers) into a local model.
        local = build_model()
        local.set_weights([v.numpy() for v in model.weights])
        predictions = np.argmax(local.predict(x_test, verbose=0), axis=1)
        accuracy = float(np.mean(predictions == y_test))
        path = ctx.save_model(local, "digits.keras")  # model_dir may be on HDFS
        return {"test_accuracy": accuracy, "model_path": path, "final_loss": loss}

    return train


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--learning-rate", type=float, default=3e-3)
    args = parser.parse_args()

    spark = SparkSession.builder.appName("tfyarn-digits-ps").getOrCreate()
    x_train, _, y_train, _ = load_split()
    table = pa.table(
        {
            "x": pa.FixedSizeListArray.from_arrays(pa.array(x_train.reshape(-1)), 64),
            "y": pa.array(y_train),
        }
    )
    df = spark.createDataFrame(table)
    result = tfyarn.run(
        spark,
        make_train_fn(args.epochs, args.batch_size, args.learning_rate),
        strategy="ps",
        data=df,
    )
    print(f"test accuracy: {result.value['test_accuracy']:.4f}")
    print(f"model saved to: {result.value['model_path']}")
    print(
        f"wall time: {result.wall_time:.1f} s; stage start -> all roles ready: "
        f"{result.startup_time:.1f} s"
    )
    spark.stop()


if __name__ == "__main__":
    main()
