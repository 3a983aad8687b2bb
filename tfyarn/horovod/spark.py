"""``tfyarn.horovod.spark.run``: Horovod's Spark launcher, on tfyarn's launcher.

``run(fn, num_proc=N)`` runs ``fn(*args, **kwargs)`` once per rank, one rank per Spark
executor, as one tfyarn job with ``strategy="allreduce"`` (a barrier stage, heartbeats,
a failing rank stopping the job with its traceback), and returns every rank's return
value in rank order. ``hvd.init()`` inside ``fn`` attaches to the rank's tfyarn role.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from tfyarn.errors import ConfigError
from tfyarn.horovod._array_collectives import allgather_object_on
from tfyarn.horovod._state import bind_context

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

    from tfyarn.node.context import NodeContext

__all__ = ["run", "run_options"]

#: Horovod's environment fallback for ``start_timeout``.
START_TIMEOUT_ENV = "HOROVOD_SPARK_START_TIMEOUT"

#: tfyarn.run arguments that ``run`` sets from Horovod's own (not in ``tfyarn_options``).
_MAPPED = ("workers", "ps", "chief", "strategy", "allocation_timeout", "startup_timeout",
           "env", "progress", "interface")  # fmt: skip


def _rank_results(fn: Callable[..., Any], args: Sequence[Any], kwargs: Mapping[str, Any],
                  ctx: NodeContext) -> list[Any]:  # fmt: skip
    """One rank's ``train_fn``: run ``fn`` with ``ctx`` findable by ``hvd.init()``, then
    gather every rank's return value over the ring (rank 0's list becomes the job's)."""
    with bind_context(ctx):
        value = fn(*args, **kwargs)
    return allgather_object_on(ctx.strategy().collectives, value)


