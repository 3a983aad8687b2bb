"""The data feed: a task's partition -> Arrow file on local disk -> NumPy views -> tf.data.

The barrier task writes the Arrow record batches of its partition into one Arrow IPC file
in the role's workspace (:func:`write_cache`), as a single contiguous record batch. The role
process memory-maps that file and takes NumPy views of its columns without copying
(:func:`load_columns`); later epochs read the same pages from the page cache instead of
going back to Spark.

Every trainer of a synchronous job must run the same number of steps, or the one with the
longest partition waits forever in its last all-reduce. :func:`steps_per_epoch` takes the
longest partition; shorter ones wrap around into their next pass (each row is seen at
least once per epoch, nothing is dropped).
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa

from tfyarn.errors import ConfigError, TFYarnError

if TYPE_CHECKING:
    import tensorflow as tf

__all__ = [
    "CacheInfo",
    "column_to_numpy",
    "load_columns",
    "make_dataset",
    "read_files",
    "shard_files",
    "steps_per_epoch",
    "unsharded",
    "write_cache",
]


@dataclass(frozen=True)
class CacheInfo:
    """What :func:`write_cache` wrote."""

    path: str
    rows: int
    columns: tuple[str, ...]


def write_cache(
    batches: Iterable[pa.RecordBatch],
    path: Path,
    *,
    key_column: str | None = None,
    expected_key: int | None = None,
) -> CacheInfo:
    """Write a partition's record batches to ``path`` as one contiguous Arrow batch.

    Parameters
    ----------
    batches : iterable of pyarrow.RecordBatch
        The partition, as Spark hands it to the task (always consumed to the end).
    path : Path
        Destination Arrow IPC file.
    key_column : str, optional
        The routing column the driver added; it is checked and dropped.
    expected_key : int, optional
        The routing key of this partition: every row must carry it, else the data went to
        the wrong role and the job fails instead of training on it.
    """
    received = list(batches)
    table = pa.Table.from_batches(received) if received else pa.table({})
    if key_column is not None and key_column in table.column_names:
        keys = table.column(key_column)
        if expected_key is not None and table.num_rows:
            import pyarrow.compute as pc

            wrong = table.num_rows - pc.sum(pc.equal(keys, expected_key)).as_py()
            if wrong:
                raise TFYarnError(
                    f"{wrong} of {table.num_rows} rows were routed to the wrong role; "
                    "Spark's hash partitioning did not place the data as planned "
                    "(was the DataFrame repartitioned by a custom rule?)"
                )
        table = table.drop_columns([key_column])
    table = table.combine_chunks()
    with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_file(sink, table.schema) as writer:
        for batch in table.to_batches():
            writer.write_batch(batch)
    return CacheInfo(str(path), table.num_rows, tuple(table.column_names))


def column_to_numpy(name: str, column: pa.Array) -> np.ndarray:
    """A NumPy view of an Arrow column without copying (scalars or equal-length lists)."""
    if column.null_count:
        raise ConfigError(
            f"column {name!r} has {column.null_count} null values; fill or drop them in Spark "
            "(e.g. df.na.drop()) before training"
        )
    kind = column.type
    if pa.types.is_fixed_size_list(kind):
        values = column.values.slice(column.offset * kind.list_size, len(column) * kind.list_size)
        return column_to_numpy(name, values).reshape(len(column), kind.list_size)
    if pa.types.is_list(kind) or pa.types.is_large_list(kind):
        offsets = column.offsets.to_numpy(zero_copy_only=True)
        lengths = np.diff(offsets)
        if len(lengths) and (lengths != lengths[0]).any():
            raise ConfigError(
                f"column {name!r} holds arrays of different lengths "
                f"({lengths.min()}..{lengths.max()}); tf.data needs one shape per column: "
                "pad them in Spark or use fixed-size vectors"
            )
        width = int(lengths[0]) if len(lengths) else 0
        start = int(offsets[0]) if len(offsets) else 0
        values = column.values.slice(start, len(column) * width)
        return column_to_numpy(name, values).reshape(len(column), width)
    if pa.types.is_integer(kind) or pa.types.is_floating(kind):
        return column.to_numpy(zero_copy_only=True)
    if pa.types.is_boolean(kind):
        return column.to_numpy(zero_copy_only=False)  # Arrow packs booleans as bits
    if pa.types.is_string(kind) or pa.types.is_large_string(kind) or pa.types.is_binary(kind):
        return np.asarray(column.to_pylist(), dtype=object)
    raise ConfigError(
        f"column {name!r} has type {kind}, which tfyarn cannot feed to TensorFlow; "
        "cast it in Spark to a number, a string or an array of numbers"
    )


def load_columns(path: str | os.PathLike[str]) -> dict[str, np.ndarray]:
    """Memory-map a cache file and return NumPy views of its columns (no copies).

    The views stay valid as long as they are referenced (they keep the mapping alive).
    """
    source = pa.memory_map(str(path), "r")
    reader = pa.ipc.open_file(source)
    if reader.num_record_batches == 0:
        return {name: np.empty((0,)) for name in reader.schema.names}
    if reader.num_record_batches != 1:
        table = reader.read_all().combine_chunks()
        batch = table.to_batches()[0] if table.num_rows else None
    else:
        batch = reader.get_batch(0)
    if batch is None:
        return {name: np.empty((0,)) for name in reader.schema.names}
    return {name: column_to_numpy(name, batch.column(name)) for name in batch.schema.names}


def steps_per_epoch(rows_per_trainer: Sequence[int], batch_size: int, *, synchronous: bool) -> int:
    """Steps in one epoch so that every trainer runs the same number of steps.

    Parameters
    ----------
    rows_per_trainer : sequence of int
        Rows each trainer holds.
    batch_size : int
        Per-trainer batch size.
    synchronous : bool
        True when all trainers step together (all-reduce, MultiWorkerMirrored): the
        longest partition decides, shorter ones wrap around. False for a parameter-server
        coordinator that hands steps to any free worker: the total decides.
    """
    if batch_size < 1:
        raise ConfigError(f"batch_size must be at least 1, got {batch_size}")
    if not rows_per_trainer or max(rows_per_trainer) == 0:
        raise ConfigError(
            "no trainer received any rows: the DataFrame (or file list) is empty; "
            "check the data passed to tfyarn.run(data=...)"
        )
    if synchronous:
        return math.ceil(max(rows_per_trainer) / batch_size)
    return math.ceil(sum(rows_per_trainer) / batch_size)


def _kind_of(array: np.ndarray) -> str:
    """The column's type as the user knows it from Spark/Arrow (``string``, ``binary``)."""
    if array.dtype != object:
        return array.dtype.name
    first = next(iter(array.reshape(-1)), None)
    return "binary" if isinstance(first, bytes | bytearray) else "string"


