"""Checkpoint and resume under the exchange strategies, in-process (``run_local``).

A deterministic data-parallel regression (every rank's batch ``g`` is a fixed function
of rank and global step) trains in a GradientTape-style loop driven by the strategy's
hooks (``begin`` / ``step_end`` / ``end``): attempt 1 dies at step ``KILL`` (a rank
raises, the job fails), attempt 2 resumes from the last checkpoint written before it.
The reference is the same run uninterrupted. For ``allreduce`` and ``sync_ps`` (momentum
on the parameter server, so its optimizer slots must come back too) the resumed run ends
with the reference's weights; for ``easgd`` the restored center is the snapshot the ps
took for the checkpoint the trainers resumed from. No TensorFlow: NumPy variables.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tfyarn.errors import RoleFailedError
from tfyarn.exchange import tensors
from tfyarn.exchange.buckets import plan_buckets, unpack
from tfyarn.exchange.checkpoint import CheckpointPolicy, checkpoint_files, read_checkpoint
from tfyarn.exchange.local import LocalContext, run_local
from tfyarn.exchange.ps import SnapshotTag, latest_snapshot, optimizer_config
from tfyarn.exchange.ps.snapshot import snapshot_files
from tfyarn.exchange.strategy import ExchangeStrategy
from tfyarn.exchange.tensors import ArrayVariable

TOTAL, EVERY, KILL, SPE = 14, 3, 8, 5  # steps; checkpoint every 3; attempt 1 dies after 8
LR, MOMENTUM = 0.05, 0.9
OPTS = {"timeout": 20}


class Interrupted(Exception):
    """The simulated loss of worker 1."""


class Model:
    """A linear model ``x @ kernel + bias`` in NumPy variables (what the hooks take)."""

    def __init__(self, inputs: int = 3) -> None:
        rng = np.random.default_rng(0)
        self.trainable_weights = [
            ArrayVariable("kernel", rng.standard_normal((inputs, 2)).astype(np.float32)),
            ArrayVariable("bias", np.zeros(2, np.float32)),
        ]
        self.weights = list(self.trainable_weights)

    def grads(self, rank: int, step: int) -> list[np.ndarray]:
        """The mean-squared-error gradient on rank ``rank``'s batch of global step ``step``."""
        rng = np.random.default_rng(1000 * rank + step)
        x = rng.standard_normal((8, 3)).astype(np.float32)
        y = x @ np.array([[1.0, -2.0], [0.5, 0.0], [3.0, 1.0]], np.float32) + 0.25
        kernel, bias = (v.numpy() for v in self.trainable_weights)
        err = x @ kernel + bias - y
        return [(2 / len(x)) * x.T @ err, 2 * err.mean(axis=0)]


class Momentum:
    """Local SGD with momentum; its state (velocities, iterations) is optimizer state."""

    built = True

    def __init__(self, model: Model, momentum: float = MOMENTUM) -> None:
        self.momentum = momentum
        self.velocity = [ArrayVariable(f"v_{v.name}", np.zeros(v.shape, np.float32))
                         for v in model.trainable_weights]  # fmt: skip
        self.iterations = ArrayVariable("iterations", np.int64(0))
        self.variables = [*self.velocity, self.iterations]

    def apply(self, grads: list[np.ndarray], variables: list[ArrayVariable]) -> None:
        for g, v, w in zip(grads, self.velocity, variables, strict=True):
            v.assign(self.momentum * v.numpy() + g)
            w.assign(w.numpy() - LR * v.numpy())
        self.iterations.assign(self.iterations.numpy() + 1)


def _step(s: ExchangeStrategy, m: Model, opt: Momentum, step: int) -> None:
    """One optimizer step as the strategy's algorithm wants it."""
    grads = m.grads(s.rank, step)
    trainable = m.trainable_weights
    if s.algorithm.gradient_mode == "reduce":
        opt.apply(s.algorithm.exchange_gradients(grads), trainable)
    elif s.algorithm.gradient_mode == "replace":  # the ps runs the optimizer
        tensors.assign(trainable, s.algorithm.exchange_gradients(grads))
        opt.iterations.assign(opt.iterations.numpy() + 1)
    else:  # local steps (EASGD)
        opt.apply(grads, trainable)


def _loop(
    kill_at: int | None, inputs: int = 3, kill_rank: int = 1
) -> Callable[[LocalContext], Any]:
    def fn(ctx: LocalContext) -> dict[str, Any]:
        s = ctx.strategy()
        m = Model(inputs)
        opt = Momentum(m, momentum=0.0 if s.name == "easgd" else MOMENTUM)
        if s.algorithm.gradient_mode == "replace":
            s.algorithm.optimizer_config = optimizer_config(
                "momentum", learning_rate=LR, momentum=MOMENTUM
            )
        start = s.begin(m, opt, steps_per_epoch=SPE)
        began = [v.numpy() for v in m.trainable_weights]
        s.barrier()  # nobody moves an EASGD center before every rank has pulled it
        for step in range(start, TOTAL):
            _step(s, m, opt, step)
            s.step_end(m)
            if kill_at is not None and step + 1 == kill_at and s.rank == kill_rank:
                # A killed process says no goodbye: drop its connections, then fail.
                s.mesh.close()
                raise Interrupted(f"rank {kill_rank} lost after step {kill_at}")
        s.end(m)
        return {"start": start, "began": began, "weights": [v.numpy() for v in m.weights],
                "epoch": s.start_epoch}  # fmt: skip

    return fn


def _run(name: str, ps: int, fn: Callable[[LocalContext], Any], **kw: Any) -> dict[str, Any]:
    return run_local(fn, threads=True, workers=2, ps=ps, strategy=name, strategy_options=OPTS, **kw)


