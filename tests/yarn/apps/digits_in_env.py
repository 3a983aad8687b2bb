"""The digits example, preceded by a probe of which Python the driver and executors run.

Submitted in cluster mode with ``--py-files examples/digits_ps.py``; the probe lines go to
the driver's stdout (the application master's container log).
"""

import sys

from pyspark.sql import SparkSession

# The arguments are the example's; its model goes to tfyarn.run's default model_dir, on
# the dev YARN's HDFS.

spark = SparkSession.builder.appName("tfyarn-digits-ps").getOrCreate()
sc = spark.sparkContext
n = int(sc.getConf().get("spark.executor.instances", "1"))
pythons = sc.parallelize(range(4 * n), 4 * n).map(lambda _: sys.executable).collect()
print(f"env-probe driver={sys.executable}")
for python in sorted(set(pythons)):
    print(f"env-probe executor={python}")

import digits_ps  # noqa: E402  (shipped with --py-files)

digits_ps.main()
