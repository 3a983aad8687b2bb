"""Checks made on the driver before anything starts, each failing fast with what to do."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from tfyarn.errors import AllocationError, ConfigError

if TYPE_CHECKING:
    from pyspark import SparkContext

__all__ = ["check_spark_conf", "wait_for_slots"]


def check_spark_conf(sc: SparkContext) -> None:
    """Reject Spark settings under which a barrier job of long-lived roles cannot run."""
    conf = sc.getConf()
    if conf.get("spark.dynamicAllocation.enabled", "false").lower() == "true":
        raise ConfigError(
            "spark.dynamicAllocation.enabled is true; barrier stages cannot run with dynamic "
            "allocation. Submit with --conf spark.dynamicAllocation.enabled=false and "
            "--num-executors (or spark.executor.instances) set to the number of roles"
        )
    master = sc.master or ""
    if master.startswith("local[") or master == "local":
        raise ConfigError(
            f"master {master!r} runs every task inside the driver process; tfyarn needs one "
            "executor process per role: use local-cluster[N,1,1024], a standalone master or YARN"
        )


def _executor_count(sc: SparkContext) -> int:
    """Registered executors (the driver's own entry excluded)."""
    return max(0, len(sc.statusTracker().getExecutorInfos()) - 1)


def _slot_count(sc: SparkContext) -> int:
    """Task slots of the default resource profile, as the barrier scheduler counts them."""
    jsc = sc._jsc.sc()  # type: ignore[attr-defined]
    profile = jsc.resourceProfileManager().defaultResourceProfile()
    return int(jsc.maxNumConcurrentTasks(profile))


def wait_for_slots(sc: SparkContext, needed: int, timeout: float) -> int:
    """Wait until ``needed`` executors are registered, one slot each; return the count.

    Raises
    ------
    AllocationError
        Fewer executors than roles after ``timeout`` seconds.
    ConfigError
        Executors offer more than one task slot each (two roles could share one).
    """
    deadline = time.monotonic() + timeout
    executors = _executor_count(sc)
    while executors < needed and time.monotonic() < deadline:
        time.sleep(0.5)
        executors = _executor_count(sc)
    if executors < needed:
        raise AllocationError(
            f"the job needs {needed} executors (one per role) but only {executors} registered "
            f"within {timeout:.0f} s. Ask for more (--num-executors / spark.executor.instances, "
            "or local-cluster[N,...]), or run fewer roles; allocation_timeout= waits longer"
        )
    slots = _slot_count(sc)
    if slots > executors:
        raise ConfigError(
            f"{executors} executors offer {slots} task slots: two roles could land in one "
            "executor. Set spark.task.cpus equal to spark.executor.cores so that each executor "
            "runs one task"
        )
    return executors
