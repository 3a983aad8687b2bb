"""Trainer checkpoints: the file format, the resume rule, and resume inside ``model.fit``.

The reference for resume: a run interrupted mid-epoch and resumed from its checkpoint
ends with the same weights as the same run uninterrupted (same data order, SGD), and
trains exactly as many steps.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

import numpy as np
import pytest

from tfyarn.errors import ConfigError
from tfyarn.exchange.checkpoint import (
    Checkpoint,
    Checkpointer,
    CheckpointMismatchError,
    CheckpointPolicy,
    check_fits,
    checkpoint_files,
    read_checkpoint,
    resume_point,
    write_checkpoint,
)
from tfyarn.exchange.tensors import ArrayVariable


def _ckpt(global_step: int, attempt: int = 1, scale: float = 1.0) -> Checkpoint:
    w = [np.full((3, 2), scale, np.float32), np.arange(2, dtype=np.float32)]
    return Checkpoint(
        epoch=global_step // 10,
        step=global_step % 10,
        global_step=global_step,
        attempt=attempt,
        weights=w,
        optimizer=[np.array(global_step, np.int64)],
    )


def test_round_trip_keeps_every_field(tmp_path: Path) -> None:
    path = write_checkpoint(tmp_path, _ckpt(23, attempt=2, scale=0.5), keep=3)
    back = read_checkpoint(path)
    assert (back.epoch, back.step, back.global_step, back.attempt) == (2, 3, 23, 2)
    np.testing.assert_array_equal(back.weights[0], np.full((3, 2), 0.5, np.float32))
    assert back.weights[1].dtype == np.float32 and back.optimizer[0].dtype == np.int64
    assert int(back.optimizer[0]) == 23


def test_only_the_newest_are_kept_and_no_temporary_file_stays(tmp_path: Path) -> None:
    for g in (5, 10, 15, 20):
        write_checkpoint(tmp_path, _ckpt(g), keep=2)
    assert [Path(p).name for p in checkpoint_files(tmp_path)] == [
        "ckpt-000000000015.npz",
        "ckpt-000000000020.npz",
    ]
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "ckpt-000000000015.npz",
        "ckpt-000000000020.npz",
    ]


def test_a_killed_writers_temporary_files_are_swept_by_the_next_write(tmp_path: Path) -> None:
    # What a writer SIGKILLed between open and rename leaves: a local one (pid) and a
    # remote one (pid + 8 hex). Someone else's temporary file and our own stay.
    left = [".ckpt-000000000012.npz.4242.tmp", ".ckpt-000000000013.npz.4243.0a1b2c3d.tmp"]
    kept = [".notes.txt.4242.tmp", f".ckpt-000000000099.npz.{os.getpid()}.tmp"]
    for name in left + kept:
        (tmp_path / name).write_bytes(b"PK\x03\x04 torn")
    write_checkpoint(tmp_path, _ckpt(20), keep=2)
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == sorted(["ckpt-000000000020.npz", *kept])


def test_a_torn_checkpoint_is_never_loaded(tmp_path: Path) -> None:
    write_checkpoint(tmp_path, _ckpt(10), keep=5)
    newest = Path(write_checkpoint(tmp_path, _ckpt(20), keep=5))
    newest.write_bytes(newest.read_bytes()[: newest.stat().st_size // 2])  # a torn write
    ckpt, problems = resume_point(tmp_path, attempt=2)
    assert ckpt is not None and ckpt.global_step == 10
    assert len(problems) == 1 and problems[0].startswith("ckpt-000000000020.npz: ")


def test_an_attempt_resumes_only_from_earlier_attempts(tmp_path: Path) -> None:
    write_checkpoint(tmp_path, _ckpt(10, attempt=1), keep=5)
    write_checkpoint(tmp_path, _ckpt(20, attempt=2), keep=5)  # written by attempt 2 itself
    assert resume_point(tmp_path, attempt=1) == (None, [])
    ckpt2, _ = resume_point(tmp_path, attempt=2)
    ckpt3, _ = resume_point(tmp_path, attempt=3)
    assert ckpt2 is not None and ckpt2.global_step == 10
    assert ckpt3 is not None and ckpt3.global_step == 20
    assert resume_point(tmp_path / "missing", attempt=2) == (None, [])


def test_another_model_shape_is_refused_naming_both_shapes() -> None:
    ckpt = _ckpt(4)
    check_fits(ckpt, ckpt.weights, ckpt.optimizer)
    other = [np.zeros((4, 2), np.float32), np.zeros(2, np.float32)]
    with pytest.raises(CheckpointMismatchError) as info:
        check_fits(ckpt, other, None)
    text = str(info.value)
    assert "model weights" in text
    assert "checkpoint [(3, 2):float32, (2,):float32]" in text
    assert "model [(4, 2):float32, (2,):float32]" in text
    assert "new folder" in text


@pytest.mark.parametrize(
    ("every", "expected"),
    [(100, (100, None)), ("100", (100, None)), ("20 steps", (20, None)), ("30s", (None, 30.0)),
     ("5m", (None, 300.0)), ("1.5h", (None, 5400.0)), (None, (None, None))],
)  # fmt: skip
def test_checkpoint_every_parses_steps_and_times(
    every: int | str | None, expected: tuple[int | None, float | None]
) -> None:
    assert CheckpointPolicy.parse_every(every) == expected


@pytest.mark.parametrize("every", ["often", "1.5", "10 minutes", True, "-3"])
def test_a_bad_checkpoint_every_says_what_it_takes(every: object) -> None:
    with pytest.raises(ConfigError, match="checkpoint_every"):
        CheckpointPolicy.parse_every(every)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [({"directory": ""}, "checkpoint_dir"), ({"every_steps": 0}, "steps must be >= 1"),
     ({"every_seconds": 0.0}, "seconds must be > 0"), ({"keep": 0}, "at least 1")],
)  # fmt: skip
def test_policy_refuses_bad_values(kwargs: dict[str, object], message: str) -> None:
    args: dict[str, object] = {"directory": "/tmp/x", **kwargs}
    with pytest.raises(ConfigError, match=message):
        CheckpointPolicy(**args)  # type: ignore[arg-type]


# -- resume inside model.fit -----------------------------------------------------------


class _Interrupt(Exception):
    pass


class _KillAt:
    """A callback that stops the process's training at a global step (a killed role)."""

    def __init__(self, at: int) -> None:
        import keras

        class Kill(keras.callbacks.Callback):
            def __init__(self) -> None:
                super().__init__()
                self.seen = 0

            def on_train_batch_end(self, batch: int, logs: object = None) -> None:
                self.seen += 1
                if self.seen == at:
                    raise _Interrupt

        self.callback = Kill()