def run_options(
    num_proc: int | None = None,
    start_timeout: float | None = None,
    extra_mpi_args: str | None = None,
    env: Mapping[str, str] | None = None,
    stdout: Any = None,
    stderr: Any = None,
    verbose: int = 1,
    nics: Sequence[str] | None = None,
    prefix_output_with_timestamp: bool = False,
    executable: str | None = None,
    use_mpi: bool | None = None,
    use_gloo: bool | None = None,
    tfyarn_options: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The ``tfyarn.run`` keyword arguments for Horovod's ``run`` arguments (pure).

    ``num_proc`` may be None here; :func:`run` fills in the Spark default.

    Raises
    ------
    ConfigError
        An argument tfyarn cannot honour, named with what to do instead.
    """
    refusals = {
        "extra_mpi_args": (extra_mpi_args is not None, "tfyarn does not use MPI; leave it out"),
        "stdout": (stdout is not None, "each rank's output goes to its Spark executor's log "
                   "(tfyarn logs); leave it out"),
        "stderr": (stderr is not None, "each rank's output goes to its Spark executor's log "
                   "(tfyarn logs); leave it out"),
        "prefix_output_with_timestamp": (bool(prefix_output_with_timestamp),
                                         "rank output is not forwarded to the driver"),
        "executable": (executable is not None, "the ranks run Spark's Python "
                       "(PYSPARK_PYTHON); set that instead"),
        "use_mpi": (bool(use_mpi), "tfyarn does not use MPI: its own ring runs over its "
                    "transports (tfyarn_options={'transport': ...})"),
        "use_gloo": (bool(use_gloo), "tfyarn does not use Gloo: its own ring runs over its "
                     "transports (tfyarn_options={'transport': ...})"),
    }  # fmt: skip
    for name, (refused, hint) in refusals.items():
        if refused:
            raise ConfigError(f"tfyarn.horovod.spark.run({name}=...) is not supported: {hint}")
    if num_proc is not None and (not isinstance(num_proc, int) or num_proc < 1):
        raise ConfigError(f"num_proc must be a positive integer, got {num_proc!r}")
    options: dict[str, Any] = {
        "workers": num_proc, "ps": 0, "chief": False, "strategy": "allreduce",
        "progress": verbose >= 1,
    }  # fmt: skip
    if start_timeout is None and os.environ.get(START_TIMEOUT_ENV):
        start_timeout = float(os.environ[START_TIMEOUT_ENV])
    if start_timeout is not None:
        if start_timeout <= 0:
            raise ConfigError(f"start_timeout must be positive, got {start_timeout!r}")
        options["allocation_timeout"] = options["startup_timeout"] = float(start_timeout)
    if env:
        options["env"] = {str(k): str(v) for k, v in env.items()}
    if nics:
        names = sorted(nics)
        if len(names) > 1:
            raise ConfigError(
                f"nics={names}: tfyarn binds each rank to one interface; give one NIC "
                "(or a network, tfyarn_options={'interface': '10.0.0.0/8'})"
            )
        options["interface"] = names[0]
    extra = dict(tfyarn_options or {})
    clash = sorted(set(extra) & set(_MAPPED))
    if clash:
        raise ConfigError(
            f"tfyarn_options may not set {clash}: tfyarn.horovod.spark.run sets them from "
            "num_proc, start_timeout, env, verbose and nics (one rank per worker, no chief)"
        )
    return {**options, **extra}


def _session() -> SparkSession:
    from pyspark.sql import SparkSession

    active = SparkSession.getActiveSession()
    return active if active is not None else SparkSession.builder.getOrCreate()


def run(
    fn: Callable[..., Any],
    args: Sequence[Any] = (),
    kwargs: Mapping[str, Any] | None = None,
    num_proc: int | None = None,
    start_timeout: float | None = None,
    extra_mpi_args: str | None = None,
    env: Mapping[str, str] | None = None,
    stdout: Any = None,
    stderr: Any = None,
    verbose: int = 1,
    nics: Sequence[str] | None = None,
    prefix_output_with_timestamp: bool = False,
    executable: str | None = None,
    use_mpi: bool | None = None,
    use_gloo: bool | None = None,
    *,
    tfyarn_options: Mapping[str, Any] | None = None,
) -> list[Any]:
    """Run ``fn(*args, **kwargs)`` on ``num_proc`` ranks; their return values by rank.

    Parameters
    ----------
    fn : callable
        The Horovod program; it calls ``hvd.init()`` (``tfyarn.horovod.keras`` or
        ``tfyarn.horovod.tensorflow``). Pickled with cloudpickle.
    args, kwargs
        Its arguments.
    num_proc : int, optional
        Ranks, one per Spark executor; default ``spark.tfyarn.workers``, else Spark's
        default parallelism.
    start_timeout : float, optional
        Seconds to get the executors and to start every rank (tfyarn's
        ``allocation_timeout`` and ``startup_timeout``); default
        ``$HOROVOD_SPARK_START_TIMEOUT``, else tfyarn's defaults.
    env : mapping, optional
        Environment variables of the ranks' processes.
    verbose : int
        0: no live progress display; 1 or more: tfyarn's display.
    nics : collection of str, optional
        One network interface the ranks bind to (tfyarn's ``interface``).
    extra_mpi_args, stdout, stderr, prefix_output_with_timestamp, executable, use_mpi, use_gloo
        Only their defaults: anything else raises.
    tfyarn_options : mapping, optional
        More ``tfyarn.run`` arguments (``transport``, ``timeout``, ``max_restarts``,
        ``checkpoint_dir``, ``log_dir``, ``tensorboard``...).

    Returns
    -------
    list
        ``fn``'s return value on each rank, in rank order.

    Raises
    ------
    ConfigError
        An argument tfyarn cannot honour (before anything starts).
    RoleFailedError
        A rank failed: its name, host and traceback (as ``tfyarn.run`` raises them).
    """
    options = run_options(
        num_proc, start_timeout, extra_mpi_args, env, stdout, stderr, verbose, nics,
        prefix_output_with_timestamp, executable, use_mpi, use_gloo, tfyarn_options,
    )  # fmt: skip
    import tfyarn

    spark = _session()
    if (
        options["workers"] is None
        and spark.sparkContext.getConf().get("spark.tfyarn.workers", None) is None
    ):
        options["workers"] = spark.sparkContext.defaultParallelism
    train_fn = functools.partial(_rank_results, fn, tuple(args), dict(kwargs or {}))
    result = tfyarn.run(spark, train_fn, **options)
    return list(result.value)
