"""TensorFlowOnSpark's API on tfyarn: change the imports, keep the program.

``from tensorflowonspark import TFCluster, TFNode`` becomes
``from tfyarn.compat.tfos import TFCluster, TFNode``; ``TFCluster.run``,
``cluster.train``/``inference``/``shutdown``, ``map_fun(args, ctx)`` with TensorFlowOnSpark's
context and ``TFNode.DataFeed`` behave as there, on tfyarn's launcher (one Spark barrier
stage, heartbeats, the Arrow data feed). Differences and the arguments tfyarn refuses are
listed in docs/migration.md.
"""

from __future__ import annotations

from tfyarn.compat.tfos import cluster as TFCluster  # TensorFlowOnSpark's module names
from tfyarn.compat.tfos import compat
from tfyarn.compat.tfos import node as TFNode
from tfyarn.compat.tfos import parallel as TFParallel
from tfyarn.compat.tfos.context import TFNodeContext
from tfyarn.compat.tfos.feed import DataFeed, FeedTimeoutError
from tfyarn.compat.tfos.settings import InputMode

__all__ = [
    "DataFeed",
    "FeedTimeoutError",
    "InputMode",
    "TFCluster",
    "TFNode",
    "TFNodeContext",
    "TFParallel",
    "compat",
]
