"""``tfyarn bench inference``: scoring a DataFrame with a Keras model, against baselines.

For each model (a small MLP of ~21k parameters, and one of ~9M), on a
local Spark cluster the benchmark starts itself (``--executors`` executors of one core),
all in the same run:

(a) **tfyarn**: ``KerasModel.transform(df)`` (:mod:`tfyarn.ml.inference`): an Arrow
    UDF of the feature column, the model loaded once per Python worker;
(b) **naive pandas UDF**: a ``pandas_udf`` that loads the model from its file for every
    Arrow batch (``spark.sql.execution.arrow.maxRecordsPerBatch`` rows), as often
    written;
(c) **single process**: ``model.predict`` in the driver's process on the same rows
    already collected into NumPy (no Spark), TensorFlow using every core;
(d) **Spark's ceiling**: an Arrow UDF that reads the same feature column and returns a
    constant without any model: the most rows/s any Python scorer gets from this Spark
    cluster (the Arrow transfer of the features), so a model much faster than that is
    bound by Spark, not by how it is called.

The Spark runs are forced with the ``noop`` writer (every row scored, nothing
collected); each is timed on its second full pass, after a first one started the
executors' Python workers and imported TensorFlow there. Reported per model: rows/s of
each, tfyarn's rows/s per executor core over the single process's per core, and tfyarn
over the naive UDF. Targets: >= 0.8 of the single process per core, >= 5x the naive
UDF. Writes ``inference.json`` and ``inference.md`` under ``--out``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd  # global: pandas_udf reads the type hints (strings here) in this module

from benchmarks.common import DEFAULT_OUT, machine_info, markdown_table

__all__ = ["TARGETS", "ModelRun", "add_arguments", "run"]

#: The issue's targets: tfyarn per core over the single process per core, and over the
#: naive pandas UDF.
TARGETS = {"per_core_vs_predict": 0.8, "vs_naive_udf": 5.0}
INPUTS, CLASSES = 256, 10


@dataclass(frozen=True)
class ModelRun:
    """One model's three measurements (rows/s) and the ratios the targets are about."""

    model: str
    params: int
    rows: int
    tfyarn_rows_per_s: float
    naive_udf_rows_per_s: float
    predict_rows_per_s: float
    spark_ceiling_rows_per_s: float
    executor_cores: int
    driver_cores: int

    @property
    def per_core_vs_predict(self) -> float:
        tfyarn = self.tfyarn_rows_per_s / self.executor_cores
        return tfyarn / (self.predict_rows_per_s / self.driver_cores)

    @property
    def vs_naive_udf(self) -> float:
        return self.tfyarn_rows_per_s / self.naive_udf_rows_per_s


def _mlp(hidden: int, layers: int) -> Any:
    import keras

    stack: list[Any] = [keras.Input(shape=(INPUTS,))]
    stack += [keras.layers.Dense(hidden, activation="relu") for _ in range(layers)]
    stack.append(keras.layers.Dense(CLASSES))
    return keras.Sequential(stack)


def _session(executors: int) -> Any:
    from pyspark.sql import SparkSession

    os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
    os.environ["PYSPARK_PYTHON"] = os.environ["PYSPARK_DRIVER_PYTHON"] = sys.executable
    session = (
        SparkSession.builder.master(f"local-cluster[{executors},1,2048]")
        .appName("tfyarn-bench-inference")
        .config("spark.driver.host", "127.0.0.1")
        .config("spark.ui.showConsoleProgress", "false")
        .config("spark.executorEnv.TF_CPP_MIN_LOG_LEVEL", "2")
        .getOrCreate()
    )
    session.sparkContext.setLogLevel("ERROR")
    return session


def _frame(spark: Any, rows: int, partitions: int) -> Any:
    from pyspark.sql import functions as F

    features = F.array(*[F.rand(seed=i).cast("float") for i in range(INPUTS)])
    return spark.range(rows, numPartitions=partitions).withColumn("x", features).cache()


def _timed_noop(df: Any) -> float:
    begun = time.perf_counter()
    df.write.format("noop").mode("overwrite").save()
    return time.perf_counter() - begun


def _warm_then_timed(df: Any) -> float:
    """Seconds of the second of two full passes: the first starts every executor's Python
    workers and imports TensorFlow there (once per worker for every way of scoring)."""
    _timed_noop(df)
    return _timed_noop(df)