EPOCHS, STEPS, BATCH = 3, 8, 16


def _data() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(7)
    x = rng.normal(size=(STEPS * BATCH, 5)).astype(np.float32)
    y = (x @ rng.normal(size=(5, 1))).astype(np.float32)
    return x, y


def _fit(policy: CheckpointPolicy | None, attempt: int, kill_at: int | None) -> tuple:
    """One attempt of a deterministic fit; returns (weights, steps run, callback)."""
    import keras
    import tensorflow as tf

    from tfyarn.exchange.keras_checkpoint import CheckpointCallback

    keras.utils.set_random_seed(3)
    model = keras.Sequential([keras.Input((5,)), keras.layers.Dense(4), keras.layers.Dense(1)])
    model.compile(optimizer=keras.optimizers.SGD(0.05, momentum=0.9), loss="mse")
    resume = resume_point(policy.directory, attempt)[0] if policy else None
    skip = resume.global_step if resume else 0
    x, y = _data()
    ds = tf.data.Dataset.from_tensor_slices((x, y)).batch(BATCH).repeat(EPOCHS).skip(skip)
    callbacks: list[object] = []
    ckpt_cb = None
    if policy:
        ckpt_cb = CheckpointCallback(policy, rank=0, attempt=attempt, resume=resume)
        callbacks.append(ckpt_cb)
    counter = _KillAt(kill_at if kill_at else 10**9)
    callbacks.append(counter.callback)
    with contextlib.suppress(_Interrupt):  # the simulated kill
        model.fit(ds, epochs=EPOCHS, steps_per_epoch=STEPS, callbacks=callbacks, verbose=0)
    return [w.copy() for w in model.get_weights()], counter.callback.seen, ckpt_cb


