"""A tfyarn job whose worker:0 raises: the application must end FAILED with its traceback."""

from pyspark.sql import SparkSession

import tfyarn

MARK = "tfyarn-yarn-test deliberate failure"


def train(ctx: tfyarn.NodeContext) -> dict:
    if ctx.role == "worker" and ctx.index == 0:
        raise RuntimeError(f"{MARK} in {ctx.task_id}")
    return {"ok": True}


spark = SparkSession.builder.appName("tfyarn-failing-role").getOrCreate()
tfyarn.run(spark, train)
spark.stop()
