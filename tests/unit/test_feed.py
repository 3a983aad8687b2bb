"""The data feed: Arrow cache on disk, NumPy views without copies, equal step counts."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from tfyarn.errors import ConfigError, TFYarnError
from tfyarn.node import feed


def _batches(n: int, key: int | None = 7) -> list[pa.RecordBatch]:
    x = np.arange(n * 3, dtype=np.float32).reshape(n, 3)
    cols = {
        "x": pa.FixedSizeListArray.from_arrays(pa.array(x.reshape(-1)), 3),
        "v": pa.array([list(r) for r in x], type=pa.list_(pa.float32())),
        "y": pa.array(np.arange(n, dtype=np.int64)),
    }
    if key is not None:
        cols["_route"] = pa.array([key] * n, type=pa.int64())
    table = pa.table(cols)
    return table.to_batches(max_chunksize=max(1, n // 3))


def test_cache_round_trip_gives_views_of_the_mapped_file(tmp_path: Path) -> None:
    info = feed.write_cache(_batches(10), tmp_path / "d.arrow", key_column="_route", expected_key=7)
    assert info.rows == 10 and info.columns == ("x", "v", "y")
    cols = feed.load_columns(info.path)
    assert cols["x"].shape == (10, 3) and cols["v"].shape == (10, 3)
    np.testing.assert_array_equal(cols["x"], cols["v"])
    np.testing.assert_array_equal(cols["y"], np.arange(10))
    # zero copy: the arrays do not own their memory, they view the memory map
    for array in cols.values():
        assert not array.flags.owndata
        assert not array.flags.writeable


def test_rows_routed_to_the_wrong_partition_fail_loudly(tmp_path: Path) -> None:
    batches = _batches(6, key=7) + _batches(2, key=8)
    with pytest.raises(TFYarnError, match="2 of 8 rows were routed to the wrong role"):
        feed.write_cache(batches, tmp_path / "d.arrow", key_column="_route", expected_key=7)


def test_empty_partition_writes_an_empty_cache(tmp_path: Path) -> None:
    info = feed.write_cache([], tmp_path / "e.arrow")
    assert info.rows == 0


def test_ragged_and_null_columns_are_refused_with_the_column_name(tmp_path: Path) -> None:
    table = pa.table({"r": pa.array([[1.0], [1.0, 2.0]]), "n": pa.array([1.0, None])})
    path = tmp_path / "bad.arrow"
    feed.write_cache(table.select(["r"]).to_batches(), path)
    with pytest.raises(ConfigError, match="'r' holds arrays of different lengths"):
        feed.load_columns(path)
    feed.write_cache(table.select(["n"]).to_batches(), path)
    with pytest.raises(ConfigError, match="'n' has 1 null values"):
        feed.load_columns(path)


def test_steps_per_epoch_takes_the_longest_partition_when_synchronous() -> None:
    assert feed.steps_per_epoch([100, 90, 10], 32, synchronous=True) == 4
    assert feed.steps_per_epoch([100, 90, 10], 32, synchronous=False) == 7
    with pytest.raises(ConfigError, match="empty"):
        feed.steps_per_epoch([0, 0], 32, synchronous=True)


def test_dataset_yields_exactly_the_planned_full_batches(tmp_path: Path) -> None:
    info = feed.write_cache(_batches(10, key=None), tmp_path / "d.arrow")
    cols = feed.load_columns(info.path)
    ds = feed.make_dataset(cols, batch_size=4, steps=7, features="x", label="y", seed=1)
    batches = list(ds.as_numpy_iterator())
    assert len(batches) == 7
    assert all(x.shape == (4, 3) and y.shape == (4,) for x, y in batches)
    seen = np.concatenate([y for _, y in batches])
    assert set(seen.tolist()) == set(range(10))  # wrapped around, nothing dropped


def test_shard_files_round_robin_and_refuse_too_few() -> None:
    files = [f"f{i}" for i in range(5)]
    assert feed.shard_files(files, 1, 2) == ["f1", "f3"]
    with pytest.raises(ConfigError, match="5 input files cannot be shared by 6"):
        feed.shard_files(files, 0, 6)


def test_a_string_feature_column_is_named_with_its_type_before_keras(tmp_path: Path) -> None:
    table = pa.table(
        {
            "text": pa.array(["a b", "c d", "e f"]),
            "blob": pa.array([b"x", b"y", b"z"]),
            "n": pa.array([1.0, 2.0, 3.0]),
            "y": pa.array([0, 1, 0]),
        }
    )
    path = tmp_path / "s.arrow"
    feed.write_cache(table.to_batches(), path)
    cols = feed.load_columns(path)
    with pytest.raises(ConfigError) as err:
        feed.make_dataset(cols, batch_size=2, steps=1, features="text", label="y")
    assert str(err.value) == (
        "feature column 'text' has type string, but features= feeds a numeric model input "
        "(a vector column, or number columns stacked into float32). Turn it into numbers in "
        "Spark first (e.g. pyspark.ml.feature HashingTF, CountVectorizer or StringIndexer), "
        "or leave features= out to get every column by name, strings included, for a model "
        "that takes text"
    )
    with pytest.raises(ConfigError, match="feature column 'blob' has type binary, but"):
        feed.select_xy(cols, ["n", "blob"], "y")
    # numbers still stack; without features= strings come through by name
    x, y = feed.select_xy(cols, ["n"], "y")
    np.testing.assert_array_equal(y, [0, 1, 0])
    assert x.dtype == np.float32 and x.shape == (3, 1)
    assert list(feed.select_xy(cols, None, "y")[0]) == ["text", "blob", "n"]
