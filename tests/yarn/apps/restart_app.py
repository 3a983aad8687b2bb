"""The session's yarn-client application: an InputMode.FILES job, then the fault job.

``restart_app.py MARKS OUT_JSON FILES FILES_OUT``, three jobs in one YARN application (its
executors, their localised environment and TensorFlow import serve all three):

1. FILES (comma-separated hdfs:// Parquet URLs) read by two trainers round robin
   (``files_app.train``, results under FILES_OUT), for tests/yarn/test_hdfs.py;
2. the shared fault job (tests/integration/fault_job.py) uninterrupted;
3. the fault job again with restarts and checkpoints (on HDFS, by default), while the
   test kills the container of worker:1's executor through the ResourceManager once
   ``MARKS/faulted/worker-1.a1`` shows it past the strike step.

Writes both fault runs' results (``RunResult.to_json``) to OUT_JSON.
"""

import json
import sys
from pathlib import Path

from pyspark.sql import SparkSession

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "integration"))
sys.path.insert(0, str(Path(__file__).resolve().parent))
import fault_job
import files_app

import tfyarn

marks, out = Path(sys.argv[1]), Path(sys.argv[2])
files, files_out = sys.argv[3].split(","), Path(sys.argv[4])
marks.mkdir(parents=True, exist_ok=True)
files_out.mkdir(parents=True, exist_ok=True)
spark = SparkSession.builder.appName("tfyarn-yarn-restart").getOrCreate()
read = tfyarn.run(
    spark, files_app.train_fn(str(files_out)), workers=2, chief=False, data=files, progress=False
)
(files_out / "result.json").write_text(json.dumps(read.to_json()))
reference = fault_job.run(spark, marks / "reference")
# No model_dir, no checkpoint_dir: both default to the cluster file system (the dev
# YARN's HDFS), <fs.defaultFS>/user/<user>/tfyarn/<job>[/checkpoints].
faulted = fault_job.run(spark, marks / "faulted", max_restarts=2, checkpoint_every=fault_job.EVERY)
out.write_text(json.dumps({"reference": reference.to_json(), "faulted": faulted.to_json()}))
spark.stop()
