"""Resume with TensorFlow in the loop: ``ctx.checkpoint_manager`` and ``model.fit``.

In-process, one trainer. A TF-native custom loop (as under ``"mwms"``/``"ps"``) that
saves through ``ctx.checkpoint_manager`` and is interrupted resumes on attempt 2 and
ends with the weights of the uninterrupted loop. Keras ``model.fit`` under ``sync_ps``
(momentum on the parameter server) with ``strategy.callbacks()`` resumes at the right
epoch and step with the ps state of the checkpoint, and ends where the uninterrupted fit
does.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tfyarn.cluster.plan import RoleSpec
from tfyarn.errors import ConfigError, RoleFailedError
from tfyarn.exchange.checkpoint import CheckpointPolicy, checkpoint_files, read_checkpoint
from tfyarn.exchange.local import LocalContext, run_local
from tfyarn.node.context import NodeContext
from tfyarn.node.job import JobSpec
from tfyarn.node.messages import Member

tf = pytest.importorskip("tensorflow")
keras = pytest.importorskip("keras")

STEPS, EVERY, KILL = 12, 4, 10


def _ctx(tmp: Path, attempt: int, policy: CheckpointPolicy | None) -> NodeContext:
    me = RoleSpec(0, "worker", 0)
    job = JobSpec(
        job_id="resume-test", plan=(me,), trainers=(me,), train_fn=b"", secret=b"s" * 32,
        driver_address=("127.0.0.1", 1), strategy="mwms", attempt=attempt, checkpoint=policy,
    )  # fmt: skip
    member = Member(task_id="worker:0", host="127.0.0.1", tf_port=2222, exchange_address=None,
                    rows=0, executor="0")  # fmt: skip
    work = tmp / f"work-{attempt}"
    work.mkdir(exist_ok=True)
    return NodeContext(job, me, [member], workdir=str(work), data_path=None, heartbeat=None,
                       tf_port=None)  # fmt: skip


def _custom_loop(ctx: NodeContext, kill_at: int | None) -> tuple[list[np.ndarray], int]:
    """A GradientTape loop that checkpoints model, optimizer and step through ctx.

    Returns the final weights and the number of steps this call ran.
    """
    keras.utils.set_random_seed(5)
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    opt = keras.optimizers.SGD(0.05, momentum=0.9)
    opt.build(model.trainable_variables)
    step = tf.Variable(0, dtype=tf.int64)
    manager = ctx.checkpoint_manager(
        tf.train.Checkpoint(model=model, optimizer=opt, step=step), step_counter=step
    )
    rng = np.random.default_rng(1)
    xs = rng.normal(size=(STEPS, 8, 3)).astype(np.float32)
    ys = xs @ np.array([[1.0, 0.0], [2.0, -1.0], [0.5, 0.5]], np.float32)
    ran = 0
    while int(step.numpy()) < STEPS:
        i = int(step.numpy())  # the data position is the restored step
        with tf.GradientTape() as tape:
            loss = tf.reduce_mean((model(xs[i]) - ys[i]) ** 2)
        grads = tape.gradient(loss, model.trainable_variables)
        opt.apply(grads, model.trainable_variables)
        step.assign_add(1)
        ran += 1
        manager.save()  # writes every EVERY steps (the policy), as TF's interval says
        if kill_at is not None and i + 1 == kill_at:
            break
    return [w.numpy() for w in model.weights], ran


def test_checkpoint_manager_resumes_a_custom_loop(tmp_path: Path) -> None:
    reference, _ = _custom_loop(_ctx(tmp_path, 1, CheckpointPolicy(str(tmp_path / "ref"))), None)
    policy = CheckpointPolicy(str(tmp_path / "ckpt"), every_steps=EVERY, keep=2)
    _custom_loop(_ctx(tmp_path, 1, policy), kill_at=KILL)  # dies after step 10
    # TF's interval counts from the last save, and the first save() always writes: 1, 5, 9.
    latest = tf.train.load_checkpoint(tf.train.latest_checkpoint(policy.directory))
    assert latest.get_tensor("step/.ATTRIBUTES/VARIABLE_VALUE") == 9
    resumed, ran = _custom_loop(_ctx(tmp_path, 2, policy), None)
    assert ran == STEPS - 9  # continued from the checkpoint, not from scratch
    for got, want in zip(resumed, reference, strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_checkpoint_manager_without_checkpoints_says_what_to_pass(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"tfyarn.run\(checkpoint_dir=\.\.\."):
        _ctx(tmp_path, 1, None).checkpoint_manager(tf.train.Checkpoint())


# -- model.fit under sync_ps -----------------------------------------------------------
EPOCHS, SPE, BATCH = 3, 6, 8


def _fit(kill_at: int | None) -> Any:
    def fn(ctx: LocalContext) -> dict[str, Any]:
        s = ctx.strategy()
        keras.utils.set_random_seed(3)
        model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(1)])
        model.compile(optimizer=s.distributed_optimizer(keras.optimizers.SGD(0.05, momentum=0.9)),
                      loss="mse", jit_compile=False)  # fmt: skip
        rng = np.random.default_rng(11)
        x = rng.normal(size=(SPE * BATCH, 4)).astype(np.float32)
        y = (x @ rng.normal(size=(4, 1))).astype(np.float32)
        ds = tf.data.Dataset.from_tensor_slices((x, y)).batch(BATCH).repeat(EPOCHS)
        ds = ds.skip(s.start_step)  # what ctx.dataset does on a resume
        callbacks = s.callbacks()
        seen: list[int] = []

        class Kill(keras.callbacks.Callback):
            def on_train_batch_end(self, batch: int, logs: object = None) -> None:
                seen.append(batch)
                if kill_at is not None and s.start_step + len(seen) == kill_at:
                    s.mesh.close()  # a killed role says no goodbye
                    raise RuntimeError("lost")

        with contextlib.suppress(RuntimeError):
            model.fit(ds, epochs=EPOCHS, steps_per_epoch=SPE, verbose=0,
                      callbacks=[*callbacks, Kill()])  # fmt: skip
        if kill_at is not None:
            raise RuntimeError("lost")
        kinds = [type(c).__name__ for c in callbacks]
        return {"weights": model.get_weights(), "steps": len(seen), "kinds": kinds}

    return fn


def test_model_fit_under_sync_ps_resumes_with_the_ps_state(tmp_path: Path) -> None:
    common: dict[str, Any] = {"threads": True, "workers": 1, "ps": 1, "strategy": "sync_ps",
                              "strategy_options": {"timeout": 20}}  # fmt: skip
    reference = run_local(_fit(None), **common)["worker:0"]
    policy = CheckpointPolicy(str(tmp_path), every_steps=5, keep=2)
    with pytest.raises(RoleFailedError):
        run_local(_fit(13), attempt=1, checkpoint=policy, **common)
    assert read_checkpoint(checkpoint_files(tmp_path)[-1]).global_step == 10
    resumed = run_local(_fit(None), attempt=2, checkpoint=policy, **common)["worker:0"]
    assert resumed["kinds"][0] == "CheckpointCallback"  # restores before the ps INIT
    assert resumed["steps"] == EPOCHS * SPE - 10
    for got, want in zip(resumed["weights"], reference["weights"], strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
