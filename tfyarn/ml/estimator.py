"""Spark ML's face of tfyarn: ``KerasEstimator.fit(df)`` -> ``KerasModel.transform(df)``.

:class:`KerasEstimator` is a ``pyspark.ml.Estimator``: ``fit(df)`` checks the columns,
assembles the features (:mod:`tfyarn.ml.columns`), trains the Keras model across the
executors with :func:`tfyarn.run` (tfyarn's exchange, ``allreduce`` by default, with its
restarts and checkpoints) and returns a :class:`KerasModel`. That is a
``pyspark.ml.Model``: ``transform(df)`` scores through Arrow on the executors
(:mod:`tfyarn.ml.inference`), and it saves and loads like any Spark ML model
(``model.save(path)``, ``KerasModel.load(path)``, inside a saved ``PipelineModel``
too), to local paths or HDFS. The estimator saves and loads as well
(``KerasEstimator.load(path)``, inside an unfitted ``Pipeline``): see
:class:`_KerasEstimatorWriter` for what goes where.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

import numpy as np
from pyspark import keyword_only
from pyspark.ml import Estimator, Model
from pyspark.ml.param import Param, Params, TypeConverters
from pyspark.ml.param.shared import HasLabelCol, HasPredictionCol, HasSeed
from pyspark.ml.util import (
    DefaultParamsReader,
    DefaultParamsWriter,
    MLReadable,
    MLReader,
    MLWritable,
    MLWriter,
)

from tfyarn import storage
from tfyarn.errors import ConfigError
from tfyarn.ml.columns import (
    FEATURES,
    LABEL,
    assemble,
    assemble_inputs,
    check_columns,
    features_column,
    find_bad_values,
    input_columns,
    inputs_column,
)
from tfyarn.ml.inference import ScoringSpec, model_from_bytes, model_to_bytes, score
from tfyarn.ml.sparse import (
    INDICES,
    VALUES,
    assemble_sparse,
    sparse_batches,
    sparse_parts,
    sparse_width,
    validation_batches,
)
from tfyarn.node.feed import column_to_numpy

if TYPE_CHECKING:
    from pyspark.sql import DataFrame

    from tfyarn.node.context import NodeContext

__all__ = ["KerasEstimator", "KerasModel"]

_MODEL_FILE = "model.keras"


class _ScoringParams(HasPredictionCol):
    """What both the estimator and the model take to score."""

    featureCols: Param[list[str]] = Param(
        Params._dummy(),
        "featureCols",
        "feature columns, in the model's input order: numbers, ml.linalg Vectors or arrays",
        typeConverter=TypeConverters.toListString,
    )
    rawPredictionCol: Param[str] = Param(
        Params._dummy(),
        "rawPredictionCol",
        "column of the model's outputs (array<float>); empty: not added",
        typeConverter=TypeConverters.toString,
    )
    inferenceBatchSize: Param[int] = Param(
        Params._dummy(),
        "inferenceBatchSize",
        "rows per predict call when scoring",
        typeConverter=TypeConverters.toInt,
    )

    #: What ``@keyword_only`` stores of the keyword arguments of ``__init__``/``setParams``.
    _input_kwargs: dict[str, Any]

    def __init__(self) -> None:
        super().__init__()
        self._setDefault(rawPredictionCol="", inferenceBatchSize=1024)

    def _spec(self, model: bytes) -> ScoringSpec:
        return ScoringSpec(
            model=model,
            prediction=self.getOrDefault(self.predictionCol),
            raw_prediction=self.getOrDefault(self.rawPredictionCol),
            batch_size=self.getOrDefault(self.inferenceBatchSize),
        )


@dataclass(frozen=True)
class _TrainingSpec:
    """What every trainer of a fit gets (pickled into the train function)."""

    model: bytes
    optimizer: Mapping[str, Any]
    loss: Any
    metrics: tuple[str, ...]
    batch_size: int
    epochs: int
    shuffle: bool
    seed: int
    #: The held-out rows: (features, labels), or (indices, values, labels) when sparse.
    validation: tuple[np.ndarray, ...] | None = None
    callbacks: tuple[Any, ...] = field(default=())
    #: The model's sparse input width (:mod:`tfyarn.ml.sparse`); 0: dense features.
    sparse_width: int = 0
    #: The model's inputs: above 1, one feature column each (:func:`assemble_inputs`).
    inputs: int = 1


def validation_arrays(
    assembled: DataFrame, columns: Sequence[str] = (FEATURES, LABEL)
) -> tuple[np.ndarray, ...]:
    r"""The held-out rows of an assembled frame (:func:`~tfyarn.ml.columns.assemble`,
    :func:`~tfyarn.ml.sparse.assemble_sparse`), collected to the driver as one array per
    column (``(features, labels)`` by default) for ``model.fit(validation_data=...)``."""
    rows = assembled.select(*columns).toArrow()
    return tuple(column_to_numpy(name, rows.column(name).combine_chunks()) for name in columns)


def _input_layout(model: Any, features: Sequence[str]) -> tuple[int, int]:
    """How ``model`` takes ``features``: ``(sparse width, inputs)``.

    One sparse input: ``(n, 1)``, fed one Vector column kept sparse. Several inputs:
    ``(0, k)``, one feature column per input, in the model's input order. Else ``(0, 1)``:
    the feature columns concatenated into the one input.

    Raises
    ------
    ConfigError
        A sparse input that is not the only one or has no width (see
        :func:`~tfyarn.ml.sparse.sparse_width`); several inputs and another number of
        feature columns; a sparse input and several feature columns.
    """
    width = sparse_width(model)
    if width:
        if len(features) != 1:
            raise ConfigError(
                f"the model's input is sparse: it takes one Vector column, not "
                f"{len(features)} ({', '.join(features)}); assemble them with VectorAssembler"
            )
        return width, 1
    inputs = list(getattr(model, "inputs", None) or [None])
    if len(inputs) > 1 and len(inputs) != len(features):
        names = ", ".join(str(getattr(i, "name", "?")) for i in inputs)
        raise ConfigError(
            f"the model takes {len(inputs)} inputs ({names}) and featureCols names "
            f"{len(features)} columns ({', '.join(features)}): give one column per input, "
            "in the model's input order"
        )
    return 0, len(inputs)


def _train(spec: _TrainingSpec) -> Callable[[NodeContext], Any]:
    """The train function of a fit: Keras ``model.fit`` on each trainer's shard."""

    def train(ctx: NodeContext) -> Any:
        import keras

        keras.utils.set_random_seed(spec.seed)
        strategy = ctx.strategy()
        model = model_from_bytes(spec.model)
        optimizer = keras.optimizers.deserialize(dict(spec.optimizer))
        model.compile(
            optimizer=strategy.distributed_optimizer(optimizer),
            loss=keras.losses.deserialize(spec.loss) if isinstance(spec.loss, dict) else spec.loss,
            metrics=list(spec.metrics),
        )
        one_column = not spec.sparse_width and spec.inputs == 1
        dataset = ctx.dataset(
            spec.batch_size,
            epochs=spec.epochs,
            # Else a dict of the columns: sparse indices and values, or one per input.
            features=FEATURES if one_column else None,
            label=LABEL,
            shuffle=spec.shuffle,
            seed=spec.seed,
        )
        validation: Any = spec.validation
        if spec.sparse_width:
            dataset = sparse_batches(dataset, spec.sparse_width)
            if validation is not None:
                indices, values, labels = validation
                validation = validation_batches(
                    indices, values, labels, spec.batch_size, spec.sparse_width
                )
        elif spec.inputs > 1:
            names = input_columns(spec.inputs)
            dataset = dataset.map(lambda x, y: (tuple(x[n] for n in names), y))
            if validation is not None:
                validation = (list(validation[:-1]), validation[-1])
        history = model.fit(
            dataset,
            epochs=spec.epochs,
            steps_per_epoch=ctx.steps_per_epoch(spec.batch_size),
            validation_data=validation,
            callbacks=[*strategy.callbacks(), ctx.keras_callback(), *spec.callbacks],
            verbose=0,
        )
        if not ctx.is_chief:
            return None
        return {"model": model_to_bytes(model), "history": history.history}

    return train


