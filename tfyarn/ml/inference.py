"""Scoring a DataFrame with a Keras model on the executors: :func:`score`.

Spark runs :func:`predict_array` in its Python workers as an Arrow UDF of the feature
column: only the features travel to Python, only the predictions come back. A Python
worker runs many tasks one after another
(``spark.python.worker.reuse``, on by default), so the model is loaded once per worker
and kept (:func:`_model`, keyed by the model's digest), never per batch. TensorFlow's
thread pools are sized to the task's CPUs (``spark.task.cpus``) before the first model
is loaded, so that several tasks on one executor do not each take every core.

:func:`inference` scores a DataFrame with any saved Keras model, without the Spark ML
API (what ``KerasModel.from_saved(...).transform(df)`` does).
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from tfyarn.errors import ConfigError
from tfyarn.ml.sparse import csr_batches
from tfyarn.node.feed import column_to_numpy

if TYPE_CHECKING:
    import pyarrow as pa
    from pyspark.sql import Column, DataFrame, SparkSession

__all__ = [
    "ScoringSpec",
    "inference",
    "model_from_bytes",
    "model_to_bytes",
    "predict_array",
    "score",
]

_LOADED: dict[str, Any] = {}
_LOCK = threading.Lock()


def model_to_bytes(model: Any) -> bytes:
    """A Keras model as the bytes of its ``.keras`` file (architecture and weights)."""
    with tempfile.TemporaryDirectory(prefix="tfyarn-model-") as folder:
        path = os.path.join(folder, "model.keras")
        model.save(path)
        with open(path, "rb") as saved:
            return saved.read()


def model_from_bytes(data: bytes, compile: bool = False) -> Any:
    """The Keras model saved in ``data`` (a ``.keras`` file's bytes)."""
    import keras

    with tempfile.TemporaryDirectory(prefix="tfyarn-model-") as folder:
        path = os.path.join(folder, "model.keras")
        with open(path, "wb") as out:
            out.write(data)
        return keras.models.load_model(path, compile=compile)


@dataclass(frozen=True)
class ScoringSpec:
    """How :func:`predict_array` scores: the model, and which outputs to add.

    Parameters
    ----------
    model : bytes
        The ``.keras`` file's bytes.
    prediction : str
        The output column: the class index (argmax) for a model with several outputs,
        the value itself for a model with one.
    raw_prediction : str
        Also add the model's outputs as ``array<float>`` under this name; empty: don't.
    batch_size : int
        Rows per ``model.predict_on_batch`` call.
    sparse_width : int
        The width of the model's sparse input, whose features arrive as
        :func:`~tfyarn.ml.sparse.sparse_parts` structs; 0: dense feature rows.
    inputs : int
        The model's inputs; above 1 the features arrive as structs of one array per
        input (:func:`~tfyarn.ml.columns.inputs_column`).
    """

    model: bytes
    prediction: str
    raw_prediction: str = ""
    batch_size: int = 1024
    sparse_width: int = 0
    inputs: int = 1

    @property
    def digest(self) -> str:
        return hashlib.sha256(self.model).hexdigest()


def _bound_threads() -> None:
    """Size TensorFlow's pools to this task's CPUs (only before TensorFlow starts)."""
    from pyspark import TaskContext

    context = TaskContext.get()
    cpus = context.cpus() if context is not None else os.cpu_count() or 1
    import tensorflow as tf

    try:
        tf.config.threading.set_intra_op_parallelism_threads(cpus)
        tf.config.threading.set_inter_op_parallelism_threads(cpus)
    except RuntimeError:  # TensorFlow already ran in this worker: its pools are set
        pass


def _model(spec: ScoringSpec) -> Any:
    """The model of ``spec``, loaded once per Python worker."""
    with _LOCK:
        model = _LOADED.get(spec.digest)
        if model is None:
            if not _LOADED:
                _bound_threads()
            model = _LOADED[spec.digest] = model_from_bytes(spec.model)
        return model


def predict_array(spec: ScoringSpec, features: pa.Array) -> pa.StructArray:
    """The Arrow UDF's body: a batch of feature rows -> ``{prediction, raw}`` per row."""
    import pyarrow as pa

    model = _model(spec)
    rows = len(features)
    batches: Iterable[Any]
    if spec.sparse_width:
        batches = csr_batches(features, spec.sparse_width, spec.batch_size)
    elif spec.inputs > 1:  # a struct of one array column per input
        xs = [
            np.asarray(column_to_numpy(f"input {i}", child), np.float32)
            for i, child in enumerate(features.flatten())
        ]
        batches = (
            [x[i : i + spec.batch_size] for x in xs] for i in range(0, rows, spec.batch_size)
        )
    else:
        x = np.asarray(column_to_numpy("features", features), np.float32)  # rows x width
        batches = (x[i : i + spec.batch_size] for i in range(0, rows, spec.batch_size))
    outputs = [np.asarray(model.predict_on_batch(batch)) for batch in batches]
    raw = np.concatenate(outputs) if outputs else np.zeros((0, 1), np.float32)
    raw = raw.reshape(rows, -1).astype(np.float32)
    if raw.shape[1] == 1:
        prediction = raw[:, 0].astype(np.float64)
    else:
        prediction = raw.argmax(axis=1).astype(np.float64)
    offsets = pa.array(np.arange(rows + 1, dtype=np.int32) * raw.shape[1])
    raw_lists = pa.ListArray.from_arrays(offsets, pa.array(raw.reshape(-1)))
    return pa.StructArray.from_arrays([pa.array(prediction), raw_lists], ["prediction", "raw"])


def score(df: DataFrame, features: Column, spec: ScoringSpec) -> DataFrame:
    """``df`` with ``spec``'s prediction column(s), scored on the executors.

    An Arrow UDF of the feature expression only: just the features travel to Python and
    just the outputs come back (the other columns stay in the JVM). It is marked
    non-deterministic so that Spark calls it once per row although two columns read
    its result.
    """
    from pyspark.sql import functions as F

    def body(batch: pa.Array) -> pa.Array:
        return predict_array(spec, batch)

    udf = F.arrow_udf(
        body,
        "prediction double, raw array<float>",
        F.ArrowUDFType.SCALAR,
    ).asNondeterministic()
    scored = "__tfyarn_scored"
    out = df.withColumn(scored, udf(features))
    out = out.withColumn(spec.prediction, F.col(f"{scored}.prediction"))
    if spec.raw_prediction:
        out = out.withColumn(spec.raw_prediction, F.col(f"{scored}.raw"))
    return out.drop(scored)


def inference(
    spark: SparkSession,
    model_path: str,
    df: DataFrame,
    feature_cols: Sequence[str],
    *,
    prediction_col: str = "prediction",
    raw_prediction_col: str = "",
    batch_size: int = 1024,
) -> DataFrame:
    """Score ``df`` with the Keras model saved at ``model_path`` (local or ``hdfs://``).

    The model a tfyarn job saved (``ctx.save_model``), or any ``.keras`` file; the
    feature columns are assembled as :class:`~tfyarn.ml.KerasEstimator` does. ``spark``
    is the session of ``df`` (the scoring runs on its executors); the model file is
    read on the driver and shipped with the tasks.
    """
    from tfyarn.ml.estimator import KerasModel

    model = KerasModel.from_saved(
        model_path,
        feature_cols=feature_cols,
        prediction_col=prediction_col,
        raw_prediction_col=raw_prediction_col,
        batch_size=batch_size,
    )
    if df.sparkSession is not spark:
        raise ConfigError("inference: df belongs to another SparkSession than spark")
    return model.transform(df)
