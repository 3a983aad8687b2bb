"""A job for the GPU test: one SGD step of a dense layer on each role's GPU.

Usage: tfyarn submit --profile PROFILE_WITH_GPUS --workers 1 gpu_step.py

Each trainer checks that it sees exactly the GPUs Spark assigned to its task
(CUDA_VISIBLE_DEVICES, set before TensorFlow started), runs the step on ``/GPU:0`` and
reports the updated kernel; the test recomputes the step with NumPy.
"""

from __future__ import annotations

import os

import numpy as np
from pyspark.sql import SparkSession

import tfyarn

#: The step's inputs, the same for the job and the test's NumPy reference.
SEED, ROWS, FEATURES, UNITS, LEARNING_RATE = 7, 64, 16, 4, 0.1


def inputs() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``x``, ``y`` and the initial kernel (float32, from one seeded generator)."""
    rng = np.random.default_rng(SEED)
    x = rng.standard_normal((ROWS, FEATURES)).astype(np.float32)
    y = rng.standard_normal((ROWS, UNITS)).astype(np.float32)
    kernel = rng.standard_normal((FEATURES, UNITS)).astype(np.float32)
    return x, y, kernel


def train(ctx: tfyarn.NodeContext) -> dict:
    """The step on this role's GPU; what it saw and the updated kernel."""
    import tensorflow as tf

    assigned = os.environ.get("CUDA_VISIBLE_DEVICES", "")
    gpus = tf.config.list_physical_devices("GPU")
    # Full float32 matmuls: TensorFloat-32 (on by default on Ampere and newer) keeps 10
    # bits of mantissa, too few for a comparison with NumPy at 1e-4.
    tf.config.experimental.enable_tensor_float_32_execution(False)
    x, y, kernel = inputs()
    with tf.device("/GPU:0"):
        w = tf.Variable(kernel)
        with tf.GradientTape() as tape:
            loss = tf.reduce_mean(tf.square(tf.matmul(x, w) - y))
        grad = tape.gradient(loss, w)
        w.assign_sub(LEARNING_RATE * grad)
        placed = w.device
    out = {
        "assigned": assigned,
        "visible": len(gpus),
        "device": placed,
        "loss": float(loss),
        "kernel": w.numpy().tolist(),
    }
    return out


def main() -> None:
    spark = SparkSession.builder.appName("tfyarn-gpu-step").getOrCreate()
    result = tfyarn.run(spark, train, progress=False)
    print("gpu-step", {k: v for k, v in result.value.items() if k != "kernel"})
    spark.stop()


if __name__ == "__main__":
    main()
