"""Part 3: elastic averaging SGD against synchronous all-reduce Adagrad (CERN dist-keras).

dist-keras (J. Hermans, CERN IT-DB, 2016-17) trained Keras models on Spark with EASGD,
DOWNPOUR, ADAG and others and studied convergence and the time workers spend waiting on
synchronisation, with a 380,402-parameter dense network (30 inputs, two hidden layers
of 600 units with dropout, 2 outputs: the ATLAS Higgs tabular model) and 250,000
training instances.

The ATLAS Higgs data cannot be downloaded here, so the 250,000 instances are a fixed
synthetic binary problem of the same shape (scikit-learn ``make_classification``, 30
features, seed 0), with 25,000 more held out. Through tfyarn, 2 workers train the same
model with the same worker optimizer (Adagrad):

* ``strategy="easgd"`` (one parameter server holds the center; every ``tau`` local steps
  a worker moves elastically towards it);
* ``strategy="allreduce"`` (gradients averaged over the ring every step).

Each worker records, against its own training clock (evaluation time excluded), the loss
on a fixed 5,000-instance validation sample every ``PROBE_EVERY`` steps, and the time spent
inside the strategy's synchronisation (the all-reduce of each step; the elastic exchange
of EASGD), which includes waiting for the slower peer or the ps.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = ["build_model", "make_data", "run_part"]

INSTANCES = 250_000
HELD_OUT = 25_000
FEATURES = 30
HIDDEN = 600
DROPOUT = 0.4
PARAMETERS = 380_402
BATCH = 128
EPOCHS = 2
LEARNING_RATE = 0.05
TAU = 4
PROBE_EVERY = 100
PROBE_ROWS = 5_000
WORKERS = 2


def make_data(
    instances: int = INSTANCES, held_out: int = HELD_OUT, seed: int = 0
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """A fixed binary problem of ATLAS Higgs' shape: 30 standardised features, 2 classes."""
    from sklearn.datasets import make_classification

    x, y = make_classification(
        n_samples=instances + held_out,
        n_features=FEATURES,
        n_informative=18,
        n_redundant=6,
        n_clusters_per_class=4,
        class_sep=0.8,
        flip_y=0.05,
        random_state=seed,
    )
    mean, std = x[:instances].mean(axis=0), x[:instances].std(axis=0)
    x = ((x - mean) / np.where(std > 0, std, 1.0)).astype(np.float32)
    y = y.astype(np.int32)
    return x[:instances], y[:instances], x[instances:], y[instances:]


def build_model(seed: int = 0) -> Any:
    """30 -> 600 -> 600 -> 2 with ReLU and dropout 0.4: 380,402 parameters."""
    import keras

    keras.utils.set_random_seed(seed)
    return keras.Sequential(
        [
            keras.Input((FEATURES,)),
            keras.layers.Dense(HIDDEN, activation="relu"),
            keras.layers.Dropout(DROPOUT),
            keras.layers.Dense(HIDDEN, activation="relu"),
            keras.layers.Dropout(DROPOUT),
            keras.layers.Dense(2),
        ]
    )


