"""Spread a DataFrame over the training roles' partitions of the barrier stage.

The barrier stage has one partition per role; only the trainers' partitions may carry
rows. Each row gets a routing key chosen so that Spark's own hash partitioning
(``repartition(n, key)``: ``pmod(murmur3_hash(key, seed 42), n)``, the same function as
SQL ``hash()``) sends it to the intended partition. The keys are found by asking Spark
itself, so no hash function is re-implemented here, and every task checks on arrival that
its rows carry its key. Rows are dealt round robin within each input partition, so each
trainer gets the same number of rows up to one per input partition.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from tfyarn.errors import ConfigError

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

__all__ = ["KEY_COLUMN", "routing_keys", "spread"]

#: The routing column added to the data; dropped again in the executors.
KEY_COLUMN = "_tfyarn_route"


def routing_keys(spark: SparkSession, num_partitions: int) -> list[int]:
    """For each partition ``p`` of ``num_partitions``, a long key that hashes to ``p``."""
    from pyspark.sql import functions as F

    candidates = 64 * num_partitions
    rows = (
        spark.range(0, candidates, numPartitions=1)
        .select("id", F.expr(f"pmod(hash(id), {num_partitions})").alias("p"))
        .collect()
    )
    keys: dict[int, int] = {}
    for row in rows:
        keys.setdefault(row.p, row.id)
    missing = [p for p in range(num_partitions) if p not in keys]
    if missing:  # 64 candidates per partition: practically impossible
        raise ConfigError(f"no routing key found for partitions {missing}")
    return [keys[p] for p in range(num_partitions)]


def spread(
    df: DataFrame, num_partitions: int, targets: Sequence[int], keys: Sequence[int]
) -> DataFrame:
    """Repartition ``df`` into ``num_partitions``, rows only in the ``targets`` partitions.

    Parameters
    ----------
    df : DataFrame
        The training data.
    num_partitions : int
        Partitions of the barrier stage (one per role).
    targets : sequence of int
        Partitions of the trainers, in trainer order.
    keys : sequence of int
        :func:`routing_keys` for ``num_partitions``.
    """
    from pyspark.sql import functions as F

    order = "_tfyarn_order"
    for taken in (KEY_COLUMN, order):
        if taken in df.columns:
            raise ConfigError(f"the DataFrame already has a column named {taken!r}; rename it")
    if not targets:
        raise ConfigError("the job has no training roles to receive data")
    # Cast: Spark hashes an int literal differently from the long the keys were found as.
    target_keys = F.array(*[F.lit(keys[t]).cast("long") for t in targets])
    # The row's place in the input (partition index and position): deterministic for the
    # same input, unlike the order a shuffle delivers rows in (Spark fetches map outputs
    # in random order). Sorting on it gives every run and every restarted attempt the
    # same shard in the same order, so a resumed feed skips exactly the rows it had seen.
    ordered = df.withColumn(order, F.monotonically_increasing_id())
    slot = F.pmod(F.col(order), F.lit(len(targets))).cast("int") + 1
    routed = ordered.withColumn(KEY_COLUMN, F.element_at(target_keys, slot))
    return routed.repartition(num_partitions, KEY_COLUMN).sortWithinPartitions(order).drop(order)
