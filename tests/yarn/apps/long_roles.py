"""A tfyarn job whose roles import TensorFlow and then run (bounded: 10 minutes) until killed."""

import time

from pyspark.sql import SparkSession

import tfyarn


def train(ctx: tfyarn.NodeContext) -> dict:
    import tensorflow as tf

    assert tf.constant(1.0).numpy() == 1.0  # TensorFlow is loaded and working in this role
    ctx.report(step=1)
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        time.sleep(0.5)
    return {"timed_out": True}


spark = SparkSession.builder.appName("tfyarn-long-roles").getOrCreate()
tfyarn.run(spark, train)
spark.stop()
