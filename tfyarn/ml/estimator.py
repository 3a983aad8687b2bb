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
    label_columns,
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
    from pyspark.sql.types import StructType

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
    #: A loss name or Keras config, or a list or dict of them per output (:func:`_loss_config`).
    loss: Any
    #: Metric names, or a dict of them by output name (:func:`_metrics_for`).
    metrics: Sequence[str] | Mapping[str, Sequence[str]]
    batch_size: int
    epochs: int
    shuffle: bool
    seed: int
    #: The held-out rows, by assembled column name (see :func:`_model_data`).
    validation: Mapping[str, np.ndarray] | None = None
    callbacks: tuple[Any, ...] = field(default=())
    #: The model's sparse input width (:mod:`tfyarn.ml.sparse`); 0: dense features.
    sparse_width: int = 0
    #: The model's inputs: above 1, one feature column each (:func:`assemble_inputs`).
    inputs: int = 1
    #: The names of the model's several outputs (:func:`_output_names`); (): one output.
    outputs: tuple[str, ...] = ()
    #: Steps per epoch on every trainer; 0: one pass over the longest shard.
    steps_per_epoch: int = 0


def validation_arrays(
    assembled: DataFrame, columns: Sequence[str] = (FEATURES, LABEL)
) -> tuple[np.ndarray, ...]:
    r"""The held-out rows of an assembled frame (:func:`~tfyarn.ml.columns.assemble`,
    :func:`~tfyarn.ml.sparse.assemble_sparse`), collected to the driver as one array per
    column (``(features, labels)`` by default) for ``model.fit(validation_data=...)``."""
    rows = assembled.select(*columns).toArrow()
    return tuple(column_to_numpy(name, rows.column(name).combine_chunks()) for name in columns)


@dataclass(frozen=True)
class _Layout:
    """How a Keras model takes its data: what :func:`_layout_of` finds.

    Attributes
    ----------
    sparse_width : int
        The width of its one sparse input (:func:`~tfyarn.ml.sparse.sparse_width`);
        0: dense inputs.
    inputs : tuple of str
        The names of its inputs, in order.
    outputs : tuple of str
        The names of its outputs when it has several (:func:`_output_names`); ():
        one output.
    """

    sparse_width: int
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]

    def feature_inputs(self, features: Sequence[str]) -> int:
        """How many inputs ``features`` feed: above 1, one column per input.

        One sparse input: 1, fed one Vector column kept sparse. Several inputs: one
        feature column per input, in the model's input order. Else 1: the feature
        columns concatenated into the one input.

        Raises
        ------
        ConfigError
            A sparse input and several feature columns; several inputs and another
            number of feature columns.
        """
        if self.sparse_width:
            if len(features) != 1:
                raise ConfigError(
                    f"the model's input is sparse: it takes one Vector column, not "
                    f"{len(features)} ({', '.join(features)}); assemble them with "
                    "VectorAssembler"
                )
            return 1
        if len(self.inputs) > 1 and len(self.inputs) != len(features):
            raise ConfigError(
                f"the model takes {len(self.inputs)} inputs ({', '.join(self.inputs)}) and "
                f"featureCols names {len(features)} columns ({', '.join(features)}): give "
                "one column per input, in the model's input order"
            )
        return max(len(self.inputs), 1)


def _output_names(model: Any) -> tuple[str, ...]:
    """The names of ``model``'s outputs when it has several, in the order its ``predict``
    gives them; () for a model with one output.

    A functional model built with a list of outputs: their layers' names
    (``model.output_names``); with a dict of outputs: the dict's keys.

    Raises
    ------
    ConfigError
        Nested outputs (a list or dict inside the outputs), or two outputs of one name.
    """
    try:
        structure = model.output
    except (AttributeError, ValueError):  # not built yet (a subclassed model): one output
        return ()
    if isinstance(structure, dict):
        names, parts = tuple(str(k) for k in structure), list(structure.values())
    elif isinstance(structure, list | tuple) and len(structure) > 1:
        names, parts = tuple(str(n) for n in model.output_names), list(structure)
    else:
        return ()
    if any(isinstance(part, list | tuple | dict) for part in parts):
        raise ConfigError(
            "the model's outputs are nested (a list or dict inside its outputs): KerasEstimator "
            "feeds one label column per output; build the model with a flat list or dict of "
            "outputs"
        )
    if len(set(names)) != len(names):
        raise ConfigError(
            f"the model's outputs have repeated names ({', '.join(names)}): name each "
            "output's layer (name=...), its prediction column is named after it"
        )
    return names


