"""The digits example, preceded by a probe of which Python the driver and executors run.

Submitted in cluster mode with ``--py-files examples/digits_ps.py``; the probe lines go to
the driver's stdout (the application master's container log).
"""

import sys
import tempfile

from pyspark.sql import SparkSession

# ``--model-tmp DIR`` (ours, first): where tfyarn.run's default model dir goes, so the test
# can find and remove the saved model; the other arguments are the example's.
if sys.argv[1:2] == ["--model-tmp"]:
    tempfile.tempdir = sys.argv[2]
    del sys.argv[1:3]

spark = SparkSession.builder.appName("tfyarn-digits-ps").getOrCreate()
sc = spark.sparkContext
n = int(sc.getConf().get("spark.executor.instances", "1"))
pythons = sc.parallelize(range(4 * n), 4 * n).map(lambda _: sys.executable).collect()
print(f"env-probe driver={sys.executable}")
for python in sorted(set(pythons)):
    print(f"env-probe executor={python}")

import digits_ps  # noqa: E402  (shipped with --py-files)

digits_ps.main()
