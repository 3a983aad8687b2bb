"""The digits example, preceded by a probe of which Python the driver and executors run.

Submitted in cluster mode with ``--py-files examples/digits_ps.py``; the probe lines go to
the driver's stdout (the application master's container log). Each line gives the
interpreter, where tfyarn and the standard library were imported from, and which of the
host's Python files (``TFYARN_PROBE_HOST_FILES``, set for the driver's container) the
process can read: none, where the NodeManager hides the host's Python.
"""

import os
import sys

from pyspark.sql import SparkSession

# The arguments are the example's; its model goes to tfyarn.run's default model_dir, on
# the dev YARN's HDFS.

HOST_FILES = [p for p in os.environ.get("TFYARN_PROBE_HOST_FILES", "").split(os.pathsep) if p]


def probe(_: object = None) -> str:
    import tfyarn

    readable = [p for p in HOST_FILES if os.path.isfile(p) and os.path.getsize(p) > 0]
    return f"{sys.executable} {tfyarn.__file__} {os.__file__} {','.join(readable) or '-'}"


spark = SparkSession.builder.appName("tfyarn-digits-ps").getOrCreate()
sc = spark.sparkContext
n = int(sc.getConf().get("spark.executor.instances", "1"))
probes = sc.parallelize(range(4 * n), 4 * n).map(probe).collect()
print(f"env-probe driver={probe()}")
for line in sorted(set(probes)):
    print(f"env-probe executor={line}")

import digits_ps  # noqa: E402  (shipped with --py-files)

digits_ps.main()
