"""Session-wide fixtures: one local Spark cluster of separate executor processes."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator

import pytest

#: Executors of the shared test cluster: enough for chief + 2 workers + 1 ps.
EXECUTORS = 4


@pytest.fixture(scope="session")
def spark() -> Iterator[object]:
    """A SparkSession on ``local-cluster[4,1,1024]``: 4 executor JVMs, 1 core each.

    Started once per test session; integration tests share it.
    """
    os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
    os.environ["PYSPARK_PYTHON"] = sys.executable
    os.environ["PYSPARK_DRIVER_PYTHON"] = sys.executable
    from pyspark.sql import SparkSession

    session = (
        SparkSession.builder.master(f"local-cluster[{EXECUTORS},1,1024]")
        .appName("tfyarn-tests")
        .config("spark.driver.host", "127.0.0.1")
        .config("spark.ui.enabled", "false")
        .config("spark.sql.shuffle.partitions", str(EXECUTORS))
        .config("spark.task.maxFailures", "1")
        .config("spark.executorEnv.TF_CPP_MIN_LOG_LEVEL", "2")
        .getOrCreate()
    )
    session.sparkContext.setLogLevel("ERROR")
    yield session
    session.stop()
