"""Checkpoint and resume inside Keras ``model.fit``, chosen by tfyarn, not hand-wired.

:class:`CheckpointCallback` restores the attempt's resume point when training begins
(weights, optimizer variables, and ``model.fit``'s starting epoch, so the user passes no
``initial_epoch``), writes a checkpoint from rank 0 every ``every_steps`` steps or
``every_seconds`` seconds (and at each epoch end when neither is set), and stops
``model.fit`` once the run's total step count is reached. The total is what matters on a
resume mid-epoch: the shard is resumed at the checkpoint's position (``ctx.dataset``
skips its ``shard_position`` batches), Keras' epoch counter restarts at the checkpoint's
epoch, and so the resumed run trains on exactly the batches the interrupted one had left; its
Keras epoch boundaries are shifted by the steps the checkpoint was into its epoch.

The saving and restoring itself is :class:`~tfyarn.exchange.checkpoint.Checkpointer`'s,
which a GradientTape loop's hooks (``ExchangeStrategy.begin``/``step_end``) drive too;
this module only maps Keras' callbacks onto it.
"""

from __future__ import annotations

from typing import Any

import keras

from tfyarn.exchange.checkpoint import (
    BeforeWrite,
    Checkpoint,
    Checkpointer,
    CheckpointPolicy,
    optimizer_variables,
)

__all__ = ["CheckpointCallback"]


class CheckpointCallback(keras.callbacks.Callback):
    """Resume at the attempt's checkpoint; checkpoint as ``policy`` says (rank 0 writes).

    Parameters
    ----------
    policy, rank, attempt, resume, before_write
        As :class:`~tfyarn.exchange.checkpoint.Checkpointer` takes them: only rank 0
        writes, every rank restores ``resume`` (decided once per attempt).

    Attributes
    ----------
    checkpointer : Checkpointer
        The shared save/restore logic this callback drives.
    """

    def __init__(
        self,
        policy: CheckpointPolicy,
        *,
        rank: int,
        attempt: int,
        resume: Checkpoint | None,
        before_write: BeforeWrite | None = None,
        trainers: int = 0,
    ) -> None:
        super().__init__()
        self.checkpointer = Checkpointer(
            policy, rank=rank, attempt=attempt, resume=resume, before_write=before_write,
            trainers=trainers,
        )  # fmt: skip
        self._total: int | None = None
        self._seen_in_epoch = 0

    @property
    def global_step(self) -> int:
        """Steps since the start of training, over all attempts."""
        return self.checkpointer.global_step

    @property
    def write_seconds(self) -> list[float]:
        """Seconds each checkpoint write took on this trainer (rank 0 only writes)."""
        return self.checkpointer.write_seconds

    def _variables(self) -> tuple[list[Any], list[Any]]:
        optimizer = getattr(self.model, "optimizer", None)
        return list(self.model.weights), list(optimizer.variables) if optimizer else []

    # -- restore -------------------------------------------------------------------------
    def on_train_begin(self, logs: dict[str, Any] | None = None) -> None:
        """Restore the resume point and start ``model.fit`` at its epoch."""
        params = self.params or {}
        steps_per_epoch = int(params.get("steps") or 0)
        epochs = params.get("epochs")
        self.checkpointer.steps_per_epoch = steps_per_epoch or None
        if steps_per_epoch and epochs:
            self._total = int(epochs) * steps_per_epoch
        model = self.model
        if self.checkpointer.resume is None:
            return
        optimizer = getattr(model, "optimizer", None)
        saved = self.checkpointer.resume.optimizer
        opt_vars = optimizer_variables(optimizer, list(model.trainable_variables), saved)
        self.checkpointer.restore(list(model.weights), opt_vars)
        if steps_per_epoch:
            # Keras reads this after on_train_begin (the way BackupAndRestore resumes).
            model._initial_epoch = self.checkpointer.position // steps_per_epoch

    # -- progress and saving ----------------------------------------------------------
    def on_epoch_begin(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        """Restart the count of batches seen in this epoch."""
        self._seen_in_epoch = 0

    def on_train_batch_end(self, batch: int, logs: dict[str, Any] | None = None) -> None:
        """Count the steps run; checkpoint when due; stop at the run's total step count."""
        # ``batch`` is the index of the last step run (several with steps_per_execution).
        done = batch + 1 - self._seen_in_epoch
        self._seen_in_epoch = batch + 1
        self.checkpointer.step(*self._variables(), steps=done)
        if self._total is not None and self.checkpointer.position >= self._total:
            self.model.stop_training = True

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        """Checkpoint at the epoch end when the policy has no interval."""
        self.checkpointer.epoch_end(*self._variables())

    def on_train_end(self, logs: dict[str, Any] | None = None) -> None:
        """Checkpoint the finished state: a restart after the last step redoes nothing."""
        self.checkpointer.finish(*self._variables())

    def save(self) -> None:
        """Write a checkpoint of the current state now (rank 0; others only note it)."""
        self.checkpointer.save(*self._variables())