def _numeric_feature(name: str, array: np.ndarray) -> np.ndarray:
    """``array`` if a model's numeric input can take it, else an error naming the column."""
    if array.dtype.kind in "biuf":
        return array
    raise ConfigError(
        f"feature column {name!r} has type {_kind_of(array)}, but features= feeds a numeric "
        "model input (a vector column, or number columns stacked into float32). Turn it "
        "into numbers in Spark first (e.g. pyspark.ml.feature HashingTF, CountVectorizer or "
        "StringIndexer), or leave features= out to get every column by name, strings "
        "included, for a model that takes text"
    )


def select_xy(
    columns: Mapping[str, np.ndarray],
    features: str | Sequence[str] | None,
    label: str | None,
) -> Any:
    """Pick the model inputs from the columns: ``(x, y)``, ``x``, or the dict of all.

    Raises
    ------
    ConfigError
        A column is missing, or a ``features=`` column is not numeric (strings, binary):
        named with its type here rather than left to a shape error inside Keras.
    """

    def pick(name: str) -> np.ndarray:
        if name not in columns:
            raise ConfigError(
                f"column {name!r} is not in the data; columns are: {', '.join(columns)}"
            )
        return columns[name]

    if features is None and label is None:
        return dict(columns)
    if features is None:
        x: Any = {k: v for k, v in columns.items() if k != label}
    elif isinstance(features, str):
        x = _numeric_feature(features, pick(features))
    else:
        parts = [_numeric_feature(f, pick(f)) for f in features]
        x = np.stack([p.astype(np.float32, copy=False) for p in parts], axis=1)
    return x if label is None else (x, pick(label))