def _layout_of(model: Any) -> _Layout:
    """:class:`_Layout` of a Keras model (raises as :func:`sparse_width` and
    :func:`_output_names` do)."""
    width = sparse_width(model)
    inputs = getattr(model, "inputs", None) or []
    names = tuple(str(getattr(i, "name", "?")) for i in inputs)
    return _Layout(width, names, _output_names(model))


def _match_labels(
    outputs: Sequence[str], labels: Sequence[str] | Mapping[str, str], param: str
) -> list[str]:
    """The label columns in the model's output order: one per output (one for a model
    with one output), given as a list in that order or a dict by output name.

    Raises
    ------
    ConfigError
        Another number of columns than outputs, or output names the model does not
        have (or lacks), naming the outputs and the columns.
    """
    hint = (
        "give labelCols=[...], one label column per output in the model's output order, "
        "or labelCols={output name: column}"
    )
    if isinstance(labels, Mapping):
        if not outputs:
            raise ConfigError(
                f"labelCols={dict(labels)!r} names outputs, but the model has one output: "
                "give its label column as labelCol=... (or labelCols=[column])"
            )
        unknown = [name for name in labels if name not in outputs]
        missing = [name for name in outputs if name not in labels]
        if unknown or missing:
            problems = [f"no output named {', '.join(unknown)}"] if unknown else []
            problems += [f"no column for {', '.join(missing)}"] if missing else []
            raise ConfigError(
                f"the model's outputs are {', '.join(outputs)}; labelCols has "
                f"{' and '.join(problems)}: {hint}"
            )
        return [labels[name] for name in outputs]
    if len(labels) == (len(outputs) or 1):
        return list(labels)
    columns = f"{len(labels)} column{'s' if len(labels) != 1 else ''} ({', '.join(labels)})"
    if outputs:
        raise ConfigError(
            f"the model has {len(outputs)} outputs ({', '.join(outputs)}) and {param} names "
            f"{columns}: {hint}"
        )
    raise ConfigError(
        f"the model has one output and {param} names {columns}: give its one label column "
        "(labelCol=...)"
    )


def _is_keras_config(value: Any) -> bool:
    """Whether ``value`` is a Keras object's config (``keras.losses.serialize``'s dict)."""
    return isinstance(value, dict) and "class_name" in value


def _loss_config(loss: Any) -> Any:
    """A loss as a fit trains with it and a saved estimator keeps it: a name, a Keras
    config, or a list or dict (by output name) of those, one per output."""
    import keras

    if isinstance(loss, str) or _is_keras_config(loss):
        return loss
    if isinstance(loss, Mapping):
        return {str(name): _loss_config(value) for name, value in loss.items()}
    if isinstance(loss, list | tuple):
        return [_loss_config(value) for value in loss]
    return keras.losses.serialize(loss)


def _loss_object(config: Any) -> Any:
    """What :func:`_loss_config` made, as ``model.compile(loss=...)`` takes it."""
    import keras

    if _is_keras_config(config):
        return keras.losses.deserialize(config)
    if isinstance(config, Mapping):
        return {name: _loss_object(value) for name, value in config.items()}
    if isinstance(config, list):
        return [_loss_object(value) for value in config]
    return config


def _check_per_output(param: str, value: Any, outputs: Sequence[str]) -> None:
    """Refuse a per-output ``loss``/``metrics`` that does not match the model's outputs.

    Raises
    ------
    ConfigError
        A list of another length than the outputs, a dict naming outputs the model does
        not have, or either for a model with one output (a loss).
    """
    per_output = isinstance(value, Mapping) and not _is_keras_config(value)
    if not per_output and not (param == "loss" and isinstance(value, list)):
        return
    if not outputs:
        raise ConfigError(
            f"{param} is given per output ({value!r}), but the model has one output: give "
            f"one {param}"
        )
    if per_output:
        unknown = [name for name in value if name not in outputs]
        if unknown:
            raise ConfigError(
                f"{param} names outputs the model does not have ({', '.join(unknown)}); its "
                f"outputs are {', '.join(outputs)}"
            )
    elif len(value) != len(outputs):
        raise ConfigError(
            f"{param} lists {len(value)} entries for the model's {len(outputs)} outputs "
            f"({', '.join(outputs)}): give one per output, in order, or a dict by output name"
        )