def _train(
    ctx: Any, epochs: int, probe: tuple[np.ndarray, np.ndarray], test: tuple[np.ndarray, np.ndarray]
) -> dict[str, Any]:
    """``train_fn`` of each worker: fit with a timed synchronisation and a loss probe."""
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(1)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    import keras

    strategy = ctx.strategy()
    algo = strategy.algorithm
    clock = {"sync": 0.0, "eval": 0.0}
    # Time the strategy's own synchronisation: the per-step gradient exchange for
    # all-reduce, the per-step hook (elastic move every tau steps) for EASGD.
    hook = "exchange_gradients" if algo.gradient_mode else "step_end"
    inner = getattr(algo, hook)

    def timed(*args: Any, **kwargs: Any) -> Any:
        t = time.perf_counter()
        try:
            return inner(*args, **kwargs)
        finally:
            clock["sync"] += time.perf_counter() - t

    setattr(algo, hook, timed)
    model = build_model(0)
    loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    model.compile(
        optimizer=strategy.distributed_optimizer(keras.optimizers.Adagrad(LEARNING_RATE)),
        loss=loss_fn,
        metrics=["accuracy"],
    )
    curve: list[tuple[float, int, float]] = []
    start = [0.0]

    def probe_loss() -> float:
        logits = model(probe[0], training=False)
        return float(loss_fn(probe[1], logits))

    class Probe(keras.callbacks.Callback):
        def __init__(self) -> None:
            super().__init__()
            self.step = 0

        def on_train_begin(self, logs: Any = None) -> None:
            start[0] = time.perf_counter()
            curve.append((0.0, 0, probe_loss()))
            start[0] = time.perf_counter()

        def on_train_batch_end(self, batch: int, logs: Any = None) -> None:
            self.step += 1
            if self.step % PROBE_EVERY == 0:
                t = time.perf_counter()
                elapsed = t - start[0] - clock["eval"]
                curve.append((elapsed, self.step, probe_loss()))
                clock["eval"] += time.perf_counter() - t

    steps = ctx.steps_per_epoch(BATCH)
    ds = ctx.dataset(
        BATCH, epochs, features=[f"x{i}" for i in range(FEATURES)], label="y", seed=strategy.rank
    )
    model.fit(
        ds,
        epochs=epochs,
        steps_per_epoch=steps,
        verbose=0,
        # no per-epoch metric averaging: it is a barrier, which would make asynchronous
        # EASGD workers wait for each other at every epoch end
        callbacks=[*strategy.callbacks(average_metrics=False), Probe()],
    )
    fit_seconds = time.perf_counter() - start[0] - clock["eval"]
    out: dict[str, Any] = {
        "task": ctx.task_id,
        "fit_seconds": fit_seconds,
        "sync_seconds": clock["sync"],
        "curve": curve,
        "steps": steps * epochs,
        "parameters": int(model.count_params()),
    }
    # every worker reports; the chief's return value carries them all
    others = strategy.allreduce(np.array([fit_seconds, clock["sync"]]), average=False)
    out["sum_fit_seconds"], out["sum_sync_seconds"] = float(others[0]), float(others[1])
    if ctx.is_chief:
        logits = model.predict(test[0], verbose=0, batch_size=4096)
        out["test_loss"] = float(loss_fn(test[1], logits))
        out["test_accuracy"] = float((np.argmax(logits, axis=1) == test[1]).mean())
    return out


def run_tfyarn(spark: Any, strategy: str, epochs: int = EPOCHS) -> dict[str, Any]:
    """One ``tfyarn.run``: 2 workers (+1 ps for EASGD)."""
    import pandas as pd

    import tfyarn
    from benchmarks.reproductions.sparkenv import ONE_THREAD_ENV

    xtr, ytr, xte, yte = make_data()
    rng = np.random.default_rng(1)
    pick = rng.choice(len(xte), PROBE_ROWS, replace=False)
    probe = (xte[pick], yte[pick])
    frame = pd.DataFrame(xtr, columns=[f"x{i}" for i in range(FEATURES)])
    frame["y"] = ytr
    df = spark.createDataFrame(frame)
    options: dict[str, Any] = {"tau": TAU} if strategy == "easgd" else {}
    result = tfyarn.run(
        spark,
        lambda ctx: _train(ctx, epochs, probe, (xte, yte)),
        workers=WORKERS,
        chief=False,
        ps=1 if strategy == "easgd" else 0,
        data=df,
        strategy=strategy,
        strategy_options=options,
        transport="tcp",
        env=dict(ONE_THREAD_ENV),
        timeout=1200,
        progress=False,
    )
    value = dict(result.value)
    value["wall_time"] = result.wall_time
    value["startup_time"] = result.startup_time
    return value


