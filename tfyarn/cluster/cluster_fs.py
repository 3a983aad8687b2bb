"""Where a job's files live on the cluster file system, decided once on the driver.

On YARN with HDFS the default ``model_dir`` is ``<fs.defaultFS>/user/<user>/tfyarn/<job>``:
on the cluster's file system, which every host and every later attempt sees, not a temp
folder on whichever host the chief ran on. Without a cluster file system (a local Spark
cluster, ``fs.defaultFS=file:///``) it stays a local temp folder.

The roles get the WebHDFS address of every NameNode the job's paths name, resolved here
from Spark's Hadoop configuration (the driver has the cluster's ``HADOOP_CONF_DIR``; an
executor's Python may not).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from tfyarn import storage

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

__all__ = ["default_model_dir", "role_storage_env", "spark_hadoop_conf"]


def spark_hadoop_conf(spark: SparkSession) -> storage.HadoopConf:
    """Read properties of Spark's Hadoop configuration (HADOOP_CONF_DIR plus spark.hadoop.*)."""
    # Spark exposes its Hadoop Configuration only through the JVM gateway.
    conf = spark.sparkContext._jsc.hadoopConfiguration()

    def lookup(name: str) -> str | None:
        value = conf.get(name)
        return None if value is None else str(value)

    return lookup


def default_model_dir(job_id: str, default_fs: str | None, user: str, temp_dir: str) -> str:
    """The model_dir of a run that names none (pure).

    ``<default_fs>/user/<user>/tfyarn/<job_id>`` on a cluster file system (hdfs://),
    else ``<temp_dir>/tfyarn-model-<job_id>``.
    """
    fs = (default_fs or "").strip()
    if urlsplit(fs).scheme in ("", "file"):
        return os.path.join(temp_dir, f"tfyarn-model-{job_id}")
    return f"{fs.rstrip('/')}/user/{user}/tfyarn/{job_id}"


def role_storage_env(paths: Sequence[str], conf: storage.HadoopConf) -> dict[str, str]:
    """Environment for the roles so they reach the NameNodes of ``paths`` (empty if none)."""
    return storage.endpoints_env([p for p in paths if p], conf=conf)
