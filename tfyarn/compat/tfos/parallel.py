"""``TFParallel``: independent copies of a TensorFlow program, one per executor."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from tfyarn.compat.tfos.runner import RoleRunner
from tfyarn.compat.tfos.settings import layout
from tfyarn.errors import ConfigError

if TYPE_CHECKING:
    from pyspark import SparkContext

__all__ = ["run"]


def run(
    sc: SparkContext,
    map_fn: Callable[[Any, Any], Any],
    tf_args: Any,
    num_executors: int,
    use_barrier: bool = True,
    *,
    tfyarn_options: dict[str, Any] | None = None,
) -> Any:
    """Run ``map_fn(args, ctx)`` on ``num_executors`` executors at once; wait for them all.

    Each copy is a ``worker`` (``ctx.executor_id`` 0..N-1, ``ctx.num_workers`` N) and
    reads its own data, e.g. the ``ctx.executor_id``-th of N shards of the input files.
    Returns what worker 0's ``map_fn`` returned (TensorFlowOnSpark returned nothing).

    Parameters
    ----------
    sc : SparkContext
        The Spark context.
    map_fn : callable
        ``map_fn(args, ctx)``.
    tf_args : Any
        Passed as ``args``.
    num_executors : int
        Copies to run, one per executor.
    use_barrier : bool
        Must be True: tfyarn always starts the copies together as one barrier stage.
    tfyarn_options : dict, optional
        More ``tfyarn.run`` arguments (``timeout``, ``env``, ``model_dir``...).

    Raises
    ------
    ConfigError
        ``use_barrier=False``, or fewer than one executor.
    """
    if not use_barrier:
        raise ConfigError(
            "TFParallel.run(use_barrier=False): tfyarn always starts the copies together as "
            "one Spark barrier stage (needing num_executors free executors at once); drop "
            "use_barrier=False"
        )
    if num_executors < 1:
        raise ConfigError(f"TFParallel.run(num_executors={num_executors}): at least 1 is needed")
    import tfyarn
    from tfyarn.compat.tfos.cluster import _hadoop_fs, _session

    plan = layout(num_executors, 0)
    runner = RoleRunner(map_fn, tf_args, plan, _hadoop_fs(sc), None)
    options = {"strategy": None, **(tfyarn_options or {})}
    return tfyarn.run(
        _session(sc), runner, workers=num_executors, ps=0, chief=False, **options
    ).value