class KerasEstimator(Estimator, _ScoringParams, HasLabelCol, HasSeed, MLWritable, MLReadable):
    """Train a Keras model on a DataFrame across the executors (a Spark ML Estimator).

    Parameters (Spark ML ``Param``\\ s, set by keyword or ``setX``)
    ----------------------------------------------------------------
    model
        A Keras model (uncompiled is fine) or a function returning one.
    optimizer
        A Keras optimizer, its name (``"adam"``) or its config.
    loss
        A Keras loss, or its name.
    metrics
        Metric names (``["accuracy"]``).
    featureCols, labelCol
        The feature columns (numbers, ``ml.linalg`` Vectors or arrays, in the model's
        input order) and the label column.
    batchSize, epochs
        Per-trainer batch size, and passes over each trainer's shard.
    validation
        A fraction of the rows (0 < f < 1) held out for validation, or the name of a
        boolean column marking them; the held-out rows are collected to the driver and
        given to every trainer's ``model.fit(validation_data=...)``.
    callbacks
        More Keras callbacks for each trainer's ``model.fit``.
    workers, ps, strategy, strategyOptions, transport
        As :func:`tfyarn.run`'s (``workers`` 0: ``spark.tfyarn.workers``).
    maxRestarts, checkpointDir
        Restarts after a lost role, from the trainers' checkpoints (:func:`tfyarn.run`).
    shuffle, seed
        Reshuffle each shard every epoch, with this seed (also Keras' random seed).
    verbose
        Show the live progress of the roles.
    predictionCol, rawPredictionCol, inferenceBatchSize
        Carried to the :class:`KerasModel` for scoring.
    """

    model: Param[Any] = Param(Params._dummy(), "model", "a Keras model, or a function making one")
    optimizer: Param[Any] = Param(Params._dummy(), "optimizer", "Keras optimizer, name or config")
    loss: Param[Any] = Param(Params._dummy(), "loss", "Keras loss, or its name")
    metrics: Param[list[str]] = Param(
        Params._dummy(), "metrics", "metric names", typeConverter=TypeConverters.toListString
    )
    batchSize: Param[int] = Param(
        Params._dummy(), "batchSize", "per-trainer batch size", typeConverter=TypeConverters.toInt
    )
    epochs: Param[int] = Param(
        Params._dummy(), "epochs", "passes over each shard", typeConverter=TypeConverters.toInt
    )
    validation: Param[Any] = Param(
        Params._dummy(), "validation", "fraction of rows, or a boolean column, for validation"
    )
    callbacks: Param[list[Any]] = Param(Params._dummy(), "callbacks", "more Keras callbacks")
    workers: Param[int] = Param(
        Params._dummy(), "workers", "workers (0: spark.tfyarn.workers)", TypeConverters.toInt
    )
    ps: Param[int] = Param(Params._dummy(), "ps", "parameter servers", TypeConverters.toInt)
    strategy: Param[str] = Param(
        Params._dummy(), "strategy", "tfyarn exchange strategy", TypeConverters.toString
    )
    strategyOptions: Param[dict[str, Any]] = Param(
        Params._dummy(), "strategyOptions", "options of the strategy"
    )
    transport: Param[str] = Param(
        Params._dummy(), "transport", "tfyarn transport ('' : auto)", TypeConverters.toString
    )
    maxRestarts: Param[int] = Param(
        Params._dummy(), "maxRestarts", "restarts after a lost role", TypeConverters.toInt
    )
    checkpointDir: Param[str] = Param(
        Params._dummy(),
        "checkpointDir",
        "trainers' checkpoints ('': default)",
        TypeConverters.toString,
    )
    shuffle: Param[bool] = Param(
        Params._dummy(), "shuffle", "reshuffle every epoch", TypeConverters.toBoolean
    )
    verbose: Param[bool] = Param(
        Params._dummy(), "verbose", "show the roles' live progress", TypeConverters.toBoolean
    )

    @keyword_only
    def __init__(self, **kwargs: Any) -> None:
        super().__init__()
        self._setDefault(
            optimizer="adam",
            metrics=[],
            batchSize=32,
            epochs=1,
            validation=0.0,
            callbacks=[],
            workers=0,
            ps=0,
            strategy="allreduce",
            strategyOptions={},
            transport="",
            maxRestarts=0,
            checkpointDir="",
            shuffle=True,
            verbose=False,
            seed=0,
        )
        self._set(**self._input_kwargs)

    @keyword_only
    def setParams(self, **kwargs: Any) -> KerasEstimator:
        """Set any of the parameters by keyword."""
        return self._set(**self._input_kwargs)

    # -- fit -----------------------------------------------------------------------------

    def _keras_model(self) -> Any:
        if not self.isDefined(self.model):
            raise ConfigError("KerasEstimator needs model=: a Keras model or a function making one")
        made = self.getOrDefault(self.model)
        model = made() if callable(made) and not hasattr(made, "layers") else made
        if not hasattr(model, "save"):
            raise ConfigError(f"model= gave {type(model).__name__}, not a Keras model")
        return model

    def _validation(self, df: DataFrame) -> tuple[DataFrame, DataFrame | None]:
        from pyspark.sql import functions as F

        held = self.getOrDefault(self.validation)
        if isinstance(held, str):
            check_columns(df.schema, [held])
            return df.filter(~F.col(held)), df.filter(F.col(held))
        if not isinstance(held, int | float) or not 0 <= held < 1:
            raise ConfigError(
                f"validation must be a fraction 0 <= f < 1 or a boolean column, got {held!r}"
            )
        if held == 0:
            return df, None
        train, valid = df.randomSplit([1 - held, held], seed=self.getOrDefault(self.seed))
        return train, valid

    def _fit(self, dataset: DataFrame) -> KerasModel:
        import keras

        import tfyarn
        from tfyarn.exchange import STRATEGY_NAMES

        strategy = self.getOrDefault(self.strategy)
        if strategy not in STRATEGY_NAMES:
            raise ConfigError(
                f"KerasEstimator trains with one of tfyarn's exchange strategies "
                f"({', '.join(STRATEGY_NAMES)}), not {strategy!r}: Keras 3 model.fit does not "
                "run under TensorFlow's own ps/mwms strategies"
            )
        features = self.getOrDefault(self.featureCols) if self.isDefined(self.featureCols) else []
        label = self.getOrDefault(self.labelCol)
        check_columns(dataset.schema, features, [label])
        loss = self.getOrDefault(self.loss) if self.isDefined(self.loss) else None
        if loss is None:  # before any Spark job reads the data
            raise ConfigError("KerasEstimator needs loss=: a Keras loss or its name")
        model = self._keras_model()
        width, inputs = _input_layout(model, features)
        # A sparse column's nulls and NaNs are counted by assemble_sparse: made dense to
        # be checked here, a 2^18-wide vector would be 1 MB a row.
        find_bad_values(dataset, [label] if width else [*features, label])
        if width:  # kept sparse: tfyarn.ml.sparse
            assembled, _ = assemble_sparse(dataset, features, label, width)
            columns: tuple[str, ...] = (INDICES, VALUES, LABEL)
        elif inputs > 1:  # one feature column per input of a functional model
            assembled = assemble_inputs(dataset, features, label)
            columns = (*input_columns(inputs), LABEL)
        else:
            assembled, columns = assemble(dataset, features, label), (FEATURES, LABEL)
        train_df, valid_df = self._validation(assembled)
        validation = None if valid_df is None else validation_arrays(valid_df, columns)
        optimizer = self.getOrDefault(self.optimizer)
        spec = _TrainingSpec(
            model=model_to_bytes(model),
            optimizer=keras.optimizers.serialize(keras.optimizers.get(optimizer)),
            # A dict: the config a saved estimator kept (_KerasEstimatorWriter).
            loss=loss if isinstance(loss, str | dict) else keras.losses.serialize(loss),
            metrics=tuple(self.getOrDefault("metrics")),
            batch_size=self.getOrDefault(self.batchSize),
            epochs=self.getOrDefault(self.epochs),
            shuffle=self.getOrDefault(self.shuffle),
            seed=self.getOrDefault(self.seed),
            validation=validation,
            callbacks=tuple(self.getOrDefault("callbacks")),
            sparse_width=width,
            inputs=inputs,
        )
        result = tfyarn.run(
            dataset.sparkSession,
            _train(spec),
            workers=self.getOrDefault(self.workers) or None,
            ps=self.getOrDefault(self.ps),
            chief=False,
            strategy=strategy,
            strategy_options=dict(self.getOrDefault("strategyOptions")),
            transport=self.getOrDefault(self.transport) or None,
            data=train_df.select(*columns),
            progress=self.getOrDefault(self.verbose),
            max_restarts=self.getOrDefault(self.maxRestarts),
            checkpoint_dir=self.getOrDefault(self.checkpointDir) or None,
        )
        fitted = KerasModel(
            featureCols=features,
            predictionCol=self.getOrDefault(self.predictionCol),
            rawPredictionCol=self.getOrDefault(self.rawPredictionCol),
            inferenceBatchSize=self.getOrDefault(self.inferenceBatchSize),
        )
        fitted._model_bytes = result.value["model"]
        fitted.history = dict(result.value["history"])
        fitted.run_result = result
        return self._copyValues(fitted)

    # -- save and load -------------------------------------------------------------------

    def write(self) -> MLWriter:
        return _KerasEstimatorWriter(self)

    @classmethod
    def read(cls) -> MLReader[KerasEstimator]:
        return _KerasEstimatorReader()


