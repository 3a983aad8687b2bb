"""Horovod's Keras callbacks on tfyarn (``hvd.callbacks.*``).

:class:`BroadcastGlobalVariablesCallback` broadcasts at the start of training (Horovod
does it after the first batch, because its optimizers create their state lazily; Keras 3
lets every rank start from the same state before the first step). The learning-rate
callbacks set ``optimizer.learning_rate`` between steps and honour momentum correction by
rescaling SGD's momentum buffers, which Keras 3 keeps as variables.
"""

from __future__ import annotations

import numbers
from collections.abc import Callable
from typing import Any

import keras
import numpy as np

from tfyarn.errors import ConfigError
from tfyarn.exchange import keras as exchange_keras
from tfyarn.horovod._checks import check_unsupported
from tfyarn.horovod._state import require_state
from tfyarn.horovod._tf_collectives import broadcast_variables

__all__ = [
    "BroadcastGlobalVariablesCallback",
    "LearningRateScheduleCallback",
    "LearningRateWarmupCallback",
    "MetricAverageCallback",
]


class BroadcastGlobalVariablesCallback(keras.callbacks.Callback):
    """Start every rank from rank ``root_rank``'s weights and optimizer state.

    tfyarn's ring runs inside ``model.fit`` through ``tf.numpy_function``, which XLA
    cannot compile: a model compiled with ``jit_compile="auto"`` (Keras' default, which
    picks XLA) gets its train step rebuilt without XLA here, and says so.
    """

    def __init__(self, root_rank: int = 0, device: str = "") -> None:
        super().__init__()
        check_unsupported("BroadcastGlobalVariablesCallback", device=device)
        self.root_rank = root_rank

    def on_train_begin(self, logs: dict[str, Any] | None = None) -> None:
        """Broadcast the model's weights and the optimizer's built state."""
        model = self.model
        if getattr(model, "jit_compile", False):
            print(
                "tfyarn.horovod: model.fit runs without XLA (jit_compile=False): the "
                "all-reduce runs in tf.numpy_function, which XLA cannot compile",
                flush=True,
            )
            model.jit_compile = False
            model.make_train_function(force=True)
        optimizer: Any = getattr(model, "optimizer", None)
        extra = list(optimizer.variables) if getattr(optimizer, "built", False) else []
        broadcast_variables([*model.weights, *extra], self.root_rank)


class MetricAverageCallback(exchange_keras.MetricAverageCallback):
    """Replace each epoch's metrics by their mean over every rank (before other callbacks
    read them: put it before them in the list)."""

    def __init__(self, device: str = "") -> None:
        check_unsupported("MetricAverageCallback", device=device)
        strategy, _ = require_state()
        super().__init__(strategy)


Multiplier = Callable[[float], float]