def _naive_udf(path: str) -> Any:
    from pyspark.sql.functions import pandas_udf

    @pandas_udf("double")
    def predict(x: pd.Series) -> pd.Series:
        import keras

        model = keras.models.load_model(path, compile=False)  # every batch: the naive way
        batch = np.stack(x.to_numpy()).astype(np.float32)
        return pd.Series(model.predict(batch, verbose=0).argmax(axis=1).astype(np.float64))

    return predict


def _ceiling_udf() -> Any:
    import pyarrow as pa
    from pyspark.sql.functions import ArrowUDFType, arrow_udf

    def constant(x: pa.Array) -> pa.Array:
        return pa.array(np.zeros(len(x)))

    return arrow_udf(constant, "double", ArrowUDFType.SCALAR).asNondeterministic()


def measure(spark: Any, name: str, model: Any, rows: int, executors: int, folder: str) -> ModelRun:
    """The three measurements of one model (see the module's docstring)."""
    from pyspark.sql import functions as F

    from tfyarn.ml import KerasModel

    path = os.path.join(folder, f"{name}.keras")
    model.save(path)
    df = _frame(spark, rows, 2 * executors)
    df.count()  # materialise the cache: the features are not part of any timing
    scorer = KerasModel.from_saved(path, feature_cols=["x"], batch_size=4096)
    tfyarn_s = _warm_then_timed(scorer.transform(df))
    naive_s = _warm_then_timed(df.withColumn("prediction", _naive_udf(path)(F.col("x"))))
    ceiling_s = _warm_then_timed(df.withColumn("prediction", _ceiling_udf()(F.col("x"))))
    x = np.stack(df.select("x").toPandas()["x"].to_numpy()).astype(np.float32)
    model.predict(x[:4096], batch_size=4096, verbose=0)  # TensorFlow's first-call set-up
    begun = time.perf_counter()
    model.predict(x, batch_size=4096, verbose=0)
    predict_s = time.perf_counter() - begun
    df.unpersist()
    return ModelRun(
        model=name,
        params=int(model.count_params()),
        rows=rows,
        tfyarn_rows_per_s=rows / tfyarn_s,
        naive_udf_rows_per_s=rows / naive_s,
        predict_rows_per_s=rows / predict_s,
        spark_ceiling_rows_per_s=rows / ceiling_s,
        executor_cores=executors,
        driver_cores=os.cpu_count() or 1,
    )


def _report(runs: list[ModelRun]) -> str:
    rows = [
        (
            r.model,
            f"{r.params:,}",
            f"{r.rows:,}",
            f"{r.tfyarn_rows_per_s:,.0f}",
            f"{r.naive_udf_rows_per_s:,.0f}",
            f"{r.predict_rows_per_s:,.0f}",
            f"{r.spark_ceiling_rows_per_s:,.0f}",
            f"{r.per_core_vs_predict:.2f} (>= {TARGETS['per_core_vs_predict']})",
            f"{r.vs_naive_udf:.1f}x (>= {TARGETS['vs_naive_udf']:.0f}x)",
        )
        for r in runs
    ]
    headers = (
        "model",
        "params",
        "rows",
        "tfyarn rows/s",
        "naive UDF rows/s",
        "single-process predict rows/s",
        "Spark ceiling rows/s (no model)",
        "tfyarn per core / predict per core",
        "tfyarn / naive UDF",
    )
    return markdown_table(headers, rows)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output folder")
    parser.add_argument("--executors", type=int, default=2, help="executors of one core (2)")
    parser.add_argument("--rows", type=int, default=200_000, help="rows for the small MLP")
    parser.add_argument(
        "--big-rows", type=int, default=40_000, help="rows for the ~10M-parameter MLP"
    )


def run(args: argparse.Namespace) -> int:
    """Measure both models; write inference.json and inference.md; print the table."""
    spark = _session(args.executors)
    try:
        with tempfile.TemporaryDirectory(prefix="tfyarn-bench-inference-") as folder:
            runs = [
                measure(spark, "mlp-small", _mlp(64, 2), args.rows, args.executors, folder),
                measure(spark, "mlp-10M", _mlp(2048, 3), args.big_rows, args.executors, folder),
            ]
    finally:
        spark.stop()
    args.out.mkdir(parents=True, exist_ok=True)
    table = _report(runs)
    payload = {
        "machine": machine_info(),
        "targets": TARGETS,
        "runs": [
            {
                **asdict(r),
                "per_core_vs_predict": r.per_core_vs_predict,
                "vs_naive_udf": r.vs_naive_udf,
            }
            for r in runs
        ],
    }
    (args.out / "inference.json").write_text(json.dumps(payload, indent=2))
    (args.out / "inference.md").write_text("# tfyarn bench inference\n\n" + table + "\n")
    print(table)
    return 0