class KerasModel(Model, _ScoringParams, MLWritable, MLReadable):
    """A trained Keras model as a Spark ML Transformer (see :class:`KerasEstimator`).

    Attributes
    ----------
    history : dict
        ``model.fit``'s history (per epoch, averaged over the trainers by the
        exchange's callbacks); empty for a model loaded from a file.
    run_result : RunResult or None
        The :func:`tfyarn.run` result of the fit (None when loaded).
    """

    @keyword_only
    def __init__(self, **kwargs: Any) -> None:
        super().__init__()
        self._model_bytes: bytes = b""
        # (hash of the model bytes, sparse width, inputs): see _input_layout
        self._layout: tuple[int, int, int] | None = None
        self.history: dict[str, Any] = {}
        self.run_result: Any = None
        self._set(**self._input_kwargs)

    @classmethod
    def from_saved(
        cls,
        path: str,
        *,
        feature_cols: Sequence[str],
        prediction_col: str = "prediction",
        raw_prediction_col: str = "",
        batch_size: int = 1024,
    ) -> KerasModel:
        """A KerasModel from a ``.keras`` file (one saved by any tfyarn job: ``ctx.save_model``)."""
        model = cls(
            featureCols=list(feature_cols),
            predictionCol=prediction_col,
            rawPredictionCol=raw_prediction_col,
            inferenceBatchSize=batch_size,
        )
        model._model_bytes = storage.read_bytes(path)
        return model

    def keras_model(self) -> Any:
        """The Keras model itself (loaded on the driver)."""
        return model_from_bytes(self._model_bytes)

    def _transform(self, dataset: DataFrame) -> DataFrame:
        if not self._model_bytes:
            raise ConfigError("this KerasModel holds no model: fit, load or from_saved it")
        features = self.getOrDefault(self.featureCols)
        check_columns(dataset.schema, features)
        width, inputs = self._input_layout(features)
        spec = replace(self._spec(self._model_bytes), sparse_width=width, inputs=inputs)
        if width:
            return score(dataset, sparse_parts(dataset, features[0]), spec)
        if inputs > 1:
            return score(dataset, inputs_column(dataset, features), spec)
        return score(dataset, features_column(dataset, features), spec)

    def _input_layout(self, features: Sequence[str]) -> tuple[int, int]:
        """:func:`_input_layout` of the model, found once per model."""
        digest = hash(self._model_bytes)
        if self._layout is None or self._layout[0] != digest:
            self._layout = (digest, *_input_layout(self.keras_model(), features))
        return self._layout[1], self._layout[2]

    def copy(self, extra: dict[Any, Any] | None = None) -> KerasModel:
        copied: KerasModel = super().copy(extra)
        copied._model_bytes, copied.history = self._model_bytes, dict(self.history)
        return copied

    def write(self) -> MLWriter:
        return _KerasModelWriter(self)

    @classmethod
    def read(cls) -> MLReader[KerasModel]:
        return _KerasModelReader()


