"""Sparse features kept sparse, from a Spark Vector column into a model's sparse input.

A hashed or TF-IDF feature vector of 2^18 entries with a few hundred non-zeros is 1 MB a
row made dense (what ``vector_to_array`` does): the feed, the exchange's memory and the
first layer's matmul would all pay for the zeros. When a model's one input is declared
sparse (``keras.Input(shape=(n,), sparse=True)``), :class:`~tfyarn.ml.KerasEstimator`
and :class:`~tfyarn.ml.KerasModel` keep the features sparse end to end, and Keras's
``Dense`` multiplies the sparse batch directly (a sparse-dense matmul):

* training (:func:`assemble_sparse`): the Vector column becomes two columns, the
  non-zeros' indices and values, padded to the data's largest count of non-zeros with
  ``(0, 0.0)``. Fixed-width columns are what tfyarn's Arrow feed memory-maps without
  copying; in the role, each batch becomes a ``tf.SparseTensor`` of shape
  ``(batch, n)`` with the padding dropped (:func:`sparse_batches`);
* scoring (:func:`sparse_parts`, :func:`csr_batches`): the unpadded lists travel to the
  Arrow UDF, which builds each batch's ``tf.SparseTensor`` from them.

Nothing is cut: a row keeps all its non-zeros (the padding width is the data's own
maximum, found in the same Spark pass that checks for nulls and NaNs).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from tfyarn.errors import ConfigError
from tfyarn.ml.columns import column_kind, with_labels

if TYPE_CHECKING:
    import pyarrow as pa
    import tensorflow as tf
    from pyspark.sql import Column, DataFrame

__all__ = [
    "INDICES",
    "VALUES",
    "assemble_sparse",
    "csr_batches",
    "sparse_batches",
    "sparse_parts",
    "sparse_width",
    "to_sparse_tensor",
    "validation_batches",
]

#: The padded columns :func:`assemble_sparse` adds.
INDICES = "__tfyarn_indices"
VALUES = "__tfyarn_values"


def sparse_width(model: Any) -> int:
    """``n`` for a model whose one input is ``keras.Input(shape=(n,), sparse=True)``; else 0.

    Raises
    ------
    ConfigError
        A sparse input whose shape is not ``(None, n)`` with ``n`` known, or a sparse
        input among several (a functional model with more inputs).
    """
    inputs = list(getattr(model, "inputs", None) or [])
    sparse = [i for i in inputs if getattr(i, "sparse", False)]
    if not sparse:
        return 0
    if len(inputs) > 1:
        raise ConfigError(
            "the model has a sparse input among several: tfyarn.ml feeds a sparse Vector "
            "column into a model with exactly one input (keras.Input(shape=(n,), sparse=True))"
        )
    shape = tuple(sparse[0].shape)
    if len(shape) != 2 or shape[1] is None:
        raise ConfigError(
            f"the model's sparse input has shape {shape}; give it the Vector's size: "
            "keras.Input(shape=(n,), sparse=True)"
        )
    return int(shape[1])


def sparse_parts(df: DataFrame, feature: str) -> Column:
    """``feature`` (a Vector column) as ``struct<indices: array<int>, values: array<float>>``.

    Sparse vectors give their own indices and values; dense ones their non-zeros. A
    Python UDF: Spark SQL cannot reach inside an ``ml.linalg`` vector without making it
    dense.
    """
    from pyspark.sql import functions as F

    def parts(vector: Any) -> tuple[list[int], list[float]] | None:
        from pyspark.ml.linalg import SparseVector

        if vector is None:
            return None
        if isinstance(vector, SparseVector):
            return vector.indices.tolist(), vector.values.tolist()
        dense = vector.toArray()
        nonzero = np.flatnonzero(dense)
        return nonzero.tolist(), dense[nonzero].tolist()

    udf = F.udf(parts, "indices array<int>, values array<float>")
    return udf(F.col(feature))


def assemble_sparse(
    df: DataFrame, features: Sequence[str], label: str | Sequence[str], width: int
) -> tuple[DataFrame, int]:
    """``df`` with :data:`INDICES`, :data:`VALUES` (padded) and the label column(s)
    (:func:`~tfyarn.ml.columns.with_labels`); and the padding.

    One Spark job first counts the feature column's nulls and NaNs and finds its largest
    index and count of non-zeros.

    Raises
    ------
    ConfigError
        Not exactly one feature column, one that is not a Vector, nulls or NaNs in it,
        or an index beyond the model's sparse input (``width``): each naming the column.
    """
    from pyspark.sql import functions as F

    if len(features) != 1:
        raise ConfigError(
            f"a model with a sparse input takes one Vector feature column, not {len(features)} "
            f"({', '.join(features)}): assemble them with VectorAssembler first"
        )
    feature = features[0]
    kind = column_kind(df.schema[feature].dataType)
    if kind != "vector":
        raise ConfigError(
            f"feature column {feature!r} has type {df.schema[feature].dataType.simpleString()}; "
            "a model with a sparse input takes an ml.linalg Vector column (e.g. HashingTF's "
            "or VectorAssembler's output)"
        )
    parts = "__tfyarn_sparse"
    with_parts = df.withColumn(parts, sparse_parts(df, feature))
    indices, values = F.col(f"{parts}.indices"), F.col(f"{parts}.values")
    stats = with_parts.agg(
        F.sum(F.col(parts).isNull().cast("int")).alias("nulls"),
        F.sum(F.exists(values, lambda v: F.isnan(v)).cast("int")).alias("nans"),
        F.max(F.size(indices)).alias("nonzeros"),
        F.max(F.array_max(indices)).alias("top"),
    ).first()
    if stats is None:  # an aggregate always has its one row
        raise ConfigError(f"no statistics came back for feature column {feature!r}")
    nulls, nans = int(stats["nulls"] or 0), int(stats["nans"] or 0)
    if nulls or nans:
        raise ConfigError(
            f"null or NaN values in {feature!r} ({nulls} null rows, {nans} rows with NaNs): "
            "drop or fill them in Spark first"
        )
    top = stats["top"]
    if top is not None and int(top) >= width:
        raise ConfigError(
            f"feature column {feature!r} has index {int(top)}, but the model's sparse input "
            f"takes {width} features: build it with keras.Input(shape=(size of the "
            "vectors,), sparse=True)"
        )
    pad = max(int(stats["nonzeros"] or 0), 1)
    missing = F.lit(pad) - F.size(indices)
    out = (
        with_parts.withColumn(INDICES, F.concat(indices, F.array_repeat(F.lit(0), missing)))
        .withColumn(VALUES, F.concat(values, F.array_repeat(F.lit(0.0).cast("float"), missing)))
        .drop(parts)
    )
    return with_labels(out, label), pad


def to_sparse_tensor(indices: tf.Tensor, values: tf.Tensor, width: int) -> tf.SparseTensor:
    """A batch of padded rows (``(batch, pad)`` indices and values) as a sparse batch.

    Padding and stored zeros are dropped; a Spark vector's indices ascend, so the result
    is in canonical (row-major) order.
    """
    import tensorflow as tf

    where = tf.where(tf.not_equal(values, 0))  # (non-zeros, 2): row and slot
    columns = tf.cast(tf.gather_nd(indices, where), tf.int64)
    rows = tf.shape(values, out_type=tf.int64)[0]
    return tf.SparseTensor(
        indices=tf.stack([where[:, 0], columns], axis=1),
        values=tf.gather_nd(values, where),
        dense_shape=tf.stack([rows, tf.constant(width, tf.int64)]),
    )


def sparse_batches(dataset: tf.data.Dataset, width: int) -> tf.data.Dataset:
    """``(features dict, labels)`` batches of padded columns -> ``(SparseTensor, labels)``.

    The labels pass through as they are: one tensor, or one per output of the model.
    """

    def convert(x: dict[str, tf.Tensor], y: Any) -> tuple[tf.SparseTensor, Any]:
        return to_sparse_tensor(x[INDICES], x[VALUES], width), y

    return dataset.map(convert)


def validation_batches(
    indices: np.ndarray, values: np.ndarray, labels: Any, batch_size: int, width: int
) -> tf.data.Dataset:
    """Held-out padded rows (collected on the driver) as sparse batches for ``model.fit``.

    ``labels``: one array, or a dict of them by output name (a model with several outputs).
    """
    import tensorflow as tf

    rows = tf.data.Dataset.from_tensor_slices(({INDICES: indices, VALUES: values}, labels))
    return sparse_batches(rows.batch(batch_size), width)


def csr_batches(parts: pa.StructArray, width: int, batch_size: int) -> Iterator[tf.SparseTensor]:
    """An Arrow batch of :func:`sparse_parts` structs as sparse batches of ``batch_size`` rows.

    Raises
    ------
    ConfigError
        A null row, or an index outside ``[0, width)``.
    """
    import tensorflow as tf

    if parts.null_count:
        raise ConfigError(
            f"{parts.null_count} rows have a null feature vector: drop or fill them first"
        )
    # flatten(), not field(): the children of a sliced struct array are not sliced.
    index_lists, value_lists = parts.flatten()
    # A list array's offsets are its own (sliced) ones; its values are the whole child.
    offsets = index_lists.offsets.to_numpy().astype(np.int64)
    columns = index_lists.values.to_numpy(zero_copy_only=False).astype(np.int64)
    values = value_lists.values.to_numpy(zero_copy_only=False).astype(np.float32)
    used = columns[offsets[0] : offsets[-1]]
    if len(used) and (used.min() < 0 or used.max() >= width):
        raise ConfigError(
            f"a feature vector has index {int(used.max())}, but the model's sparse input "
            f"takes {width} features"
        )
    for start in range(0, len(parts), batch_size):
        stop = min(start + batch_size, len(parts))
        lo, hi = offsets[start], offsets[stop]
        lengths = np.diff(offsets[start : stop + 1])
        rows = np.repeat(np.arange(stop - start, dtype=np.int64), lengths)
        yield tf.SparseTensor(
            indices=np.stack([rows, columns[lo:hi]], axis=1).reshape(-1, 2),
            values=values[lo:hi],
            dense_shape=(stop - start, width),
        )
