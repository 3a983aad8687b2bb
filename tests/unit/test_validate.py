"""Driver-side checks that need no Spark: static cluster sizes, the rdma device check and
the data's column types."""

from __future__ import annotations

import time

import pytest

from tfyarn.cluster.validate import (
    ClusterLimit,
    check_capacity,
    check_rdma_here,
    static_executor_limit,
    unfeedable_columns,
)
from tfyarn.errors import AllocationError, ConfigError, TransportUnavailableError


@pytest.mark.parametrize(
    ("master", "conf", "expected"),
    [
        (
            "local-cluster[4,1,1024]",
            {},
            ClusterLimit(4, "local-cluster[4,1,1024] starts exactly 4"),
        ),
        (
            "spark://127.0.0.1:7077",
            {"spark.cores.max": "6", "spark.executor.cores": "2"},
            ClusterLimit(3, "spark.cores.max=6 / spark.executor.cores=2"),
        ),
        (
            "yarn",
            {"spark.executor.instances": "3", "spark.dynamicAllocation.enabled": "false"},
            ClusterLimit(3, "spark.executor.instances=3, dynamic allocation off"),
        ),
        ("spark://h:7077", {"spark.executor.cores": "1"}, None),  # takes what workers offer
        (
            "yarn",
            {"spark.executor.instances": "3", "spark.dynamicAllocation.enabled": "true"},
            None,
        ),
        ("yarn", {}, None),
    ],
)
def test_static_executor_limit(master: str, conf: dict, expected: ClusterLimit | None) -> None:
    assert static_executor_limit(master, conf) == expected


def test_too_many_roles_on_a_static_cluster_fail_at_once_naming_the_setting() -> None:
    check_capacity(4, ClusterLimit(4, "x"))
    check_capacity(9, None)
    with pytest.raises(AllocationError) as err:
        check_capacity(5, static_executor_limit("local-cluster[4,1,1024]", {}))
    assert str(err.value) == (
        "the job needs 5 executors (one per role) but this cluster has a fixed size: only 4 "
        "registered at most (local-cluster[4,1,1024] starts exactly 4), so waiting cannot "
        "help. Ask for more (local-cluster[N,...], spark.cores.max, --num-executors / "
        "spark.executor.instances; tfyarn submit sizes them to the roles), or run fewer roles"
    )
    with pytest.raises(ConfigError, match="cannot be negative"):
        ClusterLimit(-1, "bad")


def _no_devices() -> tuple[list[object], bool, str]:
    return [], True, ""


def _explode() -> tuple[list[object], bool, str]:
    raise AssertionError("the probe must not run when executors are on other hosts")


def test_rdma_without_a_device_on_this_host_is_refused_before_any_role() -> None:
    started = time.monotonic()
    with pytest.raises(TransportUnavailableError) as err:
        check_rdma_here(["127.0.0.1", "localhost"], "127.0.0.1", _no_devices)
    assert time.monotonic() - started < 1
    assert str(err.value) == (
        "transport='rdma' was requested but no executor host has an RDMA device: every "
        "executor runs on this host (127.0.0.1), which has none (InfiniBand/RoCE); checked "
        "before starting any role. Run `tfyarn doctor`, or ask for transport='auto' or 'tcp'"
    )
    with pytest.raises(TransportUnavailableError, match=r"\(pyverbs missing\)"):
        check_rdma_here(["node1"], "node1", lambda: ([], False, "pyverbs missing"))


def test_rdma_is_left_to_the_roles_on_other_hosts_and_accepted_with_a_device() -> None:
    assert check_rdma_here(["127.0.0.1", "node7"], "127.0.0.1", _explode) is False
    assert check_rdma_here([], "127.0.0.1", _explode) is False
    assert check_rdma_here(["127.0.0.1"], "127.0.0.1", lambda: (["mlx5_0"], True, "")) is True


def test_columns_the_feed_cannot_take_are_named_with_the_cast_to_make() -> None:
    from pyspark.ml.linalg import VectorUDT
    from pyspark.sql import types as t

    schema = t.StructType([
        t.StructField("x", t.ArrayType(t.ArrayType(t.FloatType()))),
        t.StructField("y", t.LongType()),
        t.StructField("ok", t.BooleanType()),
        t.StructField("name", t.StringType()),
        t.StructField("price", t.DecimalType(23, 1)),
        t.StructField("features", VectorUDT()),
        t.StructField("when", t.TimestampType()),
        t.StructField("tags", t.MapType(t.StringType(), t.IntegerType())),
    ])  # fmt: skip
    assert unfeedable_columns(schema) == [
        "column 'price' has type decimal(23,1), which tfyarn cannot feed to TensorFlow; "
        "cast it to a double: df.withColumn('price', df['price'].cast('double'))",
        "column 'features' has type vector, which tfyarn cannot feed to TensorFlow; turn it "
        "into an array with pyspark.ml.functions.vector_to_array(df['features'])",
        "column 'when' has type timestamp, which tfyarn cannot feed to TensorFlow; cast it in "
        "Spark to a number, a string or an array of numbers",
        "column 'tags' has type map<string,int>, which tfyarn cannot feed to TensorFlow; cast "
        "it in Spark to a number, a string or an array of numbers",
    ]
