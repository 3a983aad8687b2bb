"""A job for the submit test: InputMode.FILES over Parquet files, no TensorFlow.

Usage: tfyarn submit ... files_job.py DATA_DIR
"""

from __future__ import annotations

import sys
from pathlib import Path

from pyspark.sql import SparkSession

import tfyarn


def train(ctx: tfyarn.NodeContext) -> dict:
    columns = ctx.columns()
    ctx.report(
        rows=len(columns["v"]),
        files=[Path(f).name for f in ctx.files],
        total=float(columns["v"].sum()),
    )
    return {"files": [Path(f).name for f in ctx.files], "rows": len(columns["v"])}


def main() -> None:
    files = sorted(str(p) for p in Path(sys.argv[1]).glob("*.parquet"))
    spark = SparkSession.builder.appName("tfyarn-files-job").getOrCreate()
    result = tfyarn.run(spark, train, data=files, progress=False)
    print("chief saw", result.value)
    spark.stop()


if __name__ == "__main__":
    main()
