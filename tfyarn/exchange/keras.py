"""Keras 3 integration: a distributed optimizer and callbacks for ``model.fit``.

``model.fit`` compiles ``train_step`` with ``tf.function``; the all-reduce therefore
enters the graph as ``tf.numpy_function`` ops, one per bucket of ``bucket_bytes`` of
gradients taken last layer first (:func:`~tfyarn.exchange.buckets.backward_buckets`):
TensorFlow concatenates its gradients into one flat tensor per dtype, which crosses into
Python as one array and goes through the ring in native code and threads, and the op
can start while backpropagation computes the earlier layers. The ps
strategies push all gradients in one op (their requests are bucketed per server). No
per-variable round trips.

The optimizer object is patched in place rather than subclassed, so that it keeps its
class and ``model.save`` / ``keras.models.load_model`` work unchanged.
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Any

import keras
import numpy as np
import tensorflow as tf

from tfyarn.errors import ConfigError
from tfyarn.exchange.buckets import backward_buckets
from tfyarn.exchange.fusion import FusionCycle
from tfyarn.exchange.ps import OptimizerConfig, optimizer_config

if TYPE_CHECKING:
    from tfyarn.exchange.strategy import ExchangeStrategy

__all__ = [
    "ExchangeCallback",
    "MetricAverageCallback",
    "ScheduledExchangeCallback",
    "allreduce_tensors",
    "callbacks",
    "distributed_optimizer",
    "keras_optimizer_config",
]

_PATCHED = "_tfyarn_exchange"


def keras_optimizer_config(optimizer: Any) -> OptimizerConfig:
    """The parameter-server optimizer equivalent to a Keras optimizer.

    SGD (with or without momentum/Nesterov), Adam and Adagrad, with a constant learning
    rate and no clipping or weight decay (those run on the workers, not on a ps).

    Raises
    ------
    ConfigError
        For any other optimizer or setting, naming it.
    """
    for attr in ("weight_decay", "clipnorm", "clipvalue", "global_clipnorm"):
        if getattr(optimizer, attr, None):
            raise ConfigError(
                f"{type(optimizer).__name__}({attr}=...) cannot run on a parameter server; "
                f"remove {attr} or use strategy='allreduce'"
            )
    lr_obj = getattr(optimizer, "_learning_rate", None)
    if isinstance(lr_obj, keras.optimizers.schedules.LearningRateSchedule) or callable(lr_obj):
        raise ConfigError(
            "parameter-server strategies need a constant learning rate, not a schedule"
        )
    lr = float(np.asarray(optimizer.learning_rate))
    if isinstance(optimizer, keras.optimizers.SGD):
        m = float(optimizer.momentum)
        if m == 0.0:
            return optimizer_config("sgd", learning_rate=lr)
        return optimizer_config(
            "momentum", learning_rate=lr, momentum=m, nesterov=bool(optimizer.nesterov)
        )
    if isinstance(optimizer, keras.optimizers.Adam):
        if optimizer.amsgrad:
            raise ConfigError("Adam(amsgrad=True) cannot run on a parameter server")
        return optimizer_config(
            "adam",
            learning_rate=lr,
            beta_1=float(optimizer.beta_1),
            beta_2=float(optimizer.beta_2),
            epsilon=float(optimizer.epsilon),
        )
    if isinstance(optimizer, keras.optimizers.Adagrad):
        return optimizer_config(
            "adagrad",
            learning_rate=lr,
            epsilon=float(optimizer.epsilon),
            initial_accumulator_value=float(optimizer.initial_accumulator_value),
        )
    raise ConfigError(
        f"{type(optimizer).__name__} cannot run on a parameter server; use SGD, Adam or "
        "Adagrad, or strategy='allreduce'"
    )


def _numpy_call(fn: Any, inputs: list[tf.Tensor], name: str) -> list[tf.Tensor]:
    def call(*arrays: np.ndarray) -> list[np.ndarray]:
        return fn(list(arrays))

    out = tf.numpy_function(call, inputs, [t.dtype for t in inputs], stateful=True, name=name)
    out = list(out) if isinstance(out, list | tuple) else [out]
    for o, t in zip(out, inputs, strict=True):
        o.set_shape(t.shape)
    return out


def _static_nbytes(t: tf.Tensor) -> int:
    """Bytes of a gradient of static shape (a dimension unknown at tracing counts as 1)."""
    count = 1
    for d in t.shape:
        count *= d if d is not None else 1
    return count * t.dtype.size


def allreduce_tensors(
    strategy: ExchangeStrategy, tensors: list[Any], average: bool = True
) -> list[tf.Tensor]:
    """All-reduce float tensors as TensorFlow ops (usable inside ``tf.function``).

    All tensors go through one fused ring all-reduce per dtype.
    """
    inputs = [tf.convert_to_tensor(t) for t in tensors]
    if strategy.size == 1 or not inputs:
        return inputs
    for t in inputs:
        if not t.dtype.is_floating:
            raise ConfigError(f"allreduce_tensors takes float tensors, got {t.dtype.name}")

    def reduce(arrays: list[np.ndarray]) -> list[np.ndarray]:
        out = strategy.allreduce_arrays(arrays, average=average)
        return [np.asarray(a) for a in out]

    return _numpy_call(reduce, inputs, "tfyarn_allreduce_tensors")


def _exchange_flat(grads: list[tf.Tensor], exchange: Any, k: int) -> list[tf.Tensor]:
    """One ``tf.numpy_function`` exchanging ``grads`` as one flat tensor per dtype.

    The gradients are concatenated and split again by TensorFlow's own ops, so that a
    bucket of hundreds of small gradients crosses into Python as one array, not hundreds
    (each costs a conversion both ways). ``exchange`` gets the flat arrays.
    """
    by_dtype: dict[tf.DType, list[int]] = {}
    for i, g in enumerate(grads):
        by_dtype.setdefault(g.dtype, []).append(i)
    groups = list(by_dtype.values())
    flats = [tf.concat([tf.reshape(grads[i], [-1]) for i in idx], 0) for idx in groups]
    reduced = _numpy_call(exchange, flats, f"tfyarn_allreduce_{k}")
    out: list[tf.Tensor] = list(grads)
    for flat, idx in zip(reduced, groups, strict=True):
        # static sizes where the trace knows them (they keep the shapes static)
        splits = [grads[i].shape.num_elements() or tf.size(grads[i]) for i in idx]
        for i, part in zip(idx, tf.split(flat, splits), strict=True):
            shaped = tf.reshape(part, tf.shape(grads[i]))
            shaped.set_shape(grads[i].shape)
            out[i] = shaped
    return out


def _fused_by_time(
    strategy: ExchangeStrategy, fusions: dict[tuple[Any, ...], FusionCycle], dense: list[tf.Tensor]
) -> list[tf.Tensor]:
    """Exchange ``dense`` through a :class:`~tfyarn.exchange.fusion.FusionCycle`.

    One submit op per gradient, last layer first (each runs as soon as its gradient
    exists and returns at once), and one collect op that waits for every group. The
    cycle is kept per list of shapes, so that a retraced step reuses its thread.
    """
    algo = strategy.algorithm
    order = list(reversed(range(len(dense))))
    key = tuple((tuple(dense[i].shape), dense[i].dtype.name) for i in order)
    fusion = fusions.get(key)
    if fusion is None:
        fusion = FusionCycle(
            algo.exchange_gradients,
            strategy.collectives,
            [_static_nbytes(dense[i]) for i in order],
            float(algo.cycle_time or 0.0),
            int(strategy.options["bucket_bytes"]),
            float(strategy.options["timeout"]),
        )
        fusions[key] = fusion
        strategy.fusions.append(fusion)
    tokens = [
        tf.numpy_function(
            functools.partial(fusion.submit, pos), [dense[i]], tf.int64, stateful=True,
            name=f"tfyarn_fusion_submit_{pos}",
        )
        for pos, i in enumerate(order)
    ]  # fmt: skip

    def collect(*_tokens: np.ndarray) -> list[np.ndarray]:
        return fusion.collect()

    dtypes = [dense[i].dtype for i in order]
    out = tf.numpy_function(collect, tokens, dtypes, stateful=True, name="tfyarn_fusion_collect")
    out = list(out) if isinstance(out, list | tuple) else [out]
    reduced: list[tf.Tensor] = [tf.constant(0)] * len(dense)
    for o, i in zip(out, order, strict=True):
        o.set_shape(dense[i].shape)
        reduced[i] = o
    return reduced


def distributed_optimizer(strategy: ExchangeStrategy, optimizer: Any) -> Any:
    """Make ``optimizer`` (a Keras 3 optimizer) exchange gradients as ``strategy`` says.

    * ``allreduce``: gradients are averaged over all trainers (fused ring all-reduce)
      before the optimizer applies them, so every trainer takes the same step.
    * ``sync_ps`` / ``downpour``: gradients go to the parameter servers, which run the
      same optimizer (:func:`keras_optimizer_config`); the variables take the new values.
    * ``easgd`` / ``model_averaging`` / ``adag``: unchanged (local steps); the
      synchronisation is done by :func:`callbacks` or ``strategy.step_end``.

    Works inside ``model.fit`` (compiled ``train_step``) and in ``tf.function`` or eager
    ``GradientTape`` loops that call ``apply_gradients``/``apply``.

    Returns
    -------
    keras.optimizers.Optimizer
        The same optimizer object, patched (its class and config are unchanged).
    """
    if not isinstance(optimizer, keras.optimizers.Optimizer):
        raise ConfigError(
            f"distributed_optimizer needs a keras.optimizers.Optimizer, got {type(optimizer)}"
        )
    if getattr(optimizer, _PATCHED, None) is not None:
        raise ConfigError("this optimizer is already distributed; wrap it once")
    algo = strategy.algorithm
    mode = algo.gradient_mode
    if mode == "replace":
        algo.optimizer_config = keras_optimizer_config(optimizer)
    object.__setattr__(optimizer, _PATCHED, strategy)
    if mode is None or (mode == "reduce" and strategy.size == 1):
        return optimizer  # nothing to exchange per step
    original_apply = optimizer.apply
    fusions: dict[tuple[Any, ...], FusionCycle] = {}

    def apply(grads: Any, trainable_variables: Any = None) -> Any:
        grads = list(grads)
        variables = (
            list(trainable_variables)
            if trainable_variables is not None
            else list(optimizer._trainable_variables)
        )
        present = [i for i, g in enumerate(grads) if g is not None]
        if not present:
            return original_apply(grads, trainable_variables)
        dense = [tf.convert_to_tensor(grads[i]) for i in present]
        if mode == "reduce" and algo.cycle_time is not None:
            reduced = _fused_by_time(strategy, fusions, dense)
            for i, g in zip(present, reduced, strict=True):
                grads[i] = g
            return original_apply(grads, trainable_variables)
        if mode == "reduce":
            # One op per bucket, last layers first: in a compiled step each starts as soon
            # as its gradients exist, while backpropagation goes on (TensorFlow keeps
            # stateful ops in the order they were made: every rank exchanges alike).
            sizes = [_static_nbytes(g) for g in dense]
            buckets = backward_buckets(sizes, int(strategy.options["bucket_bytes"]))
            for k, bucket in enumerate(buckets):
                exchange = functools.partial(algo.exchange_gradients, bucket=k)
                reduced = _exchange_flat([dense[i] for i in bucket], exchange, k)
                for i, g in zip(bucket, reduced, strict=True):
                    grads[present[i]] = g
            return original_apply(grads, trainable_variables)
        if len(present) != len(grads):
            missing = [variables[i].path for i in range(len(grads)) if grads[i] is None]
            raise ConfigError(f"{algo.name}: no gradient for {missing}; every variable must train")
        new_values = _numpy_call(algo.exchange_gradients, dense, "tfyarn_ps_push_pull")
        for v, w in zip(variables, new_values, strict=True):
            v.assign(w)
        optimizer.iterations.assign_add(1)
        return None

    object.__setattr__(optimizer, "apply", apply)
    return optimizer


class ExchangeCallback(keras.callbacks.Callback):
    """Runs the strategy's hooks around ``model.fit``.

    ``on_train_begin``: every trainer starts from rank 0's weights and optimizer state
    (or from the ps center); at each epoch end: per-epoch averaging; at the end: the
    final model (averaged, or the ps center) is left in every trainer's model. The
    per-step schedules are in :class:`ScheduledExchangeCallback`.
    """

    def __init__(self, strategy: ExchangeStrategy) -> None:
        super().__init__()
        self.strategy = strategy

    def on_train_begin(self, logs: dict[str, Any] | None = None) -> None:
        """Synchronise the initial state."""
        if getattr(self.model, "jit_compile", False):
            raise ConfigError(
                "tfyarn exchange strategies run through tf.numpy_function, which XLA cannot "
                "compile: use model.compile(..., jit_compile=False)"
            )
        # Not begin(): the checkpoint callback, first in the list, restored already.
        self.strategy.synchronise_start(self.model)
        self._seen = self._iterations()

    def _iterations(self) -> int:
        return int(np.asarray(self.model.optimizer.iterations))

    def _catch_up(self) -> None:
        """Tell the algorithm how many optimizer steps ran since the last call.

        Counted with the optimizer's iteration counter: with ``steps_per_execution > 1``
        Keras reports batches in groups, and its batch index overshoots on a short last
        group.
        """
        now = self._iterations()
        steps, self._seen = now - self._seen, now
        if steps > 0:
            self.strategy.step_end(self.model, steps)

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        """Epoch schedule."""
        self._catch_up()
        self.strategy.epoch_end(self.model)

    def on_train_end(self, logs: dict[str, Any] | None = None) -> None:
        """Final model."""
        self._catch_up()
        self.strategy.end(self.model)


class ScheduledExchangeCallback(ExchangeCallback):
    """:class:`ExchangeCallback` plus the per-step schedule (EASGD, ADAG, averaging every k).

    Only algorithms with a step schedule get it: a batch hook makes Keras wait for every
    step's logs before dispatching the next step, a cost the others need not pay.
    """

    def on_train_batch_end(self, batch: int, logs: dict[str, Any] | None = None) -> None:
        """Step schedule."""
        self._catch_up()


class MetricAverageCallback(keras.callbacks.Callback):
    """Replace each epoch's metrics (loss, accuracy, val_*) by their mean over trainers."""

    def __init__(self, strategy: ExchangeStrategy) -> None:
        super().__init__()
        self.strategy = strategy

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        """Average ``logs`` in place (every trainer must log the same keys)."""
        if not logs or self.strategy.size == 1:
            return
        keys = sorted(k for k, v in logs.items() if np.ndim(v) == 0)
        values = np.array([float(logs[k]) for k in keys], np.float64)
        avg = self.strategy.allreduce(values, average=True)
        for k, v in zip(keys, avg, strict=True):
            logs[k] = float(v)


def callbacks(strategy: ExchangeStrategy, average_metrics: bool = True) -> list[Any]:
    """The callbacks ``model.fit`` needs under ``strategy`` (pass them all).

    With checkpoints on, a :class:`~tfyarn.exchange.keras_checkpoint.CheckpointCallback`
    comes first: its ``on_train_begin`` restores the resume point on every rank before
    :class:`ExchangeCallback`'s synchronises the start (rank 0's broadcast or ps INIT), so
    every rank starts from the checkpoint.
    """
    scheduled = strategy.algorithm.has_step_schedule
    out: list[Any] = [(ScheduledExchangeCallback if scheduled else ExchangeCallback)(strategy)]
    if strategy.checkpoint is not None:
        from tfyarn.exchange.keras_checkpoint import CheckpointCallback

        out.insert(
            0,
            CheckpointCallback(
                strategy.checkpoint,
                rank=strategy.rank,
                attempt=strategy.attempt,
                resume=strategy.resume,
                before_write=strategy.snapshot_parameter_servers,
                trainers=strategy.size,
            ),
        )
    if average_metrics:
        out.append(MetricAverageCallback(strategy))
    return out
