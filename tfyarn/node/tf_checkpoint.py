"""Checkpoints of TF-native custom loops (``strategy="ps"`` / ``"mwms"``) that resume.

:func:`checkpoint_manager` (``ctx.checkpoint_manager(...)``) wraps
``tf.train.CheckpointManager`` over the job's ``checkpoint_dir``, with tfyarn's rules:

- **who writes**: the chief (``ctx.is_chief``) into the job's folder. Under
  ``MultiWorkerMirroredStrategy`` every worker must call ``save`` (saving runs
  collectives), so the others write into a private temporary folder, as TensorFlow's
  multi-worker guide prescribes; under ``ParameterServerStrategy`` only the chief runs the
  loop (the coordinator saves the variables from the parameter servers).
- **what is restored**: on a restarted attempt (``ctx.attempt > 1``) the newest checkpoint
  of the job's folder, at once, by every worker; never on a first attempt. TensorFlow
  writes a checkpoint's data files before the ``checkpoint`` index that names it, so a
  torn checkpoint is never the latest one; a checkpoint of another model fails the
  restore with TensorFlow's message naming both shapes.
- **how often**: given a ``step_counter``, ``manager.save()`` writes only every
  ``checkpoint_every`` steps (TensorFlow's ``checkpoint_interval``). TensorFlow's
  manager has no time interval: with ``checkpoint_every="30s"`` every ``save()`` writes,
  so call it when due.

Worker preemption under ``ParameterServerStrategy``: TensorFlow's ``ClusterCoordinator``
re-runs the closures of a lost worker on the others and takes the worker back when it
returns; a lost chief or ps ends the attempt, and the restarted attempt resumes here.
"""

from __future__ import annotations

import logging
import os
from typing import TYPE_CHECKING

from tfyarn.errors import ConfigError

if TYPE_CHECKING:
    import tensorflow as tf

    from tfyarn.exchange.checkpoint import CheckpointPolicy

__all__ = ["checkpoint_manager", "non_writer_dir"]

log = logging.getLogger("tfyarn.node.checkpoint")


def checkpoint_manager(
    checkpoint: tf.train.Checkpoint,
    policy: CheckpointPolicy | None,
    *,
    attempt: int,
    is_writer: bool,
    temp_dir: str,
    max_to_keep: int | None = None,
    step_counter: tf.Variable | None = None,
) -> tf.train.CheckpointManager:
    """A ``tf.train.CheckpointManager`` for ``checkpoint``, restored on a restart.

    Parameters
    ----------
    checkpoint : tf.train.Checkpoint
        What to save: the model, its optimizer, a step counter, a dataset iterator ...
    policy : CheckpointPolicy or None
        The job's checkpoints (``ctx.checkpoint``); None raises (see below).
    attempt : int
        The job's attempt; above 1 the newest checkpoint of ``policy.directory`` is
        restored into ``checkpoint`` before this returns.
    is_writer : bool
        Whether this role writes into ``policy.directory`` (the chief); the others
        write into ``temp_dir``.
    temp_dir : str
        Where a non-writer's saves go (a private local folder).
    max_to_keep : int, optional
        Checkpoints kept; default ``policy.keep``.
    step_counter : tf.Variable, optional
        The loop's step counter: ``manager.save()`` then writes only once
        ``policy.every_steps`` steps passed since the last one.

    Returns
    -------
    tf.train.CheckpointManager
        Call ``manager.save()`` after each step (or when a checkpoint is wanted).

    Raises
    ------
    ConfigError
        The job has no checkpoints (``tfyarn.run(checkpoint_dir=...)`` not given).
    """
    if policy is None:
        raise ConfigError(
            "ctx.checkpoint_manager() needs the job's checkpoints: pass "
            "tfyarn.run(checkpoint_dir=..., checkpoint_every=...)"
        )
    from tfyarn import storage

    if not storage.is_local(policy.directory):
        raise ConfigError(
            f"checkpoint_dir={policy.directory}: TensorFlow 2.21 cannot write hdfs:// itself "
            "(its HDFS file system moved to tensorflow-io, which is not built for 2.21), so "
            "ctx.checkpoint_manager() needs a local or shared (NFS) checkpoint_dir; the "
            "exchange strategies' checkpoints, written by tfyarn, do go to HDFS"
        )
    import tensorflow as tf

    directory = policy.directory if is_writer else temp_dir
    interval = policy.every_steps if step_counter is not None else None
    manager = tf.train.CheckpointManager(
        checkpoint,
        directory,
        max_to_keep=max_to_keep if max_to_keep is not None else policy.keep,
        step_counter=step_counter,
        checkpoint_interval=interval,
    )
    if attempt > 1:
        latest = tf.train.latest_checkpoint(policy.directory)
        if latest is None:
            log.info("attempt %d: no TensorFlow checkpoint in %s yet", attempt, policy.directory)
        else:
            checkpoint.restore(latest)
            log.info("attempt %d restored %s", attempt, latest)
    return manager


def non_writer_dir(workdir: str) -> str:
    """A non-chief role's private folder for its (discarded) MWMS saves."""
    return os.path.join(workdir, "tf-checkpoint-temp")
