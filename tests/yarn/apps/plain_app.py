"""A plain PySpark job (no tfyarn, no TensorFlow) for the dev YARN smoke test."""

import os
import sys

from pyspark.sql import SparkSession

spark = SparkSession.builder.appName("tfyarn-yarn-plain").getOrCreate()
sc = spark.sparkContext
pairs = sc.parallelize(range(100), 2).map(lambda x: (x % 2, x)).reduceByKey(lambda a, b: a + b)
print(f"plain-app sums={sorted(pairs.collect())}")
# Each partition reports its process: they must be executor processes, not the driver.
pids = sc.parallelize(range(2), 2).map(lambda _: os.getpid()).collect()
print(
    f"plain-app driver_pid={os.getpid()} executor_pids={sorted(set(pids))} python={sys.executable}"
)
spark.stop()