def _metrics_for(
    metrics: Sequence[str] | Mapping[str, Sequence[str]], outputs: Sequence[str]
) -> list[str] | dict[str, list[str]]:
    """``metrics`` as ``model.compile`` takes them for this model's outputs.

    A list of names measures each of a model's several outputs (as Keras 2 did; Keras 3
    wants them per output); a dict gives each output its own (outputs left out get none).
    """
    _check_per_output("metrics", metrics, outputs)
    if isinstance(metrics, Mapping):
        return {str(name): list(names) for name, names in metrics.items()}
    if outputs and metrics:
        return {name: list(metrics) for name in outputs}
    return list(metrics)


def _model_data(
    columns: Mapping[str, Any], *, sparse: bool, inputs: int, outputs: Sequence[str]
) -> tuple[Any, Any]:
    """``(x, y)`` of a model from its assembled columns (tensors of a batch, or the
    held-out arrays).

    ``x``: the sparse parts (``{indices, values}``, made a ``SparseTensor`` by
    :func:`sparse_batches`), a tuple of one array per input, or the one features array.
    ``y``: a dict of the label columns by output name for a model with several outputs
    (Keras matches it to list and dict outputs alike), else the one label column.
    """
    x = _model_inputs(columns, sparse=sparse, inputs=inputs)
    if not outputs:
        return x, columns[LABEL]
    labels = label_columns(len(outputs))
    return x, {name: columns[label] for name, label in zip(outputs, labels, strict=True)}


def _model_inputs(columns: Mapping[str, Any], *, sparse: bool, inputs: int) -> Any:
    """The ``x`` of :func:`_model_data`."""
    if sparse:
        return {INDICES: columns[INDICES], VALUES: columns[VALUES]}
    if inputs > 1:
        return tuple(columns[name] for name in input_columns(inputs))
    return columns[FEATURES]


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
            loss=_loss_object(spec.loss),
            metrics=spec.metrics,
        )

        def model_data(columns: Mapping[str, Any]) -> tuple[Any, Any]:
            sparse = bool(spec.sparse_width)
            return _model_data(columns, sparse=sparse, inputs=spec.inputs, outputs=spec.outputs)

        # The same number of steps on every trainer: its shard is cycled to fill them.
        steps = spec.steps_per_epoch or ctx.steps_per_epoch(spec.batch_size)
        dataset = ctx.dataset(
            spec.batch_size,
            epochs=spec.epochs,
            shuffle=spec.shuffle,
            seed=spec.seed,
            steps_per_epoch=steps,
        ).map(model_data)
        validation: Any = None
        if spec.validation is not None:
            x, y = model_data(spec.validation)
            if spec.sparse_width:
                validation = validation_batches(
                    x[INDICES], x[VALUES], y, spec.batch_size, spec.sparse_width
                )
            else:
                validation = (list(x) if isinstance(x, tuple) else x, y)
        if spec.sparse_width:
            dataset = sparse_batches(dataset, spec.sparse_width)
        history = model.fit(
            dataset,
            epochs=spec.epochs,
            steps_per_epoch=steps,
            validation_data=validation,
            callbacks=[*strategy.callbacks(), ctx.keras_callback(), *spec.callbacks],
            verbose=0,
        )
        if not ctx.is_chief:
            return None
        return {"model": model_to_bytes(model), "history": history.history}

    return train


def _to_label_cols(value: Any) -> list[str] | dict[str, str]:
    """``labelCols``' converter: a list of column names, or a dict of them by output name."""
    if isinstance(value, Mapping):
        if not all(isinstance(k, str) and isinstance(v, str) for k, v in value.items()):
            raise TypeError(f"labelCols as a dict maps output names to column names: {value!r}")
        return dict(value)
    return TypeConverters.toListString(value)


def _to_metrics(value: Any) -> list[str] | dict[str, list[str]]:
    """``metrics``' converter: a list of metric names, or a dict of them by output name."""
    if isinstance(value, Mapping):
        return {str(name): TypeConverters.toListString(names) for name, names in value.items()}
    return TypeConverters.toListString(value)


