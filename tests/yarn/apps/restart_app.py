"""The fault job of the local fault matrix, on YARN: a reference run, then a struck one.

``restart_app.py MARKS OUT_JSON``: runs the shared fault job (tests/integration/
fault_job.py) uninterrupted, then again with restarts and checkpoints (on HDFS, by
default), while the test
kills the container of worker:1's executor through the ResourceManager once
``MARKS/faulted/worker-1.a1`` shows it past the strike step. Writes both runs' results
(``RunResult.to_json``) to OUT_JSON.
"""

import json
import sys
from pathlib import Path

from pyspark.sql import SparkSession

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "integration"))
import fault_job

marks, out = Path(sys.argv[1]), Path(sys.argv[2])
marks.mkdir(parents=True, exist_ok=True)
spark = SparkSession.builder.appName("tfyarn-yarn-restart").getOrCreate()
reference = fault_job.run(spark, marks / "reference")
# No model_dir, no checkpoint_dir: both default to the cluster file system (the dev
# YARN's HDFS), <fs.defaultFS>/user/<user>/tfyarn/<job>[/checkpoints].
faulted = fault_job.run(spark, marks / "faulted", max_restarts=2, checkpoint_every=fault_job.EVERY)
out.write_text(json.dumps({"reference": reference.to_json(), "faulted": faulted.to_json()}))
spark.stop()
