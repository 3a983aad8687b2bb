"""Trainer checkpoints: what a restarted attempt needs to continue a training run.

A checkpoint holds a trainer's model weights, its optimizer's variables and where it was:
epochs completed, steps into the current epoch, the global step (which is also the
position in this trainer's shard: ``ctx.dataset`` skips that many batches on resume) and
the attempt that wrote it. One file per checkpoint, ``ckpt-<global step>.npz``, written by
one writer (rank 0) to a temporary name, fsynced and renamed, so that a reader sees a
whole checkpoint or none. A torn or unreadable file is skipped in favour of the one
before it; only the newest ``keep`` are kept.

Resume is decided per attempt, never by "the newest file now": attempt *a* resumes from
the newest complete checkpoint written by an attempt before *a*. Every trainer of attempt
*a* therefore picks the same one, even when rank 0 has already written newer checkpoints
of attempt *a* by the time a slower trainer looks (local-update algorithms such as EASGD
do not wait for each other at every step).

:class:`Checkpointer` is the part every training loop shares: restore into variables,
count steps, write when due (rank 0), write the finished state. The Keras callback
(:mod:`tfyarn.exchange.keras_checkpoint`) and a GradientTape loop's hooks
(``ExchangeStrategy.begin``/``step_end``/``end``) both drive one. This module is pure
NumPy: any :class:`~tfyarn.exchange.tensors.Variable` (Keras, TensorFlow, NumPy) works.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from tfyarn import storage
from tfyarn.errors import ConfigError, TFYarnError
from tfyarn.exchange import tensors
from tfyarn.exchange.npzfiles import (
    file_name,
    load_npz,
    matching_files,
    prune,
    raw_bytes,
    sweep_temporaries,
    write_atomically,
)
from tfyarn.exchange.ps.wire import np_dtype
from tfyarn.exchange.tensors import Variable

__all__ = [
    "BeforeWrite",
    "Checkpoint",
    "CheckpointMismatchError",
    "CheckpointPolicy",
    "Checkpointer",
    "check_fits",
    "checkpoint_files",
    "describe_shapes",
    "load_resume_point",
    "optimizer_variables",
    "read_checkpoint",
    "resume_point",
    "write_checkpoint",
]

log = logging.getLogger("tfyarn.exchange.checkpoint")

_NAME = re.compile(r"^ckpt-(\d{12})\.npz$")
#: Format version written in every checkpoint's header.
FORMAT = 1


class CheckpointMismatchError(TFYarnError):
    """A checkpoint does not fit the model it should be loaded into (other shapes)."""


@dataclass(frozen=True)
class CheckpointPolicy:
    """Where and how often trainers checkpoint.

    Parameters
    ----------
    directory : str
        Folder of the checkpoints (shared storage on a real cluster: every trainer of a
        restarted attempt reads it).
    every_steps : int, optional
        Checkpoint every this many optimizer steps.
    every_seconds : float, optional
        Checkpoint when this many seconds passed since the last one (checked after each
        step). With both, whichever comes first; with neither, only at epoch ends.
    keep : int
        Checkpoints kept (the newest; at least 1).
    """

    directory: str
    every_steps: int | None = None
    every_seconds: float | None = None
    keep: int = 2

    def __post_init__(self) -> None:
        if not self.directory:
            raise ConfigError("checkpoint_dir must name a folder")
        if self.every_steps is not None and self.every_steps < 1:
            raise ConfigError(f"checkpoint_every steps must be >= 1, not {self.every_steps}")
        if self.every_seconds is not None and not self.every_seconds > 0:
            raise ConfigError(f"checkpoint_every seconds must be > 0, not {self.every_seconds}")
        if self.keep < 1:
            raise ConfigError(f"keep at least 1 checkpoint, not {self.keep}")

    @staticmethod
    def parse_every(every: int | float | str | None) -> tuple[int | None, float | None]:
        """``checkpoint_every`` as (steps, seconds): ``100`` steps, ``"30s"``/``"5m"``.

        Raises
        ------
        ConfigError
            For anything else, with the accepted forms.
        """
        if every is None:
            return None, None
        if isinstance(every, bool):
            raise ConfigError(f"checkpoint_every={every!r}: give steps (100) or time ('30s')")
        if isinstance(every, int):
            return every, None
        text = str(every).strip().lower()
        match = re.fullmatch(r"(\d+(?:\.\d+)?)\s*(s|m|h|steps?)?", text)
        if not match:
            raise ConfigError(
                f"checkpoint_every={every!r} is neither a step count (100, '100 steps') nor "
                "a time ('30s', '5m', '1h')"
            )
        number, unit = float(match.group(1)), match.group(2) or "steps"
        if unit.startswith("step"):
            if not number.is_integer():
                raise ConfigError(f"checkpoint_every={every!r}: a step count is a whole number")
            return int(number), None
        return None, number * {"s": 1.0, "m": 60.0, "h": 3600.0}[unit]


@dataclass(frozen=True)
class Checkpoint:
    """One trainer checkpoint.

    Attributes
    ----------
    epoch : int
        Epochs completed when it was written.
    step : int
        Steps into epoch ``epoch`` (0 at an epoch boundary).
    global_step : int
        Steps since the start of training (all attempts): the shard position.
    attempt : int
        The attempt (1, 2, ...) that wrote it.
    weights, optimizer : list of ndarray
        The model's weights (``model.weights`` order) and optimizer variables.
    trainers : int
        How many trainers the writing attempt had (0: not recorded, older files).
    position : int or None
        Batches into each trainer's shard (None: ``global_step``, the same as long as
        the trainer count never changed). An attempt with another trainer count (an
        elastic restart, ``min_workers``) reads it through :meth:`for_trainers`.
    """

    epoch: int
    step: int
    global_step: int
    attempt: int
    weights: list[np.ndarray]
    optimizer: list[np.ndarray]
    trainers: int = 0
    position: int | None = None

    @property
    def shard_position(self) -> int:
        """Batches of its shard each trainer had trained on: where the data resumes."""
        return self.global_step if self.position is None else self.position

    def for_trainers(self, trainers: int) -> Checkpoint:
        """This checkpoint as an attempt with ``trainers`` trainers resumes it.

        The same weights, optimizer state and global step (the checkpoint's identity:
        file name, ps snapshot tag). With another trainer count the data was spread over
        the trainers anew, so the shard position carries over as the examples trained on:
        ``position * trainers_then / trainers_now`` batches of the new, larger or smaller,
        shards. The epoch in progress then continues in the new shards' order: a few of
        its rows may come twice, or not, in that epoch (Horovod's elastic samplers make
        the same trade).
        """
        if not self.trainers or self.trainers == trainers or trainers < 1:
            return self
        moved = round(self.shard_position * self.trainers / trainers)
        return dataclasses.replace(self, position=moved, trainers=trainers)


def describe_shapes(arrays: Sequence[np.ndarray]) -> str:
    """A short text of shapes and dtypes, as error messages name them."""
    return "[" + ", ".join(f"{tuple(a.shape)}:{a.dtype}" for a in arrays) + "]"


def _layout(arrays: Sequence[np.ndarray]) -> list[dict[str, object]]:
    return [{"shape": list(a.shape), "dtype": str(a.dtype)} for a in arrays]


def write_checkpoint(folder: str | os.PathLike[str], ckpt: Checkpoint, keep: int) -> str:
    """Write ``ckpt`` atomically into ``folder``; delete all but the newest ``keep``.

    ``folder`` is a local path or a cluster file system URL (``hdfs://``).
    """
    path = os.fspath(folder)
    header = {
        "format": FORMAT,
        "epoch": ckpt.epoch,
        "step": ckpt.step,
        "global_step": ckpt.global_step,
        "attempt": ckpt.attempt,
        "trainers": ckpt.trainers,
        "position": ckpt.shard_position,
        "weights": _layout(ckpt.weights),
        "optimizer": _layout(ckpt.optimizer),
    }
    arrays = {f"w{i}": raw_bytes(a) for i, a in enumerate(ckpt.weights)}
    arrays.update({f"o{i}": raw_bytes(a) for i, a in enumerate(ckpt.optimizer)})
    final = write_atomically(
        storage.join(path, f"ckpt-{ckpt.global_step:012d}.npz"), arrays, header
    )
    prune(checkpoint_files(path), keep)
    # A writer killed mid-write (an earlier attempt's) left its temporary file behind.
    sweep_temporaries(path, _NAME)
    return final


def checkpoint_files(folder: str | os.PathLike[str]) -> list[str]:
    """The checkpoint files in ``folder``, oldest first (none if it cannot be listed)."""
    return matching_files(folder, _NAME)


def _arrays(z: Any, prefix: str, layout: list[dict[str, Any]]) -> list[np.ndarray]:
    # ``z``: an open NpzFile; ``layout``: the header's shapes and dtypes, in order.
    return [
        z[f"{prefix}{i}"].view(np_dtype(str(spec["dtype"]))).reshape(spec["shape"]).copy()
        for i, spec in enumerate(layout)
    ]


def read_checkpoint(path: str | os.PathLike[str]) -> Checkpoint:
    """Load one checkpoint file (raises on a torn, foreign or newer-format file)."""
    with load_npz(path) as z:
        meta = json.loads(z["meta"].tobytes())
        if meta.get("format") != FORMAT:
            raise ValueError(f"checkpoint format {meta.get('format')!r}, expected {FORMAT}")
        return Checkpoint(
            epoch=int(meta["epoch"]),
            step=int(meta["step"]),
            global_step=int(meta["global_step"]),
            attempt=int(meta["attempt"]),
            weights=_arrays(z, "w", meta["weights"]),
            optimizer=_arrays(z, "o", meta["optimizer"]),
            trainers=int(meta.get("trainers", 0)),
            position=int(meta["position"]) if "position" in meta else None,
        )


def resume_point(
    folder: str | os.PathLike[str], attempt: int
) -> tuple[Checkpoint | None, list[str]]:
    """The checkpoint attempt ``attempt`` resumes from, and what was wrong with newer ones.

    The newest readable checkpoint written by an earlier attempt; None on a first attempt
    or when there is none (training starts from scratch).
    """
    problems: list[str] = []
    if attempt <= 1:
        return None, problems
    for path in reversed(checkpoint_files(folder)):
        try:
            ckpt = read_checkpoint(path)
        except Exception as exc:  # torn write, foreign file: fall back to the one before
            problems.append(f"{file_name(path)}: {exc}")
            continue
        if ckpt.attempt < attempt:
            return ckpt, problems
    return None, problems


def check_fits(
    ckpt: Checkpoint, weights: Sequence[np.ndarray], optimizer: Sequence[np.ndarray] | None
) -> None:
    """Raise :class:`CheckpointMismatchError` unless ``ckpt`` fits these variables.

    ``optimizer`` None skips the optimizer check (it is not built yet).
    """
    pairs: list[tuple[str, Sequence[np.ndarray], Sequence[np.ndarray]]] = [
        ("model weights", ckpt.weights, weights)
    ]
    if optimizer is not None:
        pairs.append(("optimizer variables", ckpt.optimizer, optimizer))
    for what, saved, now in pairs:
        if [(a.shape, a.dtype) for a in saved] != [(b.shape, b.dtype) for b in now]:
            raise CheckpointMismatchError(
                f"the checkpoint at global step {ckpt.global_step} does not fit this model's "
                f"{what}: checkpoint {describe_shapes(saved)} vs model "
                f"{describe_shapes(list(now))}; point checkpoint_dir at a new folder for a "
                "changed model"
            )


def load_resume_point(policy: CheckpointPolicy | None, attempt: int, who: str) -> Checkpoint | None:
    """What attempt ``attempt`` of role ``who`` resumes from under ``policy`` (None: scratch).

    :func:`resume_point` with its problems (torn or foreign newer files) logged as
    warnings naming ``who``; a role computes it once and keeps it.
    """
    if policy is None:
        return None
    ckpt, problems = resume_point(policy.directory, attempt)
    for problem in problems:
        log.warning("%s: skipping unreadable checkpoint %s", who, problem)
    if ckpt is not None:
        log.info(
            "%s: attempt %d resumes from the checkpoint at global step %d of attempt %d",
            who, attempt, ckpt.global_step, ckpt.attempt,
        )  # fmt: skip
    return ckpt


def optimizer_variables(
    optimizer: Any, trainable: Sequence[Variable], saved: Sequence[np.ndarray] | None = None
) -> list[Variable]:
    """The variables of a Keras-style ``optimizer`` (none for None), built if need be.

    A restore needs them before the first step, when Keras would build the optimizer
    lazily: an unbuilt one (``built`` False) is built for ``trainable`` unless its
    variables already match the ``saved`` ones in number (a distributed optimizer whose
    parameter servers run the update never builds its slots, and was saved so).
    """
    if optimizer is None:
        return []
    current = list(optimizer.variables)
    if getattr(optimizer, "built", True) or (saved is not None and len(saved) == len(current)):
        return current
    optimizer.build(list(trainable))
    return list(optimizer.variables)


#: ``before_write(global_step, attempt)``: run by the writer (rank 0) right before each
#: checkpoint is written; the strategy asks its parameter servers for a snapshot there.
BeforeWrite = Callable[[int, int], None]


class Checkpointer:
    """One trainer's checkpoints over a training run: restore, count, write when due.

    Parameters
    ----------
    policy : CheckpointPolicy
        Folder, interval and how many to keep.
    rank : int
        This trainer's rank; only rank 0 writes (every trainer restores and counts).
    attempt : int
        The attempt this run is (1 for the first), recorded in each checkpoint.
    resume : Checkpoint, optional
        What this attempt resumes from (:func:`resume_point`), decided once per attempt
        so that every trainer restores the same one.
    before_write : callable, optional
        See :data:`BeforeWrite`.

    Attributes
    ----------
    global_step : int
        Steps since the start of training, over all attempts.
    position : int
        Batches into this trainer's shard: ``global_step`` unless an elastic restart
        changed the trainer count (:meth:`Checkpoint.for_trainers`).
    steps_per_epoch : int or None
        Set by the loop when known; checkpoints then record epoch and step in it.
    write_seconds : list of float
        Seconds each write took on this trainer (rank 0 only writes).
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
        self.policy = policy
        self.rank = rank
        self.attempt = attempt
        self.resume = resume
        self.before_write = before_write
        self.trainers = trainers
        self.global_step = resume.global_step if resume is not None else 0
        self.position = self.start_step
        self.steps_per_epoch: int | None = None
        self.write_seconds: list[float] = []
        self._last_save = time.monotonic()
        self._saved_at = self.global_step

    @property
    def start_step(self) -> int:
        """The shard position this attempt starts at (0 without a resume point)."""
        return self.resume.shard_position if self.resume is not None else 0

    def restore(
        self, weights: Sequence[Variable], optimizer: Sequence[Variable] | None
    ) -> Checkpoint | None:
        """Put the resume point into ``weights`` (and ``optimizer``'s variables, if given).

        Returns
        -------
        Checkpoint or None
            What was restored (None: nothing to resume, the variables are untouched).

        Raises
        ------
        CheckpointMismatchError
            The checkpoint is of another model (both shapes named); nothing is assigned.
        """
        ckpt = self.resume
        if ckpt is None:
            return None
        opt = list(optimizer) if optimizer is not None else None
        check_fits(ckpt, tensors.read(weights), tensors.read(opt) if opt is not None else None)
        tensors.assign(weights, ckpt.weights)
        if opt is not None:
            tensors.assign(opt, ckpt.optimizer)
        log.info(
            "attempt %d restored the checkpoint at global step %d (epoch %d, step %d)",
            self.attempt, ckpt.global_step, ckpt.epoch, ckpt.step,
        )  # fmt: skip
        return ckpt

    def due(self) -> bool:
        """Whether the policy's step or time interval passed since the last checkpoint."""
        p = self.policy
        if p.every_steps is not None and self.global_step - self._saved_at >= p.every_steps:
            return True
        return p.every_seconds is not None and time.monotonic() - self._last_save >= (
            p.every_seconds
        )

    def step(
        self, weights: Sequence[Variable], optimizer: Sequence[Variable], steps: int = 1
    ) -> None:
        """Count ``steps`` optimizer steps; checkpoint if that made one due."""
        self.global_step += max(steps, 0)
        self.position += max(steps, 0)
        if self.due():
            self.save(weights, optimizer)

    def epoch_end(self, weights: Sequence[Variable], optimizer: Sequence[Variable]) -> None:
        """At an epoch end: checkpoint when the policy has no interval (epochs are it)."""
        if self.policy.every_steps is None and self.policy.every_seconds is None:
            self.save(weights, optimizer)

    def finish(self, weights: Sequence[Variable], optimizer: Sequence[Variable]) -> None:
        """After the last step: checkpoint the finished state (a later restart redoes nothing)."""
        if self.global_step != self._saved_at:
            self.save(weights, optimizer)

    def save(self, weights: Sequence[Variable], optimizer: Sequence[Variable]) -> str | None:
        """Write a checkpoint of the variables now (rank 0; the others only note it).

        Returns
        -------
        Path or None
            The file written (None on other ranks).
        """
        self._saved_at, self._last_save = self.global_step, time.monotonic()
        if self.rank != 0:
            return None
        began = time.perf_counter()
        if self.before_write is not None:
            self.before_write(self.global_step, self.attempt)
        spe = self.steps_per_epoch
        # Without a known epoch length the whole run counts as epoch 0.
        epoch, step = divmod(self.position, spe) if spe else (0, self.position)
        ckpt = Checkpoint(
            epoch=epoch,
            step=step,
            global_step=self.global_step,
            attempt=self.attempt,
            weights=tensors.read(weights),
            optimizer=tensors.read(optimizer),
            trainers=self.trainers,
            position=self.position,
        )
        path = write_checkpoint(self.policy.directory, ckpt, self.policy.keep)
        self.write_seconds.append(time.perf_counter() - began)
        return path