class LearningRateScheduleCallback(keras.callbacks.Callback):
    """Set ``lr = initial_lr * multiplier(epoch)`` for ``start_epoch <= epoch < end_epoch``.

    Parameters
    ----------
    initial_lr : float
        The learning rate the multiplier scales.
    multiplier : float or callable
        A constant, or ``multiplier(epoch)`` (a fractional epoch when not ``staircase``).
    start_epoch, end_epoch : int, optional
        The epochs it acts in (``end_epoch`` excluded; None: to the end).
    staircase : bool
        Change once per epoch (at its start), else before every batch.
    momentum_correction : bool
        When the learning rate changes, rescale SGD's momentum buffers by new/old for the
        next step (Goyal et al. 2017), as Horovod does.
    steps_per_epoch : int, optional
        Batches per epoch, for fractional epochs; default Keras' ``params["steps"]``.
    verbose : int
        Print the learning rate at each epoch end when it changed.
    """

    def __init__(
        self,
        initial_lr: float,
        multiplier: float | Multiplier,
        start_epoch: int = 0,
        end_epoch: int | None = None,
        staircase: bool = True,
        momentum_correction: bool = True,
        steps_per_epoch: int | None = None,
        verbose: int = 0,
    ) -> None:
        super().__init__()
        self.initial_lr = float(initial_lr)
        if isinstance(multiplier, numbers.Number):
            constant = float(multiplier)
            self.multiplier: Multiplier = lambda epoch: constant
        elif callable(multiplier):
            self.multiplier = multiplier
        else:
            raise ConfigError(f"multiplier must be a number or a function, got {multiplier!r}")
        self.start_epoch = start_epoch
        self.end_epoch = end_epoch
        self.staircase = staircase
        self.momentum_correction = momentum_correction
        self.steps_per_epoch = steps_per_epoch
        self.verbose = verbose
        self._epoch = 0
        self._epoch_start_lr: float | None = None

    def _optimizer(self) -> Any:
        optimizer = self.model.optimizer
        if isinstance(
            getattr(optimizer, "_learning_rate", None),
            keras.optimizers.schedules.LearningRateSchedule,
        ):
            raise ConfigError(
                f"{type(self).__name__} sets the learning rate, but the optimizer has a "
                "LearningRateSchedule: give the optimizer a number, or drop the callback"
            )
        return optimizer

    def on_train_begin(self, logs: dict[str, Any] | None = None) -> None:
        """Check the optimizer and the step count before the first step."""
        optimizer = self._optimizer()
        momentum = float(getattr(optimizer, "momentum", 0.0) or 0.0)
        if (
            self.momentum_correction
            and momentum
            and not isinstance(optimizer, keras.optimizers.SGD)
        ):
            raise ConfigError(
                f"{type(self).__name__}(momentum_correction=True) rescales SGD's momentum; "
                f"{type(optimizer).__name__} keeps no such buffer: pass "
                "momentum_correction=False"
            )
        if not self.staircase and self.steps_per_epoch is None:
            self.steps_per_epoch = self.params.get("steps")
            if not self.steps_per_epoch:
                raise ConfigError(
                    f"{type(self).__name__} needs the number of batches per epoch: pass "
                    "steps_per_epoch=..."
                )

    def on_epoch_begin(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        """Remember the epoch (Keras gives batches their index within it)."""
        self._epoch = epoch
        self._epoch_start_lr = self._current_lr()

    def _current_lr(self) -> float:
        return float(np.asarray(self.model.optimizer.learning_rate))

    def _set_lr(self, lr: float) -> None:
        optimizer = self._optimizer()
        old = self._current_lr()
        if lr == old:
            return
        optimizer.learning_rate = lr
        if (
            self.momentum_correction
            and old > 0
            and isinstance(optimizer, keras.optimizers.SGD)
            and optimizer.momentum
            and optimizer.built
        ):
            # Keras' SGD keeps lr inside its momentum buffer (m = momentum*m - lr*g):
            # scaling the buffer by new/old is Horovod's momentum *= new/old for one step.
            for m in optimizer.momentums:
                m.assign(m * (lr / old))

    def on_train_batch_begin(self, batch: int, logs: dict[str, Any] | None = None) -> None:
        """Set the learning rate for this batch."""
        if self.staircase and batch != 0:
            return
        if self._epoch < self.start_epoch or (
            self.end_epoch is not None and self._epoch >= self.end_epoch
        ):
            return
        epoch = float(self._epoch)
        if not self.staircase:
            assert self.steps_per_epoch  # checked in on_train_begin
            epoch += batch / self.steps_per_epoch
        self._set_lr(self.initial_lr * float(self.multiplier(epoch)))

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        """Log the learning rate (Keras' ``lr`` entry, as Horovod does)."""
        lr = self._current_lr()
        if logs is not None:
            logs["lr"] = lr
        if self.verbose and lr != self._epoch_start_lr:
            print(f"Epoch {epoch + 1}: {type(self).__name__} set the learning rate to {lr:.6g}.")


class LearningRateWarmupCallback(LearningRateScheduleCallback):
    """Ramp the learning rate from ``initial_lr / size`` to ``initial_lr`` over
    ``warmup_epochs`` (Goyal et al. 2017), changing it before every batch.

    ``initial_lr`` is the rate for all ranks together (usually the single-process rate
    times ``hvd.size()``).
    """

    def __init__(
        self,
        initial_lr: float,
        warmup_epochs: int = 5,
        momentum_correction: bool = True,
        steps_per_epoch: int | None = None,
        verbose: int = 0,
    ) -> None:
        _, topo = require_state()
        ranks = topo.size

        def multiplier(epoch: float) -> float:
            return 1.0 / ranks * (epoch * (ranks - 1) / warmup_epochs + 1)

        super().__init__(
            initial_lr, multiplier, start_epoch=0, end_epoch=warmup_epochs, staircase=False,
            momentum_correction=momentum_correction, steps_per_epoch=steps_per_epoch,
            verbose=verbose,
        )  # fmt: skip
        self.warmup_epochs = warmup_epochs

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        """Say when the warm-up is over (with ``verbose``)."""
        super().on_epoch_end(epoch, logs)
        if self.verbose and epoch == self.warmup_epochs - 1:
            print(f"Epoch {epoch + 1}: finished the learning-rate warm-up.")