class KerasEstimator(Estimator, _ScoringParams, HasLabelCol, HasSeed, MLWritable, MLReadable):
    """Train a Keras model on a DataFrame across the executors (a Spark ML Estimator).

    Parameters (Spark ML ``Param``\\ s, set by keyword or ``setX``)
    ----------------------------------------------------------------
    model
        A Keras model (uncompiled is fine) or a function returning one.
    optimizer
        A Keras optimizer, its name (``"adam"``) or its config.
    loss
        A Keras loss, or its name; for a model with several outputs, one loss for all,
        or a list (in output order) or dict (by output name) of them.
    metrics
        Metric names (``["accuracy"]``); a model with several outputs measures each
        output with them, or takes a dict of names by output name.
    featureCols
        The feature columns (numbers, ``ml.linalg`` Vectors or arrays): one column per
        input of a model with several, in the model's input order; else concatenated
        into its one input.
    labelCol, labelCols
        The label column of a model with one output (``labelCol``, default
        ``"label"``), or one label column per output of a model with several
        (``labelCols``: a list in the model's output order, or a dict by output name).
        Give one of the two, not both.
    batchSize, epochs
        Per-trainer batch size, and epochs (each one pass over the longest shard, or
        ``stepsPerEpoch`` steps).
    stepsPerEpoch
        Steps per epoch, the same on every trainer; its shard is cycled (reshuffled on
        each pass) to fill them, and a restart resumes at the step it was lost at.
        0 (the default): one pass over the longest trainer's shard.
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
        Carried to the :class:`KerasModel` for scoring (one column of each per output of
        a model with several: :meth:`KerasModel.predictionCols`).
    """

    model: Param[Any] = Param(Params._dummy(), "model", "a Keras model, or a function making one")
    optimizer: Param[Any] = Param(Params._dummy(), "optimizer", "Keras optimizer, name or config")
    loss: Param[Any] = Param(Params._dummy(), "loss", "Keras loss, or its name")
    metrics: Param[list[str] | dict[str, list[str]]] = Param(
        Params._dummy(),
        "metrics",
        "metric names, or a dict of them by output name",
        typeConverter=_to_metrics,
    )
    labelCols: Param[list[str] | dict[str, str]] = Param(
        Params._dummy(),
        "labelCols",
        "one label column per output of the model: in its output order, or by output name",
        typeConverter=_to_label_cols,
    )
    stepsPerEpoch: Param[int] = Param(
        Params._dummy(),
        "stepsPerEpoch",
        "steps per epoch on every trainer (0: one pass over the longest shard)",
        typeConverter=TypeConverters.toInt,
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
            stepsPerEpoch=0,
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

    def _labels(self) -> tuple[str, list[str] | dict[str, str]]:
        """The label param in use (``labelCol`` or ``labelCols``) and its columns.

        Raises
        ------
        ConfigError
            Both are set, or ``labelCols`` is empty.
        """
        if not self.isSet(self.labelCols):
            return "labelCol", [self.getOrDefault(self.labelCol)]
        labels = self.getOrDefault(self.labelCols)
        if self.isSet(self.labelCol):
            label = self.getOrDefault(self.labelCol)
            raise ConfigError(
                f"give labelCol (the label of a model with one output) or labelCols (one "
                f"label column per output), not both: labelCol={label!r}, labelCols={labels!r}"
            )
        if not labels:
            raise ConfigError("labelCols is empty: name one label column per output of the model")
        return "labelCols", labels

    def _held_out(self, schema: StructType) -> str | float:
        """The ``validation`` param, checked against ``schema`` (before any Spark job).

        Raises
        ------
        ConfigError
            A column that is missing or not boolean-like, or a fraction outside [0, 1).
        """
        held = self.getOrDefault(self.validation)
        if isinstance(held, str):
            check_columns(schema, [held])
            return held
        if not isinstance(held, int | float) or not 0 <= held < 1:
            raise ConfigError(
                f"validation must be a fraction 0 <= f < 1 or a boolean column, got {held!r}"
            )
        return float(held)

    def _validation(self, df: DataFrame, held: str | float) -> tuple[DataFrame, DataFrame | None]:
        """``df`` split into training and held-out rows (None: no validation)."""
        from pyspark.sql import functions as F

        if isinstance(held, str):
            return df.filter(~F.col(held)), df.filter(F.col(held))
        if held == 0:
            return df, None
        train, valid = df.randomSplit([1 - held, held], seed=self.getOrDefault(self.seed))
        return train, valid

    def _steps_per_epoch(self) -> int:
        steps = int(self.getOrDefault(self.stepsPerEpoch))
        if steps < 0:
            raise ConfigError(
                f"stepsPerEpoch must be 0 (one pass over the longest shard) or more, got {steps}"
            )
        return steps

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
        param, labels = self._labels()
        check_columns(dataset.schema, features)
        loss = self.getOrDefault(self.loss) if self.isDefined(self.loss) else None
        if loss is None:  # before any Spark job reads the data
            raise ConfigError("KerasEstimator needs loss=: a Keras loss or its name")
        steps_per_epoch = self._steps_per_epoch()
        model = self._keras_model()
        layout = _layout_of(model)
        inputs = layout.feature_inputs(features)
        label_cols = _match_labels(layout.outputs, labels, param)
        check_columns(dataset.schema, features, label_cols)
        loss = _loss_config(loss)
        _check_per_output("loss", loss, layout.outputs)
        metrics = _metrics_for(self.getOrDefault(self.metrics), layout.outputs)
        held = self._held_out(dataset.schema)
        width = layout.sparse_width
        assembled, columns = _assembled(dataset, features, label_cols, width, inputs)
        train_df, valid_df = self._validation(assembled, held)
        validation = None
        if valid_df is not None:
            validation = dict(zip(columns, validation_arrays(valid_df, columns), strict=True))
        optimizer = self.getOrDefault(self.optimizer)
        spec = _TrainingSpec(
            model=model_to_bytes(model),
            optimizer=keras.optimizers.serialize(keras.optimizers.get(optimizer)),
            loss=loss,
            metrics=metrics,
            batch_size=self.getOrDefault(self.batchSize),
            epochs=self.getOrDefault(self.epochs),
            shuffle=self.getOrDefault(self.shuffle),
            seed=self.getOrDefault(self.seed),
            validation=validation,
            callbacks=tuple(self.getOrDefault("callbacks")),
            sparse_width=width,
            inputs=inputs,
            outputs=layout.outputs,
            steps_per_epoch=steps_per_epoch,
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


def _assembled(
    dataset: DataFrame, features: list[str], label_cols: list[str], width: int, inputs: int
) -> tuple[DataFrame, tuple[str, ...]]:
    """The rows as the roles take them, and their column names, after the NaN check.

    Sparse features stay sparse (``width``: :mod:`tfyarn.ml.sparse`); a functional model
    of several inputs gets one column per input; anything else one dense feature array.
    """
    # A sparse column's nulls and NaNs are counted by assemble_sparse: made dense to be
    # checked here, a 2^18-wide vector would be 1 MB a row.
    find_bad_values(dataset, label_cols if width else [*features, *label_cols])
    labels_as = label_columns(len(label_cols))
    if width:
        assembled, _ = assemble_sparse(dataset, features, label_cols, width)
        return assembled, (INDICES, VALUES, *labels_as)
    if inputs > 1:
        return assemble_inputs(dataset, features, label_cols), (*input_columns(inputs), *labels_as)
    return assemble(dataset, features, label_cols), (FEATURES, *labels_as)


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
        # (hash of the model bytes, its layout): see _layout_of
        self._layout: tuple[int, _Layout] | None = None
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
        spec = self._scoring(features)
        if spec.sparse_width:
            return score(dataset, sparse_parts(dataset, features[0]), spec)
        if spec.inputs > 1:
            return score(dataset, inputs_column(dataset, features), spec)
        return score(dataset, features_column(dataset, features), spec)

    def _scoring(self, features: Sequence[str] | None = None) -> ScoringSpec:
        """How this model scores ``features`` (checked against the model's inputs; None:
        not checked, one input assumed)."""
        layout = self._model_layout()
        inputs = layout.feature_inputs(features) if features is not None else 1
        return replace(
            self._spec(self._model_bytes),
            sparse_width=layout.sparse_width,
            inputs=inputs,
            outputs=layout.outputs,
        )

    def _model_layout(self) -> _Layout:
        """:func:`_layout_of` the model, found once per model."""
        digest = hash(self._model_bytes)
        if self._layout is None or self._layout[0] != digest:
            if not self._model_bytes:
                raise ConfigError("this KerasModel holds no model: fit, load or from_saved it")
            self._layout = (digest, _layout_of(self.keras_model()))
        return self._layout[1]

    def predictionCols(self) -> list[str]:
        """The prediction columns :meth:`transform` adds: ``predictionCol`` for a model with
        one output; ``<predictionCol>_<output name>`` for each of several, in order."""
        return [prediction for prediction, _ in self._scoring().columns()]

    def rawPredictionCols(self) -> list[str]:
        """The raw output columns :meth:`transform` adds (none when ``rawPredictionCol`` is
        empty): ``rawPredictionCol``, or ``<rawPredictionCol>_<output name>`` per output."""
        return [raw for _, raw in self._scoring().columns() if raw]

    def copy(self, extra: dict[Any, Any] | None = None) -> KerasModel:
        copied: KerasModel = super().copy(extra)
        copied._model_bytes, copied.history = self._model_bytes, dict(self.history)
        copied._layout = self._layout
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
            elif param.name == "loss":
                value = _loss_config(value)
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