def make_dataset(
    columns: Mapping[str, np.ndarray],
    *,
    batch_size: int,
    steps: int,
    features: str | Sequence[str] | None = None,
    label: str | None = None,
    shuffle: bool = True,
    seed: int | None = None,
) -> tf.data.Dataset:
    """A tf.data pipeline of exactly ``steps`` full batches over the columns.

    The rows are repeated (reshuffled each pass when ``shuffle``) so that a trainer with
    fewer rows than the longest partition still yields ``steps`` batches.
    """
    import tensorflow as tf

    rows = len(next(iter(columns.values()))) if columns else 0
    if rows == 0:
        raise ConfigError(
            "this trainer received no rows; give the DataFrame more rows than trainers"
        )
    data = select_xy(columns, features, label)
    ds = tf.data.Dataset.from_tensor_slices(data)
    if shuffle:
        ds = ds.shuffle(rows, seed=seed, reshuffle_each_iteration=True)
    ds = ds.repeat().batch(batch_size, drop_remainder=True).take(steps).prefetch(2)
    return unsharded(ds)


def unsharded(ds: tf.data.Dataset) -> tf.data.Dataset:
    """``ds`` with TensorFlow's auto-sharding off: it already is this trainer's shard.

    Left on, ``MultiWorkerMirroredStrategy.experimental_distribute_dataset`` finds no
    files to shard by and falls back to sharding by element, feeding each worker every
    n-th batch of its own shard: the rest of its rows never trained on.
    """
    import tensorflow as tf

    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.OFF
    return ds.with_options(options)


def shard_files(files: Sequence[str], rank: int, size: int) -> list[str]:
    """Files of trainer ``rank`` out of ``size``: every ``size``-th file, round robin."""
    if size < 1 or not 0 <= rank < size:
        raise ConfigError(f"bad shard {rank} of {size}")
    if len(files) < size:
        raise ConfigError(
            f"{len(files)} input files cannot be shared by {size} trainers; "
            "give at least one file per trainer (or split the files)"
        )
    return list(files[rank::size])


#: Read-ahead of a remote input file (WebHDFS range reads): few requests per file.
_REMOTE_BLOCK = 16 * 2**20


def read_files(
    files: Sequence[str], env: Mapping[str, str] | None = None
) -> Iterator[pa.RecordBatch]:
    """Record batches of Parquet, Arrow IPC or CSV files, by file extension.

    Files are local paths or ``hdfs://`` URLs (read through :mod:`tfyarn.storage`, with
    ``env``'s ``$TFYARN_WEBHDFS``: the job's, which the driver filled in).
    """
    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq

    from tfyarn import storage

    for name in files:
        suffix = Path(name).suffix.lower()
        if suffix not in (".parquet", ".pq", ".arrow", ".feather", ".ipc", ".csv"):
            raise ConfigError(
                f"cannot read {name!r}: tfyarn reads .parquet, .arrow/.feather and .csv files "
                "(for TFRecord, use ctx.files with tf.data.TFRecordDataset)"
            )
        fs, path = storage.filesystem(name, env)
        if storage.is_local(name) and suffix in (".arrow", ".feather", ".ipc"):
            with pa.memory_map(path, "r") as mapped:
                yield from pa.ipc.open_file(mapped).read_all().to_batches()
            continue
        with fs.open(path, "rb", block_size=_REMOTE_BLOCK) as source:
            if suffix in (".parquet", ".pq"):
                yield from pq.read_table(source).to_batches()
            elif suffix == ".csv":
                yield from pacsv.read_csv(source).to_batches()
            else:
                yield from pa.ipc.open_file(source).read_all().to_batches()


def data_spec(columns: Mapping[str, np.ndarray]) -> dict[str, list[Any]]:
    """Per column: ``[numpy dtype name, per-row shape]``, for peers that must know the layout."""
    return {name: [array.dtype.name, list(array.shape[1:])] for name, array in columns.items()}