def test_a_resumed_fit_ends_where_an_uninterrupted_one_does(tmp_path: Path) -> None:
    reference, ref_steps, _ = _fit(None, 1, None)
    assert ref_steps == EPOCHS * STEPS
    policy = CheckpointPolicy(str(tmp_path), every_steps=5)
    # Attempt 1 dies at global step 13 (epoch 1, step 5); its last checkpoint is step 10.
    _, died_after, _ = _fit(policy, 1, kill_at=13)
    assert died_after == 13
    assert [Path(p).name for p in checkpoint_files(tmp_path)] == [
        "ckpt-000000000005.npz",
        "ckpt-000000000010.npz",
    ]
    ckpt = read_checkpoint(checkpoint_files(tmp_path)[-1])
    assert (ckpt.epoch, ckpt.step, ckpt.global_step, ckpt.attempt) == (1, 2, 10, 1)
    resumed, steps2, cb = _fit(policy, 2, None)
    # Exactly the steps left: 3 redone (11-13) plus the 11 never reached.
    assert steps2 == EPOCHS * STEPS - 10
    assert cb is not None and cb.global_step == EPOCHS * STEPS
    for got, want in zip(resumed, reference, strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    # The finished state is checkpointed: a restart after the end redoes nothing.
    final = read_checkpoint(checkpoint_files(tmp_path)[-1])
    assert (final.global_step, final.attempt) == (EPOCHS * STEPS, 2)


def test_a_resume_with_another_trainer_count_carries_the_examples_trained(
    tmp_path: Path,
) -> None:
    """Elastic restarts: the shard position moves, the checkpoint's identity does not."""
    policy = CheckpointPolicy(str(tmp_path), every_steps=4)
    first = Checkpointer(policy, rank=0, attempt=1, resume=None, trainers=2)
    first.steps_per_epoch = 10
    w = [ArrayVariable("w", np.zeros(2, np.float32))]
    o = [ArrayVariable("o", np.zeros(1, np.float32))]
    for _ in range(12):
        first.step(w, o)
    written, _ = resume_point(tmp_path, attempt=2)
    assert written is not None and (written.trainers, written.shard_position) == (2, 12)
    # Two trainers' 12 batches each are one trainer's 24 (of a shard twice as long).
    alone = written.for_trainers(1)
    assert (alone.global_step, alone.shard_position, alone.trainers) == (12, 24, 1)
    assert alone.for_trainers(1) is alone and written.for_trainers(2) is written
    second = Checkpointer(policy, rank=0, attempt=2, resume=alone, trainers=1)
    second.steps_per_epoch = 20
    assert (second.global_step, second.start_step) == (12, 24)
    for _ in range(4):
        second.step(w, o)
    again, _ = resume_point(tmp_path, attempt=3)
    # Named by the global step (newest last, whatever the trainer count), positioned in
    # the one-trainer shard: epoch 1, 8 batches in.
    assert again is not None and (again.global_step, again.shard_position) == (16, 28)
    assert (again.epoch, again.step, again.trainers) == (1, 8, 1)
    # Back to two trainers at the next restart: half the batches of the longer shard.
    assert again.for_trainers(2).shard_position == 14
    # Files of before trainer counts were recorded resume as they always did.
    old = _ckpt(30)
    assert old.for_trainers(3) is old and old.shard_position == 30
