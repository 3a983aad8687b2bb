"""Which GPU addresses Spark hands each task (from YARN's yarn.io/gpu allocation)."""

from pyspark import TaskContext
from pyspark.sql import SparkSession

spark = SparkSession.builder.appName("tfyarn-gpu-probe").getOrCreate()
sc = spark.sparkContext
n = int(sc.getConf().get("spark.executor.instances", "1"))
got = sc.parallelize(range(n), n).map(lambda _: TaskContext.get().resources()["gpu"].addresses)
print(f"gpu-probe addresses={sorted(tuple(a) for a in got.collect())}")
spark.stop()
