"""Checkpoint and resume inside Keras ``model.fit``, chosen by tfyarn, not hand-wired.

:class:`CheckpointCallback` restores the attempt's resume point when training begins
(weights, optimizer variables, and ``model.fit``'s starting epoch, so the user passes no
``initial_epoch``), writes a checkpoint from rank 0 every ``every_steps`` steps or
``every_seconds`` seconds (and at each epoch end when neither is set), and stops
``model.fit`` once the run's total step count is reached. The total is what matters on a
resume mid-epoch: the shard is resumed at the checkpoint's position (``ctx.dataset``
skips ``global_step`` batches), Keras' epoch counter restarts at the checkpoint's epoch,
and so the resumed run trains on exactly the batches the interrupted one had left; its
Keras epoch boundaries are shifted by the steps the checkpoint was into its epoch.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import keras
import numpy as np

from tfyarn.exchange.checkpoint import (
    Checkpoint,
    CheckpointPolicy,
    check_fits,
    write_checkpoint,
)

__all__ = ["CheckpointCallback"]

log = logging.getLogger("tfyarn.exchange.checkpoint")


def _values(variables: list[Any]) -> list[np.ndarray]:
    return [np.array(v.numpy(), copy=True) for v in variables]


class CheckpointCallback(keras.callbacks.Callback):
    """Resume at the attempt's checkpoint; checkpoint as ``policy`` says (rank 0 writes).

    Parameters
    ----------
    policy : CheckpointPolicy
        Folder, interval and how many to keep.
    rank : int
        This trainer's rank; only rank 0 writes (every trainer restores).
    attempt : int
        The attempt this run is (1 for the first), recorded in each checkpoint.
    resume : Checkpoint, optional
        What this attempt resumes from (:func:`tfyarn.exchange.checkpoint.resume_point`),
        decided once per attempt so that every trainer restores the same one.
    """

    def __init__(
        self, policy: CheckpointPolicy, *, rank: int, attempt: int, resume: Checkpoint | None
    ) -> None:
        super().__init__()
        self.policy = policy
        self.rank = rank
        self.attempt = attempt
        self.resume = resume
        #: Steps since the start of training, over all attempts.
        self.global_step = resume.global_step if resume is not None else 0
        #: Seconds each checkpoint write took on this trainer (rank 0 only writes).
        self.write_seconds: list[float] = []
        self._steps_per_epoch = 0
        self._total: int | None = None
        self._last_save = time.monotonic()
        self._saved_at = self.global_step
        self._seen_in_epoch = 0

    # -- restore -------------------------------------------------------------------------
    def on_train_begin(self, logs: dict[str, Any] | None = None) -> None:
        params = self.params or {}
        self._steps_per_epoch = int(params.get("steps") or 0)
        epochs = params.get("epochs")
        if self._steps_per_epoch and epochs:
            self._total = int(epochs) * self._steps_per_epoch
        if self.resume is None:
            return
        model = self.model
        optimizer = getattr(model, "optimizer", None)
        if optimizer is not None and not optimizer.built:
            optimizer.build(model.trainable_variables)
        opt_vars = list(optimizer.variables) if optimizer is not None else []
        check_fits(self.resume, _values(model.weights), _values(opt_vars))
        for var, value in zip(model.weights, self.resume.weights, strict=True):
            var.assign(value)
        for var, value in zip(opt_vars, self.resume.optimizer, strict=True):
            var.assign(value)
        if self._steps_per_epoch:
            # Keras reads this after on_train_begin (the way BackupAndRestore resumes).
            model._initial_epoch = self.global_step // self._steps_per_epoch
        log.info(
            "attempt %d resumes from the checkpoint at global step %d (epoch %d, step %d)",
            self.attempt, self.resume.global_step, self.resume.epoch, self.resume.step,
        )  # fmt: skip

    # -- progress and saving ----------------------------------------------------------
    def on_epoch_begin(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        self._seen_in_epoch = 0

    def on_train_batch_end(self, batch: int, logs: dict[str, Any] | None = None) -> None:
        # ``batch`` is the index of the last step run (several with steps_per_execution).
        done = batch + 1 - self._seen_in_epoch
        self._seen_in_epoch = batch + 1
        self.global_step += max(done, 0)
        if self._due():
            self.save()
        if self._total is not None and self.global_step >= self._total:
            self.model.stop_training = True

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        if self.policy.every_steps is None and self.policy.every_seconds is None:
            self.save()

    def on_train_end(self, logs: dict[str, Any] | None = None) -> None:
        if self.global_step != self._saved_at:
            self.save()  # the finished state: a restart after the last step redoes nothing

    def _due(self) -> bool:
        p = self.policy
        if p.every_steps is not None and self.global_step - self._saved_at >= p.every_steps:
            return True
        return p.every_seconds is not None and time.monotonic() - self._last_save >= (
            p.every_seconds
        )

    def save(self) -> None:
        """Write a checkpoint of the current state now (rank 0; others only note it)."""
        self._saved_at, self._last_save = self.global_step, time.monotonic()
        if self.rank != 0:
            return
        began = time.perf_counter()
        optimizer = getattr(self.model, "optimizer", None)
        spe = self._steps_per_epoch or max(self.global_step, 1)
        ckpt = Checkpoint(
            epoch=self.global_step // spe,
            step=self.global_step % spe,
            global_step=self.global_step,
            attempt=self.attempt,
            weights=_values(self.model.weights),
            optimizer=_values(list(optimizer.variables)) if optimizer is not None else [],
        )
        write_checkpoint(self.policy.directory, ckpt, self.policy.keep)
        self.write_seconds.append(time.perf_counter() - began)