class _KerasModelWriter(MLWriter):
    """``<path>/metadata`` (Spark ML's, with the params) and ``<path>/model.keras``."""

    def __init__(self, instance: KerasModel) -> None:
        super().__init__()
        self.instance = instance

    def saveImpl(self, path: str) -> None:
        extra = {
            "model_file": _MODEL_FILE,
            "history": json.loads(json.dumps(self.instance.history, default=float)),
        }
        DefaultParamsWriter.saveMetadata(self.instance, path, self.sparkSession.sparkContext, extra)
        storage.write_bytes_atomically(storage.join(path, _MODEL_FILE), self.instance._model_bytes)


def _load_params(stage: KerasModel | KerasEstimator, path: str, sc: Any) -> dict[str, Any]:
    """Set ``stage``'s uid and params from Spark ML's metadata under ``path``; return it all."""
    metadata: dict[str, Any] = DefaultParamsReader.loadMetadata(path, sc)
    stage._resetUid(metadata["uid"])
    DefaultParamsReader.getAndSetParams(stage, metadata)
    return metadata


class _KerasModelReader(MLReader[KerasModel]):
    def load(self, path: str) -> KerasModel:
        model = KerasModel()
        metadata = _load_params(model, path, self.sparkSession.sparkContext)
        model._model_bytes = storage.read_bytes(storage.join(path, metadata["model_file"]))
        model.history = dict(metadata.get("history") or {})
        return model


