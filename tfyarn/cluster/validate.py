"""Checks made on the driver before anything starts, each failing fast with what to do.

What the driver can know, it checks here instead of letting the roles find out:

- the size of a static cluster (:func:`static_executor_limit`): ``local-cluster[N,...]``
  starts exactly N executors, a standalone application at most ``spark.cores.max /
  spark.executor.cores``, YARN without dynamic allocation ``spark.executor.instances``;
  a job of more roles fails at once instead of after ``allocation_timeout``;
- ``transport="rdma"`` where every executor runs on the driver's own host (local-cluster,
  a standalone cluster on this machine): the driver runs the very device probe the roles
  would (:func:`tfyarn.transport.select.probe`) and fails before any role starts. On other
  hosts (YARN, remote standalone workers) the driver cannot look at their devices without
  running code there, so each role checks its own host when it starts and a role without
  a device fails the job, naming itself and its host (the rdma profile declares the
  capability; ``tfyarn doctor`` on the nodes checks it);
- the data's column types (:func:`unfeedable_columns`): a decimal, date, map, struct or
  ``ml.linalg`` Vector column would fail every role at start-up, after the executors
  were taken.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from tfyarn.errors import AllocationError, ConfigError, TransportUnavailableError

if TYPE_CHECKING:
    from pyspark import SparkContext
    from pyspark.sql.types import DataType, StructType

__all__ = [
    "ClusterLimit",
    "check_capacity",
    "check_rdma_here",
    "check_spark_conf",
    "check_transport",
    "spark_stopped",
    "static_executor_limit",
    "unfeedable_columns",
    "wait_for_slots",
]

_LOCAL_CLUSTER = re.compile(r"^local-cluster\[\s*(\d+)\s*,")
_LOOPBACK = frozenset({"localhost", "localhost.localdomain", "::1", "ip6-localhost"})


@dataclass(frozen=True)
class ClusterLimit:
    """The most executors a static cluster will ever have, and the setting that says so.

    Parameters
    ----------
    executors : int
        The fixed (or maximum) executor count.
    reason : str
        The setting it comes from, as the user wrote it (for error messages).
    """

    executors: int
    reason: str

    def __post_init__(self) -> None:
        if self.executors < 0:
            raise ConfigError(f"an executor limit cannot be negative ({self.reason})")


def _int_setting(conf: Mapping[str, str], key: str) -> int | None:
    raw = conf.get(key)
    if raw is None or not raw.strip().isdigit():
        return None  # unset, or a value Spark itself will reject with its own error
    return int(raw)


def static_executor_limit(master: str, conf: Mapping[str, str]) -> ClusterLimit | None:
    """The executor count a cluster is fixed at from the start, or None where it can grow.

    Parameters
    ----------
    master : str
        ``spark.master``.
    conf : Mapping[str, str]
        The application's Spark settings.
    """
    match = _LOCAL_CLUSTER.match(master)
    if match:
        n = int(match.group(1))
        return ClusterLimit(n, f"{master} starts exactly {n}")
    dynamic = conf.get("spark.dynamicAllocation.enabled", "false").strip().lower() == "true"
    if master.startswith("spark://"):
        cores_max = _int_setting(conf, "spark.cores.max")
        per_executor = _int_setting(conf, "spark.executor.cores")
        if cores_max is not None and per_executor:
            return ClusterLimit(
                cores_max // per_executor,
                f"spark.cores.max={cores_max} / spark.executor.cores={per_executor}",
            )
    elif master == "yarn" and not dynamic:
        instances = _int_setting(conf, "spark.executor.instances")
        if instances is not None:
            return ClusterLimit(
                instances, f"spark.executor.instances={instances}, dynamic allocation off"
            )
    return None


def check_capacity(needed: int, limit: ClusterLimit | None) -> None:
    """Fail at once when a static cluster can never hold one executor per role.

    Raises
    ------
    AllocationError
        ``needed`` roles but ``limit`` says fewer executors will ever register.
    """
    if limit is None or limit.executors >= needed:
        return
    raise AllocationError(
        f"the job needs {needed} executors (one per role) but this cluster has a fixed size: "
        f"only {limit.executors} registered at most ({limit.reason}), so waiting cannot help. "
        "Ask for more (local-cluster[N,...], spark.cores.max, --num-executors / "
        "spark.executor.instances; tfyarn submit sizes them to the roles), or run fewer roles"
    )


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


def spark_stopped(sc: SparkContext) -> bool:
    """Whether the Spark application has ended (its SparkContext stopped).

    On YARN this is what a killed application looks like from a client-mode driver: the
    scheduler backend stops the context once the ResourceManager reports the end.
    """
    try:
        return bool(sc._jsc.sc().isStopped())
    except Exception:  # the JVM gateway itself is gone
        return True


def _check_running(sc: SparkContext) -> None:
    if spark_stopped(sc):
        raise AllocationError(
            "the Spark application has ended (its SparkContext is stopped: killed on YARN, "
            "or stopped by the program), so no attempt can start; submit the job again"
        )


def _slot_count(sc: SparkContext) -> int:
    """Task slots of the default resource profile, as the barrier scheduler counts them."""
    jsc = sc._jsc.sc()
    profile = jsc.resourceProfileManager().defaultResourceProfile()
    return int(jsc.maxNumConcurrentTasks(profile))


def wait_for_slots(sc: SparkContext, needed: int, timeout: float, least: int | None = None) -> int:
    """Wait until ``needed`` executors are registered, one slot each; return the count.

    With ``least``, fewer than ``needed`` but at least ``least`` after ``timeout`` is
    enough too (an elastic restart then runs smaller); that count is returned.

    Raises
    ------
    AllocationError
        Fewer executors than roles after ``timeout`` seconds; at once when the cluster's
        size is fixed below ``needed`` (:func:`static_executor_limit`), or when the Spark
        application has ended meanwhile (:func:`spark_stopped`).
    ConfigError
        Executors offer more than one task slot each (two roles could share one).
    """
    _check_running(sc)
    check_capacity(needed, static_executor_limit(sc.master or "", dict(sc.getConf().getAll())))
    deadline = time.monotonic() + timeout
    executors = _executor_count(sc)
    while executors < needed and time.monotonic() < deadline:
        time.sleep(0.5)
        _check_running(sc)
        executors = _executor_count(sc)
    if executors < needed and (least is None or executors < least):
        also = "" if least is None else f"; at least {least} with min_workers"
        raise AllocationError(
            f"the job needs {needed} executors (one per role{also}) but only {executors} "
            f"registered within {timeout:.0f} s. Ask for more (--num-executors / "
            "spark.executor.instances, or local-cluster[N,...]), or run fewer roles; "
            "allocation_timeout= waits longer"
        )
    slots = _slot_count(sc)
    if slots > executors:
        raise ConfigError(
            f"{executors} executors offer {slots} task slots: two roles could land in one "
            "executor. Set spark.task.cpus equal to spark.executor.cores so that each executor "
            "runs one task"
        )
    return executors


def _is_this_host(host: str, driver_host: str) -> bool:
    name = host.strip().lower().strip("[]")
    return name in _LOOPBACK or name.startswith("127.") or name == driver_host.strip().lower()


def check_rdma_here(
    executor_hosts: Sequence[str],
    driver_host: str,
    probe: Callable[[], tuple[Sequence[object], bool, str]],
) -> bool:
    """Decide ``transport="rdma"`` on the driver when every executor shares its host.

    Parameters
    ----------
    executor_hosts : sequence of str
        Hosts of the registered executors (the driver's own entry may be among them).
    driver_host : str
        ``spark.driver.host``.
    probe : callable
        :func:`tfyarn.transport.select.probe`, the roles' own device probe: (usable RDMA
        devices, native UCX built, a note on what is missing). Called only when every
        executor is on this host.

    Returns
    -------
    bool
        True when the driver decided (every executor is on its host, which has a
        device), False when the executors' hosts are elsewhere and only the roles can tell.

    Raises
    ------
    TransportUnavailableError
        Every executor runs on this host and it has no RDMA device.
    """
    if not executor_hosts or not all(_is_this_host(h, driver_host) for h in executor_hosts):
        return False
    devices, _have_ucx, note = probe()
    if not devices:
        found = f" ({note})" if note else ""
        raise TransportUnavailableError(
            f"transport='rdma' was requested but no executor host has an RDMA device: every "
            f"executor runs on this host ({driver_host}), which has none (InfiniBand/RoCE)"
            f"{found}; checked before starting any role. Run `tfyarn doctor`, or ask for "
            "transport='auto' or 'tcp'"
        )
    return True


def check_transport(sc: SparkContext, transport: str | None) -> None:
    """Check on the driver what it can know of the requested transport (rdma only).

    Call after :func:`wait_for_slots`, when the executors' hosts are known.
    """
    if transport is None or transport.strip().lower() != "rdma":
        return
    from tfyarn.transport.select import probe

    driver_host = sc.getConf().get("spark.driver.host", "127.0.0.1") or "127.0.0.1"
    hosts = [info.host for info in sc.statusTracker().getExecutorInfos()]
    if (sc.master or "").startswith("local-cluster"):
        hosts = [driver_host]  # every executor of a local cluster runs on this host
    check_rdma_here(hosts, driver_host, probe)


def _feedable(data_type: DataType) -> bool:
    """Whether the feed turns a column of ``data_type`` into NumPy (see tfyarn.node.feed)."""
    from pyspark.sql import types as t

    plain = (t.ByteType, t.ShortType, t.IntegerType, t.LongType, t.FloatType, t.DoubleType,
             t.BooleanType, t.StringType, t.BinaryType)  # fmt: skip
    if isinstance(data_type, plain):
        return True
    return isinstance(data_type, t.ArrayType) and _feedable(data_type.elementType)


def _cast_hint(name: str, data_type: DataType) -> str:
    from pyspark.sql import types as t

    if type(data_type).__name__ == "VectorUDT":
        return f"turn it into an array with pyspark.ml.functions.vector_to_array(df[{name!r}])"
    if isinstance(data_type, t.DecimalType):
        return f"cast it to a double: df.withColumn({name!r}, df[{name!r}].cast('double'))"
    return "cast it in Spark to a number, a string or an array of numbers"


def unfeedable_columns(schema: StructType) -> list[str]:
    """Why columns of ``schema`` cannot be fed to the roles, one line per column (pure).

    Fed are numbers (not decimals), booleans, strings, binary, and arrays of those
    (nested too); anything else would fail every role when it loads its shard.
    """
    return [
        f"column {field.name!r} has type {field.dataType.simpleString()}, which tfyarn "
        f"cannot feed to TensorFlow; {_cast_hint(field.name, field.dataType)}"
        for field in schema.fields
        if not _feedable(field.dataType)
    ]
