"""The pure parts of the TensorFlowOnSpark layer: argument mapping, RDD elements <->
columns, and the DataFeed over a role's columns (no Spark, no TensorFlow)."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pyarrow as pa
import pytest

from tfyarn.compat.tfos import DataFeed, InputMode, TFCluster, TFNode, TFParallel
from tfyarn.compat.tfos.context import absolute_path
from tfyarn.compat.tfos.feed import FeedPlan, FeedSource
from tfyarn.compat.tfos.rows import (
    PARTITION_COLUMN,
    POSITION_COLUMN,
    RowLayout,
    layout_of,
    to_columns,
)
from tfyarn.compat.tfos.settings import (
    executor_id,
    layout,
    tfos_cluster_spec,
    tfos_tf_config,
    transport_for,
)
from tfyarn.errors import ConfigError
from tfyarn.node.feed import column_to_numpy

# -- argument mapping ---------------------------------------------------------------


def test_input_mode_has_tensorflowonsparks_values() -> None:
    assert InputMode.TENSORFLOW == 0 and InputMode.SPARK == 1
    assert TFCluster.InputMode is InputMode


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        ({"num_executors": 3, "num_ps": 0}, (3, 0, False, False, "")),
        ({"num_executors": 3, "num_ps": 1}, (2, 1, False, False, "")),
        ({"num_executors": 4, "num_ps": 1, "master_node": "chief"}, (2, 1, True, False, "chief")),
        ({"num_executors": 3, "num_ps": 0, "master_node": "master", "eval_node": True},
         (1, 0, True, True, "master")),
        ({"num_executors": 1, "num_ps": 0, "master_node": "chief"}, (0, 0, True, False, "chief")),
    ],
)  # fmt: skip
def test_layout_counts_every_role_in_num_executors(
    args: dict[str, Any], expected: tuple[Any, ...]
) -> None:
    plan = layout(**args)
    assert (plan.workers, plan.ps, plan.chief, plan.evaluator, plan.master_name) == expected
    assert plan.num_workers == plan.workers + int(plan.chief)


@pytest.mark.parametrize(
    ("args", "named"),
    [
        ({"num_executors": 2, "num_ps": 0, "driver_ps_nodes": True}, "driver_ps_nodes=True"),
        ({"num_executors": 2, "num_ps": 0, "master_node": "boss"}, "master_node='boss'"),
        ({"num_executors": 2, "num_ps": 2}, "num_executors=2"),
        (
            {"num_executors": 2, "num_ps": 1, "master_node": "chief", "eval_node": True},
            "num_executors=2",
        ),
        ({"num_executors": 2, "num_ps": 0, "queues": ["feed"]}, "queues="),
        ({"num_executors": 2, "num_ps": -1}, "num_ps=-1"),
    ],
)
def test_layout_refuses_what_tfyarn_cannot_honour(args: dict[str, Any], named: str) -> None:
    with pytest.raises(ConfigError, match=named.replace("(", r"\(").replace("[", r"\[")):
        layout(**args)


def test_executor_ids_follow_tensorflowonsparks_template_order() -> None:
    plan = layout(5, 1, master_node="chief", eval_node=True)  # ps, chief, evaluator, 2 workers
    ids = [
        executor_id(plan, role, i)
        for role, i in [("ps", 0), ("chief", 0), ("evaluator", 0), ("worker", 0), ("worker", 1)]
    ]
    assert ids == [0, 1, 2, 3, 4]


def test_master_naming_renames_the_chief_in_cluster_spec_and_tf_config() -> None:
    spec = {"chief": ["h:1"], "worker": ["h:2"]}
    config = json.dumps({"cluster": spec, "task": {"type": "chief", "index": 0}})
    assert tfos_cluster_spec(spec, "chief") == spec
    assert tfos_tf_config(config, "chief") == config
    renamed = json.loads(tfos_tf_config(config, "master"))
    assert renamed == {"cluster": {"master": ["h:1"], "worker": ["h:2"]},
                       "task": {"type": "master", "index": 0}}  # fmt: skip


@pytest.mark.parametrize(
    ("rdma", "protocol", "transport"),
    [
        (False, None, None),
        (False, "grpc", None),
        (True, None, "rdma"),
        (False, "rdma", "rdma"),
        (False, "grpc+verbs", "rdma"),
        (False, "ucx", "ucx"),
    ],
)
def test_rdma_maps_to_tfyarns_ucx_transport(
    rdma: bool, protocol: str | None, transport: str | None
) -> None:
    assert transport_for(rdma, protocol) == transport


def test_unknown_or_contradicting_protocols_are_refused() -> None:
    with pytest.raises(ConfigError, match="protocol='mpi'"):
        transport_for(False, "mpi")
    with pytest.raises(ConfigError, match="contradicts protocol='tcp'"):
        transport_for(True, "tcp")


def test_arguments_refused_without_a_cluster() -> None:
    with pytest.raises(ConfigError, match="use_barrier=False"):
        TFParallel.run(None, print, None, 2, use_barrier=False)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="rdma=True"):
        TFNode.start_cluster_server(None, rdma=True)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="driver_ps_nodes"):
        TFCluster.run(None, print, None, 2, 1, driver_ps_nodes=True)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="input_mode=7"):
        TFCluster.run(None, print, None, 2, 0, input_mode=7)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="reservation_timeout=0"):
        TFCluster.run(None, print, None, 2, 0, reservation_timeout=0)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="'workers'"):
        TFCluster.run(None, print, None, 2, 0, tfyarn_options={"workers": 3})  # type: ignore[arg-type]


def test_absolute_path_resolves_as_tensorflowonspark_does() -> None:
    assert absolute_path("data", "file:///", "/work") == "file:///work/data"
    assert absolute_path("/data", "file://", "/work") == "file:///data"
    assert absolute_path("hdfs://nn/x", "file://", "/w") == "hdfs://nn/x"
    assert absolute_path("/x", "hdfs://nn:8020", "/w") == "hdfs://nn:8020/x"
    assert absolute_path("x", "hdfs://nn:8020/", "/w").startswith("hdfs://nn:8020/user/")


# -- RDD elements <-> columns ---------------------------------------------------------


def _round_trip(elements: list[Any]) -> tuple[RowLayout, list[Any]]:
    """Elements through columns as Arrow holds them (as Spark would hand them to the role)."""
    row_layout = layout_of(elements[0])
    rows = [to_columns(row_layout, e) for e in elements]
    schema = row_layout.schema()
    table = {}
    for i, name in enumerate(row_layout.columns):
        arrow_type = _arrow_type(schema[name].dataType)
        table[name] = column_to_numpy(name, pa.array([r[i] for r in rows], type=arrow_type))
    back = [row_layout.element([table[c][i] for c in row_layout.columns]) for i in range(len(rows))]
    return row_layout, back


def _arrow_type(spark_type: Any) -> pa.DataType:
    from pyspark.sql.pandas.types import to_arrow_type

    return to_arrow_type(spark_type)


def test_tuples_of_arrays_and_numpy_labels_come_back_as_they_were() -> None:
    elements = [(np.arange(4, dtype=np.float32) + i, np.int64(i)) for i in range(3)]
    row_layout, back = _round_trip(elements)
    assert row_layout.container == "tuple"
    for (x, y), (bx, by) in zip(elements, back, strict=True):
        assert isinstance(bx, np.ndarray) and bx.dtype == np.float32
        np.testing.assert_array_equal(bx, x)
        assert isinstance(by, np.int64) and by == y


def test_plain_python_lists_and_scalars_come_back_as_they_were() -> None:
    elements = [[1.5 * i, i, f"s{i}", [[i, i + 1], [0, 1]], True, b"\x00"] for i in range(3)]
    row_layout, back = _round_trip(elements)
    assert row_layout.container == "list"
    assert back == elements
    assert [type(v) for v in back[0]] == [float, int, str, list, bool, bytes]


def test_a_list_of_numbers_is_one_field_and_a_bare_array_too() -> None:
    row_layout, back = _round_trip([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
    assert row_layout.container == "single" and back == [[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]]
    images = [np.full((2, 3), i, dtype=np.uint8) for i in range(2)]
    row_layout, back = _round_trip(images)
    assert row_layout.fields[0].shape == (2, 3)
    np.testing.assert_array_equal(back[1], images[1])
    assert back[1].dtype == np.uint8


@pytest.mark.parametrize(
    ("first", "bad", "message"),
    [
        ((np.zeros(3), 1), (np.zeros(4), 1), "same shape"),
        ((1, 2.0), (1,), "same fields"),
        ((1, "a"), (1, None), "None"),
    ],
)
def test_elements_that_do_not_match_the_first_are_refused(
    first: Any, bad: Any, message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        to_columns(layout_of(first), bad)


def test_unfeedable_fields_are_refused_with_what_to_do() -> None:
    with pytest.raises(ConfigError, match="dict"):
        layout_of(({"a": 1}, 2))
    with pytest.raises(ConfigError, match="arrays of numbers"):
        layout_of((np.array(["a", "b"]), 1))


# -- DataFeed over a role's columns ---------------------------------------------------


def _source(
    rows: int, *, train: bool = True, epochs: int = 1, per_epoch: int | None = None
) -> FeedSource:
    row_layout = layout_of((np.zeros(2, dtype=np.float32), 0))
    columns: dict[str, np.ndarray] = {
        "c0": np.arange(rows * 2, dtype=np.float32).reshape(rows, 2),
        "c1": np.arange(rows, dtype=np.int64),
    }
    if not train:
        columns[PARTITION_COLUMN] = np.arange(rows, dtype=np.int64) % 2
        columns[POSITION_COLUMN] = np.arange(rows, dtype=np.int64) // 2
    plan = FeedPlan(row_layout, train, epochs, 600.0)
    return FeedSource(plan, columns, per_epoch or rows, "worker:0")


def test_a_short_shard_wraps_to_the_longest_so_every_trainer_takes_as_many_batches() -> None:
    feed = DataFeed(_source(3, epochs=2, per_epoch=5))
    labels: list[int] = []
    batches = 0
    while not feed.should_stop():
        batch = feed.next_batch(4)
        assert isinstance(batch, list)
        labels += [int(item[1]) for item in batch]
        batches += 1
    assert labels == [0, 1, 2, 0, 1, 2, 0, 1, 2, 0]  # 2 epochs of 5 rows, from 3 rows
    assert batches == 3 and feed.next_batch(4) == []


def test_input_mapping_gives_a_dict_by_sorted_column_names() -> None:
    feed = DataFeed(_source(3), input_mapping={"b_label": "y", "a_image": "x"})
    batch = feed.next_batch(2)
    assert isinstance(batch, dict) and list(batch) == ["x", "y"]
    assert batch["y"] == [0, 1] and batch["x"][1].tolist() == [2.0, 3.0]


def test_terminate_stops_the_feed() -> None:
    feed = DataFeed(_source(10))
    feed.next_batch(2)
    feed.terminate()
    assert feed.should_stop() and feed.next_batch(2) == []


def test_inference_pairs_results_with_the_rows_they_belong_to() -> None:
    source = _source(5, train=False)
    feed = DataFeed(source, train_mode=False)
    while not feed.should_stop():
        batch = feed.next_batch(2)
        feed.batch_results([int(item[1]) * 10 for item in batch])
    assert source.results == [(0, 0, 0), (1, 0, 10), (0, 1, 20), (1, 1, 30), (0, 2, 40)]
    with pytest.raises(ConfigError, match="1 results but only 0 rows"):
        feed.batch_results([1])


def test_feeds_that_would_hang_in_tensorflowonspark_are_refused() -> None:
    with pytest.raises(ConfigError, match="train_mode=True"):
        DataFeed(_source(3, train=False), train_mode=True)
    with pytest.raises(ConfigError, match="qname_in='other'"):
        DataFeed(_source(3), qname_in="other")
    with pytest.raises(ConfigError, match="no fed data"):
        DataFeed(None)
    with pytest.raises(ConfigError, match=r"cluster\.inference"):
        DataFeed(_source(3)).batch_results([1])