#: Where a saved estimator keeps the params that JSON cannot hold (its callbacks, a function
#: making the model): cloudpickle, so loading them needs compatible Python and Keras.
_PICKLED_PARAMS_FILE = "params.pkl"


def _jsonable(value: Any) -> bool:
    try:
        json.dumps(value)
    except (TypeError, ValueError):
        return False
    return True


class _KerasEstimatorWriter(MLWriter):
    """A KerasEstimator under ``<path>``, readable by :meth:`KerasEstimator.load`.

    - ``metadata``: Spark ML's, with every param JSON can hold, an optimizer or loss
      object as its Keras config (what ``fit`` trains with anyway);
    - ``model.keras``: the ``model`` param when it is a Keras model;
    - ``params.pkl``: the others (callbacks, a function making the model), cloudpickled.
    """

    def __init__(self, instance: KerasEstimator) -> None:
        super().__init__()
        self.instance = instance

    def saveImpl(self, path: str) -> None:
        import cloudpickle
        import keras

        plain: dict[str, Any] = {}
        pickled: dict[str, Any] = {}
        extra: dict[str, Any] = {}
        for param, value in self.instance._paramMap.items():
            if param.name == "model" and hasattr(value, "layers"):
                target = storage.join(path, _MODEL_FILE)
                storage.write_bytes_atomically(target, model_to_bytes(value))
                extra["model_file"] = _MODEL_FILE
                continue
            if param.name == "optimizer" and not _jsonable(value):
                value = keras.optimizers.serialize(value)
            elif param.name == "loss" and not _jsonable(value):
                value = keras.losses.serialize(value)
            (plain if _jsonable(value) else pickled)[param.name] = value
        if pickled:
            data = cloudpickle.dumps(pickled)
            storage.write_bytes_atomically(storage.join(path, _PICKLED_PARAMS_FILE), data)
            extra["pickled_params"] = sorted(pickled)
        sc = self.sparkSession.sparkContext
        DefaultParamsWriter.saveMetadata(self.instance, path, sc, extra, paramMap=plain)


class _KerasEstimatorReader(MLReader[KerasEstimator]):
    def load(self, path: str) -> KerasEstimator:
        import cloudpickle

        estimator = KerasEstimator()
        metadata = _load_params(estimator, path, self.sparkSession.sparkContext)
        if "model_file" in metadata:
            data = storage.read_bytes(storage.join(path, metadata["model_file"]))
            estimator._set(model=model_from_bytes(data))
        if metadata.get("pickled_params"):
            data = storage.read_bytes(storage.join(path, _PICKLED_PARAMS_FILE))
            estimator._set(**cloudpickle.loads(data))
        return estimator
