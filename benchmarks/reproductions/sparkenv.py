"""The Spark side every reproduction shares: a local cluster of separate executor JVMs.

Each part starts its own ``local-cluster[N,1,MB]`` application (N executors of one core,
as on a YARN cluster with one core per container) and stops it when done, so that parts
do not share executors and the Spark start-up time can be measured and reported.
"""

from __future__ import annotations

import os
import platform
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from types import ModuleType
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

__all__ = ["ONE_THREAD_ENV", "local_cluster", "ship_by_value", "versions"]

#: Environment for executors and role processes: one BLAS/TF thread each, so that N
#: executors on N cores do not oversubscribe the CPU (the same for tfyarn and MLlib).
ONE_THREAD_ENV: dict[str, str] = {
    "OMP_NUM_THREADS": "1",
    "OPENBLAS_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
    "TF_NUM_INTRAOP_THREADS": "1",
    "TF_NUM_INTEROP_THREADS": "1",
    "TF_CPP_MIN_LOG_LEVEL": "3",
    "KERAS_BACKEND": "tensorflow",
}


def ship_by_value(module: ModuleType) -> None:
    """Pickle ``module``'s functions by value, for tfyarn and for PySpark's own tasks.

    Executors do not have ``benchmarks/`` on their path; tfyarn pickles ``train_fn`` with
    ``cloudpickle`` and PySpark with its vendored copy, so both are told.
    """
    import cloudpickle
    from pyspark import cloudpickle as spark_cloudpickle

    cloudpickle.register_pickle_by_value(module)
    spark_cloudpickle.register_pickle_by_value(module)


@contextmanager
def local_cluster(
    name: str,
    executors: int,
    *,
    executor_memory_mb: int = 1024,
    driver_memory: str = "2g",
    conf: Mapping[str, str] | None = None,
) -> Iterator[tuple[SparkSession, float]]:
    """Start a ``local-cluster`` Spark application; yield ``(session, start_seconds)``.

    ``start_seconds`` is the time from asking for the session to every executor being
    registered: the part of "end to end" that precedes the first job.
    """
    os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
    os.environ["PYSPARK_PYTHON"] = sys.executable
    os.environ["PYSPARK_DRIVER_PYTHON"] = sys.executable
    for key, value in ONE_THREAD_ENV.items():
        os.environ.setdefault(key, value)
    from pyspark.sql import SparkSession

    begun = time.monotonic()
    builder = (
        SparkSession.builder.master(f"local-cluster[{executors},1,{executor_memory_mb}]")
        .appName(f"tfyarn-reproduce-{name}")
        .config("spark.driver.host", "127.0.0.1")
        .config("spark.driver.memory", driver_memory)
        # local-cluster's third number is the worker's memory; the executor heap is this
        .config("spark.executor.memory", f"{executor_memory_mb}m")
        .config("spark.ui.enabled", "false")
        .config("spark.sql.shuffle.partitions", str(executors))
        .config("spark.task.maxFailures", "1")
        .config("spark.sql.execution.arrow.pyspark.enabled", "true")
    )
    for key, value in ONE_THREAD_ENV.items():
        builder = builder.config(f"spark.executorEnv.{key}", value)
    for key, value in (conf or {}).items():
        builder = builder.config(key, value)
    spark = builder.getOrCreate()
    spark.sparkContext.setLogLevel("ERROR")
    try:
        _wait_for_executors(spark, executors, timeout=180.0)
        yield spark, time.monotonic() - begun
    finally:
        spark.stop()


def _wait_for_executors(spark: SparkSession, n: int, timeout: float) -> None:
    """Block until ``n`` executors registered (local-cluster starts them lazily)."""
    from tfyarn.errors import AllocationError

    tracker = spark.sparkContext.statusTracker()
    deadline = time.monotonic() + timeout
    while len(tracker.getExecutorInfos()) - 1 < n:  # the driver is listed too
        if time.monotonic() > deadline:
            raise AllocationError(
                f"only {len(tracker.getExecutorInfos()) - 1} of {n} Spark executors started "
                f"within {timeout:.0f} s; is the machine out of memory?"
            )
        time.sleep(0.2)


def _java_version() -> str:
    try:
        out = subprocess.run(
            ["java", "-version"], capture_output=True, text=True, timeout=30, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    lines = (out.stderr or out.stdout).splitlines()
    return lines[0].strip() if lines else "unknown"


def versions() -> dict[str, Any]:
    """Machine and software versions the figures were measured with."""
    import numpy as np
    import pyspark

    import tfyarn

    info: dict[str, Any] = {
        "machine": f"{os.cpu_count()} cores, "
        f"{os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / 2**30:.0f} GiB",
        "cpu": _cpu_model(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "java": _java_version(),
        "pyspark": pyspark.__version__,
        "numpy": np.__version__,
        "tfyarn": tfyarn.__version__,
        # of the latest invocation; each table's "load avg" column is per measurement
        "load average at start (1, 5, 15 min)": " / ".join(f"{x:.1f}" for x in os.getloadavg()),
    }
    from importlib import metadata

    for dist in ("tensorflow-cpu", "tensorflow", "keras", "scikit-learn"):
        try:
            info[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
    info["blas (Spark)"] = _system_blas()
    return info


def _system_blas() -> str:
    """Which BLAS ``libblas.so.3`` (what Spark's native BLAS loads) resolves to."""
    for d in ("/usr/lib/x86_64-linux-gnu", "/usr/lib/aarch64-linux-gnu", "/usr/lib64", "/usr/lib"):
        p = os.path.join(d, "libblas.so.3")
        if os.path.exists(p):
            real = os.path.realpath(p)
            return "OpenBLAS" if "openblas" in real else f"reference ({real})"
    return "none found (MLlib uses its Java BLAS)"


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"
