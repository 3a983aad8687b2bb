"""tfyarn.run with InputMode.FILES on hdfs:// Parquet files: what each trainer read.

``files_app.py URL[,URL...] OUT_DIR``: two trainers share the files round robin; each
writes ``OUT_DIR/<task>.json`` with its files, its row count and the sum of column ``x``,
and the driver writes ``OUT_DIR/result.json`` (``RunResult.to_json``).
"""

import json
import sys
from pathlib import Path
from typing import Any

from pyspark.sql import SparkSession

import tfyarn

files, out = sys.argv[1].split(","), Path(sys.argv[2])
out.mkdir(parents=True, exist_ok=True)


def train(ctx: Any) -> dict[str, Any]:
    x = ctx.columns()["x"]
    seen = {"files": ctx.files, "rows": len(x), "total": float(x.sum())}
    (out / f"{ctx.task_id.replace(':', '-')}.json").write_text(json.dumps(seen))
    return seen


spark = SparkSession.builder.appName("tfyarn-hdfs-files").getOrCreate()
result = tfyarn.run(spark, train, workers=2, chief=False, data=files, progress=False)
(out / "result.json").write_text(json.dumps(result.to_json()))
spark.stop()
