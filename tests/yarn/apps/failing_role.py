"""A tfyarn job whose worker:0 raises: the application must end FAILED with its traceback.

The message carries the GPUs the role was pinned to (``CUDA_VISIBLE_DEVICES``, which
tfyarn sets from Spark's task resources before the role starts).
"""

import os

from pyspark.sql import SparkSession

import tfyarn

MARK = "tfyarn-yarn-test deliberate failure"


def train(ctx: tfyarn.NodeContext) -> dict:
    if ctx.role == "worker" and ctx.index == 0:
        gpus = os.environ.get("CUDA_VISIBLE_DEVICES")
        raise RuntimeError(f"{MARK} in {ctx.task_id} (CUDA_VISIBLE_DEVICES={gpus})")
    return {"ok": True}


spark = SparkSession.builder.appName("tfyarn-failing-role").getOrCreate()
tfyarn.run(spark, train)
spark.stop()
