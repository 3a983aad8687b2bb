"""The fault job: the same 2-worker Keras ``model.fit`` on scikit-learn's digits.

Shared by the fault matrix on the local Spark cluster (test_restarts.py) and on the dev
YARN (tests/yarn/apps/restart_app.py): a run of it with the same strategy and seed gives
the same model on either cluster, so an uninterrupted run is the reference of a faulted
one. Each trainer writes ``pid global_step`` to ``<marks>/<role>.a<attempt>`` after every
batch: what a test's fault thread watches to strike mid-training.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import cloudpickle
import numpy as np
import pyarrow as pa

import tfyarn

# Imported from a path the executors do not have: ship the functions by value.
cloudpickle.register_pickle_by_value(sys.modules[__name__])

EPOCHS, BATCH = 8, 32
#: Epochs of the sync_ps jobs: it converges in fewer, and each step costs a ps round trip.
PS_EPOCHS = 4
#: Checkpoint interval (steps) of the fault jobs; a restart redoes at most this many.
EVERY = 8
#: The fault strikes once the victim's global step passed this.
STRIKE_AFTER = 12


def read_mark(path: Path) -> tuple[int, int] | None:
    """``(pid, global step)`` from a trainer's marks file; None before it is whole."""
    try:
        pid, step = path.read_text().split()
        return int(pid), int(step)
    except (OSError, ValueError):
        return None


def split() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    x = (digits.data / 16.0).astype(np.float32)
    y = digits.target.astype(np.int64)
    return tuple(train_test_split(x, y, test_size=0.2, random_state=0, stratify=y))  # type: ignore[return-value]


def frame(spark: Any) -> Any:
    x_train, _, y_train, _ = split()
    table = pa.table(
        {
            "x": pa.FixedSizeListArray.from_arrays(pa.array(x_train.reshape(-1)), 64),
            "y": pa.array(y_train),
        }
    )
    return spark.createDataFrame(table)


def train_fn(
    marks: str, fail_in: str = "", epochs: int = EPOCHS
) -> Callable[[Any], dict[str, Any]]:
    """The fault jobs' ``train_fn``; each trainer writes ``pid global_step`` to ``marks``.

    ``fail_in``: the role that raises a ValueError once past :data:`STRIKE_AFTER`.
    """

    def train(ctx: Any) -> dict[str, Any]:
        import keras
        import tensorflow as tf

        tf.config.threading.set_intra_op_parallelism_threads(1)
        keras.utils.set_random_seed(0)
        strategy = ctx.strategy()
        model = keras.Sequential(
            [keras.Input((64,)), keras.layers.Dense(64, activation="relu"), keras.layers.Dense(10)]
        )
        model.compile(
            optimizer=strategy.distributed_optimizer(keras.optimizers.Adam(1e-2)),
            loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
            metrics=["accuracy"],
        )
        start = ctx.resume.global_step if ctx.resume is not None else 0
        mark = Path(marks) / f"{ctx.task_id.replace(':', '-')}.a{ctx.attempt}"

        class Marks(keras.callbacks.Callback):
            done = 0

            def on_train_batch_end(self, batch: int, logs: Any = None) -> None:
                self.done += 1
                step = start + self.done
                if self.done == 1:  # when this attempt's training got going
                    (mark.parent / f"{mark.name}.first").write_text(str(time.time()))
                # Whole or not at all: a kill between open's truncation and the write
                # (SIGTERM of a container killed through the RM) would leave it empty.
                staged = mark.with_name(f"{mark.name}.tmp")
                staged.write_text(f"{os.getpid()} {step}")
                os.replace(staged, mark)
                ctx.report(global_step=step)
                if ctx.task_id == fail_in and step > STRIKE_AFTER:
                    raise ValueError(f"deliberate failure at step {step}")
                if self.done <= STRIKE_AFTER + 12:
                    # Room for the fault to strike mid-epoch (the watcher polls every
                    # 50 ms); the attempt's later steps run at full speed.
                    time.sleep(0.02)

        steps = ctx.steps_per_epoch(BATCH)
        model.fit(
            ctx.dataset(BATCH, epochs=epochs, features="x", label="y", seed=ctx.trainer_rank),
            epochs=epochs,
            steps_per_epoch=steps,
            callbacks=[*strategy.callbacks(), Marks()],
            verbose=0,
        )
        out: dict[str, Any] = {"steps_per_epoch": steps, "trainers": ctx.num_trainers}
        if ctx.is_chief:
            _, x_test, _, y_test = split()
            out["accuracy"] = float(model.evaluate(x_test, y_test, verbose=0)[1])
            out["model_path"] = ctx.save_model(model, "fault.keras")  # HDFS on the dev YARN
        return out

    return train


def run(spark: Any, marks: Path, strategy: str = "allreduce", **options: Any) -> Any:
    """The fault job under ``strategy`` (``sync_ps``: one ps, :data:`PS_EPOCHS` epochs)."""
    marks.mkdir(exist_ok=True)
    fail_in = options.pop("fail_in", "")
    epochs = PS_EPOCHS if strategy == "sync_ps" else EPOCHS
    return tfyarn.run(
        spark,
        train_fn(str(marks), fail_in, epochs),
        workers=options.pop("workers", 2),
        ps=1 if strategy == "sync_ps" else 0,
        chief=False,
        strategy=strategy,
        transport="tcp",
        data=frame(spark),
        progress=False,
        heartbeat_interval=1.0,
        timeout=900,
        **options,
    )
