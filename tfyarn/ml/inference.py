"""Scoring a DataFrame with a Keras model on the executors: :func:`score`.

Spark runs :func:`predict_array` in its Python workers as an Arrow UDF of the feature
column: only the features travel to Python, only the predictions come back (one
prediction column per output of a model with several: :meth:`ScoringSpec.columns`). A Python
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
        The output column: the class index (argmax) for an output of several values,
        the value itself for an output of one. A model with several outputs gets one
        such column per output, ``<prediction>_<output name>`` (:meth:`columns`).
    raw_prediction : str
        Also add the model's outputs as ``array<float>`` under this name (per output:
        ``<raw_prediction>_<output name>``); empty: don't.
    batch_size : int
        Rows per ``model.predict_on_batch`` call.
    sparse_width : int
        The width of the model's sparse input, whose features arrive as
        :func:`~tfyarn.ml.sparse.sparse_parts` structs; 0: dense feature rows.
    inputs : int
        The model's inputs; above 1 the features arrive as structs of one array per
        input (:func:`~tfyarn.ml.columns.inputs_column`).
    outputs : tuple of str
        The names of a model's several outputs, in the order ``predict`` returns them
        (a dict-output model's keys); empty for a model with one output.
    """

    model: bytes
    prediction: str
    raw_prediction: str = ""
    batch_size: int = 1024
    sparse_width: int = 0
    inputs: int = 1
    outputs: tuple[str, ...] = ()

    @property
    def digest(self) -> str:
        return hashlib.sha256(self.model).hexdigest()

    def columns(self) -> list[tuple[str, str]]:
        """``(prediction column, raw column or "")`` per output of the model, in order.

        One output: ``[(prediction, raw_prediction)]``. Several: the output's name
        appended to each, ``prediction_<output name>`` and ``raw_<output name>``.
        """
        if not self.outputs:
            return [(self.prediction, self.raw_prediction)]
        raw = self.raw_prediction
        return [(f"{self.prediction}_{n}", f"{raw}_{n}" if raw else "") for n in self.outputs]


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


def _batches(spec: ScoringSpec, features: pa.Array) -> Iterable[Any]:
    """The model's input batches of ``spec.batch_size`` rows of an Arrow feature batch."""
    rows = len(features)
    if spec.sparse_width:
        return csr_batches(features, spec.sparse_width, spec.batch_size)
    if spec.inputs > 1:  # a struct of one array column per input
        xs = [
            np.asarray(column_to_numpy(f"input {i}", child), np.float32)
            for i, child in enumerate(features.flatten())
        ]
        return ([x[i : i + spec.batch_size] for x in xs] for i in range(0, rows, spec.batch_size))
    x = np.asarray(column_to_numpy("features", features), np.float32)  # rows x width
    return (x[i : i + spec.batch_size] for i in range(0, rows, spec.batch_size))


def _split_outputs(spec: ScoringSpec, predicted: Any) -> list[np.ndarray]:
    """One array per output of one ``predict_on_batch`` result (a list, a dict by name, or
    one array)."""
    if not spec.outputs:
        return [np.asarray(predicted)]
    if isinstance(predicted, dict):
        return [np.asarray(predicted[name]) for name in spec.outputs]
    return [np.asarray(p) for p in predicted]


def _output_fields(raw: np.ndarray, rows: int) -> tuple[pa.Array, pa.Array]:
    """``(prediction, raw)`` of one output: its value (one wide) or argmax, and its values."""
    import pyarrow as pa

    raw = raw.reshape(rows, -1).astype(np.float32)
    if raw.shape[1] == 1:
        prediction = raw[:, 0].astype(np.float64)
    else:
        prediction = raw.argmax(axis=1).astype(np.float64)
    offsets = pa.array(np.arange(rows + 1, dtype=np.int32) * raw.shape[1])
    return pa.array(prediction), pa.ListArray.from_arrays(offsets, pa.array(raw.reshape(-1)))


def _field_names(spec: ScoringSpec) -> list[str]:
    """The fields of :func:`predict_array`'s struct: ``prediction_<i>``, ``raw_<i>`` per output."""
    return [f"{kind}_{i}" for i in range(len(spec.columns())) for kind in ("prediction", "raw")]


def predict_array(spec: ScoringSpec, features: pa.Array) -> pa.StructArray:
    """The Arrow UDF's body: a batch of feature rows -> ``{prediction_i, raw_i}`` per row,
    one pair per output of the model (:meth:`ScoringSpec.columns`' order)."""
    import pyarrow as pa

    model = _model(spec)
    rows = len(features)
    outputs: list[list[np.ndarray]] = [[] for _ in spec.columns()]
    for batch in _batches(spec, features):
        parts = _split_outputs(spec, model.predict_on_batch(batch))
        for kept, part in zip(outputs, parts, strict=True):
            kept.append(part)
    arrays: list[pa.Array] = []
    for kept in outputs:
        raw = np.concatenate(kept) if kept else np.zeros((0, 1), np.float32)
        arrays.extend(_output_fields(raw, rows))
    return pa.StructArray.from_arrays(arrays, _field_names(spec))


def score(df: DataFrame, features: Column, spec: ScoringSpec) -> DataFrame:
    """``df`` with ``spec``'s prediction column(s), scored on the executors.

    An Arrow UDF of the feature expression only: just the features travel to Python and
    just the outputs come back (the other columns stay in the JVM). It is marked
    non-deterministic so that Spark calls it once per row although several columns read
    its result.
    """
    from pyspark.sql import functions as F

    def body(batch: pa.Array) -> pa.Array:
        return predict_array(spec, batch)

    names = _field_names(spec)
    schema = ", ".join(
        f"{name} {'double' if name.startswith('prediction') else 'array<float>'}" for name in names
    )
    udf = F.arrow_udf(body, schema, F.ArrowUDFType.SCALAR).asNondeterministic()
    scored = "__tfyarn_scored"
    out = df.withColumn(scored, udf(features))
    for i, (prediction, raw) in enumerate(spec.columns()):
        out = out.withColumn(prediction, F.col(f"{scored}.prediction_{i}"))
        if raw:
            out = out.withColumn(raw, F.col(f"{scored}.raw_{i}"))
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
    feature columns are assembled as :class:`~tfyarn.ml.KerasEstimator` does. A model
    with several outputs gets one column per output, ``<prediction_col>_<output name>``
    (and ``<raw_prediction_col>_<output name>``): see :meth:`ScoringSpec.columns`. ``spark``
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