def _interrupted_then_resumed(name: str, ps: int, policy: CheckpointPolicy) -> dict[str, Any]:
    with pytest.raises(RoleFailedError):  # the lost rank, or a peer that lost it first
        _run(name, ps, _loop(KILL), attempt=1, checkpoint=policy)
    return _run(name, ps, _loop(None), attempt=2, checkpoint=policy)


def _same(got: list[np.ndarray], want: list[np.ndarray], what: str) -> None:
    for g, w in zip(got, want, strict=True):
        np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-6, err_msg=what)


@pytest.mark.parametrize(("name", "ps"), [("allreduce", 0), ("sync_ps", 1)])
def test_a_resumed_run_ends_where_the_uninterrupted_one_does(
    tmp_path: Path, name: str, ps: int
) -> None:
    reference = _run(name, ps, _loop(None))
    policy = CheckpointPolicy(str(tmp_path), every_steps=EVERY, keep=2)
    resumed = _interrupted_then_resumed(name, ps, policy)
    for task, r in resumed.items():
        assert r["start"] == 6, "the newest checkpoint before the loss is step 6"
        assert r["epoch"] == 1  # 6 steps of 5 per epoch
        _same(r["weights"], reference[task]["weights"], f"{name} {task} after resuming")
    # Rank 0 wrote the finished state last (attempt 2), keeping the newest two.
    final = read_checkpoint(checkpoint_files(tmp_path)[-1])
    assert (final.global_step, final.attempt, final.epoch, final.step) == (TOTAL, 2, 2, 4)
    if ps:  # one snapshot per trainer checkpoint, tagged with it, in <dir>/ps-0
        snap, problems = latest_snapshot(tmp_path / "ps-0", SnapshotTag(TOTAL, 2))
        assert snap is not None and not problems


def test_without_checkpoints_nothing_is_written_and_nothing_resumes(tmp_path: Path) -> None:
    res = _run("allreduce", 0, _loop(None), attempt=3)
    assert {r["start"] for r in res.values()} == {0}
    assert list(tmp_path.iterdir()) == []


def test_a_torn_newest_checkpoint_is_skipped_and_the_ps_matches_the_older_one(
    tmp_path: Path,
) -> None:
    reference = _run("sync_ps", 1, _loop(None))
    policy = CheckpointPolicy(str(tmp_path), every_steps=EVERY, keep=2)
    with pytest.raises(RoleFailedError):
        _run("sync_ps", 1, _loop(KILL), attempt=1, checkpoint=policy)
    newest = Path(checkpoint_files(tmp_path)[-1])
    assert newest.name == "ckpt-000000000006.npz"
    newest.write_bytes(newest.read_bytes()[: newest.stat().st_size // 2])  # a torn write
    resumed = _run("sync_ps", 1, _loop(None), attempt=2, checkpoint=policy)
    for task, r in resumed.items():
        assert r["start"] == 3
        _same(r["weights"], reference[task]["weights"], f"{task} resumed from step 3")


def test_easgd_restores_the_center_the_ps_snapshotted_for_the_checkpoint(
    tmp_path: Path,
) -> None:
    policy = CheckpointPolicy(str(tmp_path), every_steps=EVERY, keep=2)
    # Rank 0 (the writer) is lost: rank 1 goes on moving the center until the ps breaks.
    with pytest.raises(RoleFailedError):
        _run("easgd", 1, _loop(KILL, kill_rank=0), attempt=1, checkpoint=policy)
    ckpt = read_checkpoint(checkpoint_files(tmp_path)[-1])
    assert ckpt.global_step == 6
    snap, _ = latest_snapshot(tmp_path / "ps-0", SnapshotTag(6, 1))
    assert snap is not None
    specs = tensors.specs(Model().trainable_weights)
    center = [np.empty(s.shape, np.float32) for s in specs]
    for bucket in plan_buckets(specs, 4 << 20):
        unpack(bucket, snap.buckets[bucket.index].values, center)
    # The center is not rank 0's local weights: restoring those would be wrong.
    assert not np.allclose(center[0], ckpt.weights[0])
    resumed = _run("easgd", 1, _loop(None), attempt=2, checkpoint=policy)
    for task, r in resumed.items():
        assert r["start"] == 6
        _same(r["began"], center, f"{task} starts from the snapshotted center")


def test_a_checkpoint_of_another_model_shape_is_refused_naming_both(tmp_path: Path) -> None:
    policy = CheckpointPolicy(str(tmp_path), every_steps=EVERY, keep=2)
    _run("allreduce", 0, _loop(None), attempt=1, checkpoint=policy)
    with pytest.raises(RoleFailedError) as info:
        _run("allreduce", 0, _loop(None, inputs=4), attempt=2, checkpoint=policy)
    text = info.value.remote_traceback
    assert "CheckpointMismatchError" in text
    shapes = "checkpoint [(3, 2):float32, (2,):float32] vs model [(4, 2):float32, (2,):float32]"
    assert shapes in text
    assert "point checkpoint_dir at a new folder" in text


def test_every_snapshot_of_a_job_ps_is_tagged_with_a_trainer_checkpoint(tmp_path: Path) -> None:
    policy = CheckpointPolicy(str(tmp_path), every_steps=EVERY, keep=2)
    _run("downpour", 1, _loop(None), attempt=1, checkpoint=policy)
    steps = [read_checkpoint(p).global_step for p in checkpoint_files(tmp_path)]
    snaps = [latest_snapshot(tmp_path / "ps-0", SnapshotTag(g, 1))[0] for g in steps]
    assert steps == [12, TOTAL] and all(s is not None for s in snaps)
    assert len(snapshot_files(tmp_path / "ps-0")) == 3  # keep + 1