def run_part(out_dir: str, epochs: int = EPOCHS) -> Any:
    """Run part 3; return its :class:`PartResult`."""
    import benchmarks.reproductions.easgd_adagrad as me
    from benchmarks.reproductions.report import PartResult
    from benchmarks.reproductions.sparkenv import local_cluster, ship_by_value

    ship_by_value(me)
    begun = time.monotonic()
    runs: dict[str, dict[str, Any]] = {}
    with local_cluster("easgd", WORKERS + 1, executor_memory_mb=1536) as (spark, spark_start):
        for strategy in ("easgd", "allreduce"):
            print(f"part 3: tfyarn {strategy}, {WORKERS} workers", flush=True)
            load = os.getloadavg()[0]
            runs[strategy] = {**run_tfyarn(spark, strategy, epochs), "load": load}
    rows = []
    for strategy, r in runs.items():
        label = f"EASGD (tau={TAU}, 1 ps)" if strategy == "easgd" else "all-reduce Adagrad"
        rows.append(
            {
                "method": label,
                "parameters": r["parameters"],
                "steps / worker": r["steps"],
                "test loss": r["test_loss"],
                "test accuracy": r["test_accuracy"],
                "training (s)": r["fit_seconds"],
                "waiting on sync (s)": r["sync_seconds"],
                "waiting fraction (worker:0)": r["sync_seconds"] / max(r["fit_seconds"], 1e-9),
                "waiting fraction (both)": r["sum_sync_seconds"] / max(r["sum_fit_seconds"], 1e-9),
                "tfyarn.run wall (s)": r["wall_time"],
                "load avg": r["load"],
            }
        )
    plot = _plot(out_dir, runs)
    notes = f"""
Method: {INSTANCES:,} training instances split over {WORKERS} workers (Spark partitions
routed by tfyarn), batch {BATCH} per worker, {epochs} epochs, Adagrad (learning rate
{LEARNING_RATE}) as the worker optimizer in both methods, model {FEATURES} -> {HIDDEN} ->
{HIDDEN} -> 2 with ReLU and dropout {DROPOUT} ({PARAMETERS:,} parameters, checked). EASGD:
elastic move every tau = {TAU} steps with alpha = 0.9 / workers, the center kept on one
parameter-server role; the final model is the center. Transport tcp on loopback.
"Waiting on sync" is the time inside the synchronisation call (gradient all-reduce each
step, or the elastic exchange with the ps), which is transfer plus waiting for the
peer/ps; the loss probe's own time is excluded from the clock, and no per-epoch metric
averaging runs (it would be a barrier between the asynchronous EASGD workers). The data
are a synthetic
stand-in of ATLAS Higgs' shape (the real set cannot be downloaded here); the held-out
{HELD_OUT:,} instances give the test figures. Spark application start: {spark_start:.1f} s.
"load avg" is the 1-minute load average of this 2-core machine when each run started
(other work shares it; above 2 every time is stretched).
The published study reported curves and waiting times for its own cluster; no single
figure of it is comparable to a 2-core machine, so this part reports the same
measurements rather than a ratio.
"""
    return PartResult(
        part=3,
        title="EASGD vs synchronous all-reduce Adagrad (CERN dist-keras)",
        source=(
            "J. Hermans, *dist-keras: distributed deep learning with Apache Spark and Keras* "
            "(CERN, 2016-17): EASGD/ADAG/DOWNPOUR vs synchronous methods, convergence and "
            "time spent waiting on synchronisation; a 380,402-parameter model, 250,000 "
            "instances."
        ),
        published=[
            {
                "model": "380,402 parameters (30-600-600-2)",
                "instances": "250,000",
                "measured": "loss vs time, waiting time",
            },
        ],
        columns=list(rows[0]),
        rows=rows,
        notes=notes,
        plots=[plot] if plot else [],
        seconds=time.monotonic() - begun,
        extra={
            "curves": {k: v["curve"] for k, v in runs.items()},
            "spark_start_seconds": spark_start,
        },
    )


def _plot(out_dir: str, runs: dict[str, dict[str, Any]]) -> str | None:
    """Validation loss against training time, one line per method."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    from pathlib import Path

    name = "reproduce_part3.png"
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for strategy, r in runs.items():
        curve: Sequence[Sequence[float]] = r["curve"]
        axes[0].plot([c[0] for c in curve], [c[2] for c in curve], marker=".", label=strategy)
        axes[1].plot([c[1] for c in curve], [c[2] for c in curve], marker=".", label=strategy)
    axes[0].set_xlabel("training time on worker:0 (s)")
    axes[1].set_xlabel("steps on worker:0")
    for ax in axes:
        ax.set_ylabel("validation loss (5,000 held-out)")
        ax.grid(True, alpha=0.3)
        ax.legend()
    fig.suptitle("Part 3: EASGD vs all-reduce Adagrad, 2 workers, 380,402 parameters")
    fig.tight_layout()
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    fig.savefig(Path(out_dir) / name, dpi=110)
    plt.close(fig)
    return name
