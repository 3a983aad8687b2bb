"""tfyarn.ml.sparse: padded rows and Arrow structs into sparse batches, checked against
the dense rows they stand for (NumPy)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa
import pytest

from tfyarn.errors import ConfigError
from tfyarn.ml.sparse import (
    INDICES,
    VALUES,
    csr_batches,
    sparse_batches,
    sparse_width,
    to_sparse_tensor,
    validation_batches,
)

WIDTH = 50
DENSE = np.array(
    [
        [0, 1.5, 0, 0, 2.0] + [0] * 45,
        [0] * 50,
        [3.0] + [0] * 48 + [-1.0],
    ],
    np.float32,
)


@pytest.fixture(scope="module")
def tf() -> Any:
    """TensorFlow, imported by the tests that need it (not when tests are collected)."""
    return pytest.importorskip("tensorflow")  # a dependency of the tf extra, installed in CI


def _padded(rows: np.ndarray, pad: int = 4) -> tuple[np.ndarray, np.ndarray]:
    indices = np.zeros((len(rows), pad), np.int32)
    values = np.zeros((len(rows), pad), np.float32)
    for r, row in enumerate(rows):
        nz = np.flatnonzero(row)
        indices[r, : len(nz)], values[r, : len(nz)] = nz, row[nz]
    return indices, values


def _parts(rows: np.ndarray) -> pa.StructArray:
    indices = [np.flatnonzero(row).tolist() for row in rows]
    values = [row[np.flatnonzero(row)].tolist() for row in rows]
    return pa.StructArray.from_arrays(
        [pa.array(indices, pa.list_(pa.int32())), pa.array(values, pa.list_(pa.float32()))],
        ["indices", "values"],
    )


def test_padded_rows_become_the_sparse_rows_they_stand_for(tf: Any) -> None:
    batch = to_sparse_tensor(*map(tf.constant, _padded(DENSE)), WIDTH)
    assert isinstance(batch, tf.SparseTensor)
    assert int(tf.size(batch.values)) == np.count_nonzero(DENSE)  # the padding dropped
    np.testing.assert_array_equal(tf.sparse.to_dense(batch).numpy(), DENSE)


def test_the_training_batches_stay_sparse(tf: Any) -> None:
    indices, values = _padded(DENSE)
    rows = tf.data.Dataset.from_tensor_slices(({INDICES: indices, VALUES: values}, [0, 1, 2]))
    dataset = sparse_batches(rows.batch(2), WIDTH)
    assert isinstance(dataset.element_spec[0], tf.SparseTensorSpec)
    got = np.concatenate([tf.sparse.to_dense(x).numpy() for x, _ in dataset])
    np.testing.assert_array_equal(got, DENSE)
    held = validation_batches(indices, values, np.arange(3), 2, WIDTH)
    assert isinstance(held.element_spec[0], tf.SparseTensorSpec)


@pytest.mark.parametrize("batch_size", [1, 2, 8])
def test_arrow_structs_become_sparse_batches_even_when_sliced(tf: Any, batch_size: int) -> None:
    rows = np.concatenate([DENSE, DENSE[::-1]])
    for start in (0, 2):  # a slice: its children are not sliced, its offsets are
        parts = _parts(rows).slice(start)
        got = [tf.sparse.to_dense(b).numpy() for b in csr_batches(parts, WIDTH, batch_size)]
        assert all(len(b) <= batch_size for b in got)
        np.testing.assert_array_equal(np.concatenate(got), rows[start:])


def test_bad_rows_are_refused_by_name(tf: Any) -> None:
    with pytest.raises(ConfigError, match="has index 49, but the model's sparse input takes 10"):
        list(csr_batches(_parts(DENSE), 10, 4))
    nulls = pa.StructArray.from_arrays(
        [pa.array([[1], None]), pa.array([[1.0], None])],
        ["indices", "values"],
        mask=pa.array([False, True]),
    )
    with pytest.raises(ConfigError, match="1 rows have a null feature vector"):
        list(csr_batches(nulls, WIDTH, 4))


def test_the_sparse_width_is_read_from_the_model(tf: Any) -> None:
    import keras

    dense = keras.Sequential([keras.Input((8,)), keras.layers.Dense(2)])
    assert sparse_width(dense) == 0
    inp = keras.Input((WIDTH,), sparse=True)
    assert sparse_width(keras.Model(inp, keras.layers.Dense(2)(inp))) == WIDTH
    other = keras.Input((3,))
    two = keras.Model([inp, other], keras.layers.Concatenate()([keras.layers.Dense(2)(inp), other]))
    with pytest.raises(ConfigError, match="sparse input among several"):
        sparse_width(two)
