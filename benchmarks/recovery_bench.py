"""``tfyarn bench recovery``: recovery from a killed worker, and what checkpoints cost.

One 2-worker ``allreduce`` Keras ``model.fit`` of an MLP of ``--params`` parameters (two
hidden layers, Adam) on synthetic data, on a local Spark cluster the benchmark starts
itself (the ``local-cluster`` profile of conf/, one executor per role), run three times
in the same session:

(a) **uninterrupted, checkpoints off**: the baseline fit time;
(b) **the same with checkpoints** at the default interval (``checkpoint_every`` of
    :func:`tfyarn.run`, or ``--checkpoint-every``): overhead ``(b - a) / a`` of the fit
    time, and the seconds of each checkpoint write on rank 0
    (``CheckpointCallback.write_seconds``), the final checkpoint at the end of the fit
    included;
(c) **the same with a SIGKILL of worker:1's role process** mid-fit (once past
    ``--kill-at`` of the steps and after the first checkpoint), ``max_restarts=1``: time
    from the kill to the first step of the next attempt finished, split into the driver
    noticing the loss, the new attempt's start-up up to ``train_fn``, TensorFlow's import
    in ``train_fn`` and the rest (model, restore, first step), and the steps redone.

Targets: recovery without the TensorFlow import <= 15 s; checkpoint overhead <= 5 % of
the fit time. Writes ``recovery.json`` and ``recovery.md`` under ``--out`` and prints the
table. The measured figures move with the load of a shared machine: compare only the
rows of one run.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from benchmarks.common import DEFAULT_OUT, machine_info, markdown_table

__all__ = [
    "TARGETS",
    "FitRun",
    "Recovery",
    "RecoveryReport",
    "add_arguments",
    "hidden_width",
    "main",
    "report_json",
    "report_markdown",
    "run",
    "write_outputs",
]

#: Features per synthetic sample and classes: the MLP is INPUTS -> h -> h -> CLASSES.
INPUTS, CLASSES = 256, 10
#: The issue's targets: seconds from the kill to training resumed (TensorFlow's import
#: left out) and the checkpoints' share of the fit time.
TARGETS = {"recovery_seconds": 15.0, "checkpoint_overhead": 0.05}
#: The role that is killed in run (c), and the spare attempt it gets.
VICTIM = "worker:1"
WORKERS = 2


def hidden_width(params: float, inputs: int = INPUTS, classes: int = CLASSES) -> int:
    """Width ``h`` of two hidden layers that gives an MLP of about ``params`` parameters.

    ``inputs*h + h + h*h + h + h*classes + classes = params``, solved for ``h``.

    Raises
    ------
    ValueError
        ``params`` too small for even one hidden unit.
    """
    b = inputs + classes + 2
    c = classes - params
    h = round((-b + math.sqrt(b * b - 4 * c)) / 2) if b * b - 4 * c >= 0 else 0
    if h < 1:
        raise ValueError(f"--params {params:g} is too small for a {inputs}-input MLP")
    return h


def mlp_params(width: int, inputs: int = INPUTS, classes: int = CLASSES) -> int:
    """Parameters of the benchmark's MLP with hidden layers of ``width``."""
    return inputs * width + width + width * width + width + width * classes + classes


# -- records (pure) -------------------------------------------------------------------


@dataclass(frozen=True)
class FitRun:
    """One ``model.fit`` as rank 0 timed it.

    Parameters
    ----------
    label : str
        Which run (``"no checkpoints"``, ``"checkpoints"``, ``"killed + resumed"``).
    fit_seconds : float
        Wall time of ``model.fit`` on rank 0 (the last attempt's, for a resumed run).
    steps : int
        Optimizer steps that ``model.fit`` ran on rank 0 in that attempt.
    checkpoint_seconds : tuple of float
        Seconds of each checkpoint write on rank 0 (empty with checkpoints off).
    wall_seconds : float
        Seconds the whole :func:`tfyarn.run` call took (start-up and import included).
    """

    label: str
    fit_seconds: float
    steps: int
    checkpoint_seconds: tuple[float, ...] = ()
    wall_seconds: float = 0.0

    def __post_init__(self) -> None:
        if not (self.fit_seconds > 0 and math.isfinite(self.fit_seconds)):
            raise ValueError(
                f"FitRun {self.label!r}: fit_seconds must be > 0, not {self.fit_seconds}"
            )
        if self.steps < 1:
            raise ValueError(f"FitRun {self.label!r}: steps must be >= 1, not {self.steps}")
        if any(s < 0 for s in self.checkpoint_seconds) or self.wall_seconds < 0:
            raise ValueError(f"FitRun {self.label!r}: negative seconds")

    @property
    def step_seconds(self) -> float:
        """Mean seconds per step (the first step's tracing included)."""
        return self.fit_seconds / self.steps


@dataclass(frozen=True)
class Recovery:
    """What happened between the kill of the victim and training going again.

    Times are seconds since the epoch on the one host of the local cluster.

    Parameters
    ----------
    killed_at : float
        When the victim's role process got SIGKILL.
    attempt_ended, attempt_started : float
        When the driver ended attempt 1 and started attempt 2 (``RunResult.attempts``).
    entered : float
        When the victim's ``train_fn`` began in attempt 2.
    import_seconds : float
        What ``import keras, tensorflow`` took there.
    resumed_at : float
        When the victim finished its first step of attempt 2.
    killed_at_step : int
        The highest global step any worker finished in attempt 1 (from the roles' marks).
    resumed_from_step : int or None
        The checkpoint's global step attempt 2 resumed from.
    steps_redone_driver : int or None
        The driver's figure (``Attempt.steps_redone``, from heartbeats).
    """

    killed_at: float
    attempt_ended: float
    attempt_started: float
    entered: float
    import_seconds: float
    resumed_at: float
    killed_at_step: int
    resumed_from_step: int | None
    steps_redone_driver: int | None

    def __post_init__(self) -> None:
        order = [self.killed_at, self.attempt_started, self.entered, self.resumed_at]
        if any(b < a for a, b in itertools.pairwise(order)):
            raise ValueError(
                "Recovery times out of order (kill <= attempt 2 started <= train_fn entered "
                f"<= first step): {order}"
            )
        if not 0 <= self.import_seconds <= self.resumed_at - self.entered:
            raise ValueError(
                f"import_seconds {self.import_seconds} outside train_fn's "
                f"{self.resumed_at - self.entered:.3f} s before the first step"
            )

    @property
    def total_seconds(self) -> float:
        """Kill -> first step of attempt 2 finished, everything included."""
        return self.resumed_at - self.killed_at

    @property
    def without_import(self) -> float:
        """:attr:`total_seconds` less TensorFlow's import (the target's measure)."""
        return self.total_seconds - self.import_seconds

    @property
    def steps_redone(self) -> int | None:
        """Steps trained again: where attempt 1 got, less the checkpoint's step."""
        if self.resumed_from_step is None:
            return None
        return max(self.killed_at_step - self.resumed_from_step, 0)

    def phases(self) -> list[tuple[str, float]]:
        """The recovery time, split where the driver and the role can tell."""
        return [
            ("kill -> driver ends attempt 1", max(self.attempt_ended - self.killed_at, 0.0)),
            ("-> attempt 2 started", max(self.attempt_started - self.attempt_ended, 0.0)),
            ("-> train_fn entered (barrier stage, role process, wiring)",
             self.entered - self.attempt_started),
            ("-> TensorFlow + Keras imported", self.import_seconds),
            ("-> first step done (model, restore, tracing, step)",
             self.resumed_at - self.entered - self.import_seconds),
        ]  # fmt: skip


@dataclass(frozen=True)
class RecoveryReport:
    """Everything ``tfyarn bench recovery`` measured in one run.

    Parameters
    ----------
    params : int
        Parameters of the model.
    batch, steps_per_epoch, epochs : int
        Per-worker batch and steps, as ``model.fit`` ran them.
    interval : str
        The checkpoint interval of runs (b) and (c), as given to :func:`tfyarn.run`.
    every : tuple
        That interval as (steps, seconds): one of them set, the other None.
    plain, checkpointed : FitRun
        Runs (a) and (b).
    resumed : FitRun or None
        Run (c)'s successful attempt; None when run (c) did not take place.
    recovery : Recovery or None
        Run (c)'s recovery; None with the reason in ``skipped``.
    skipped : str
        Why run (c) has no figures (empty when it has).
    load : dict
        Load averages at the start and end.
    """

    params: int
    batch: int
    steps_per_epoch: int
    epochs: int
    interval: str
    every: tuple[int | None, float | None]
    plain: FitRun
    checkpointed: FitRun
    resumed: FitRun | None = None
    recovery: Recovery | None = None
    skipped: str = ""
    load: dict[str, tuple[float, ...]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if (self.recovery is None) == (not self.skipped):
            raise ValueError("RecoveryReport: give the recovery figures or why there are none")
        if sum(x is not None for x in self.every) != 1:
            raise ValueError(
                f"RecoveryReport: every is (steps, None) or (None, seconds), not {self.every}"
            )

    @property
    def interval_seconds(self) -> float | None:
        """The checkpoint interval in seconds, when it is a time."""
        return self.every[1]

    @property
    def interval_steps(self) -> float:
        """The checkpoint interval in steps (for a time: at run (a)'s speed).

        A restart redoes at most this many steps: those since the last checkpoint.
        """
        steps, seconds = self.every
        if steps is not None:
            return float(steps)
        return float(seconds or 0.0) / self.plain.step_seconds

    @property
    def overhead(self) -> float:
        """``(b - a) / a``: the checkpointed fit's extra time over the plain one."""
        return (self.checkpointed.fit_seconds - self.plain.fit_seconds) / self.plain.fit_seconds

    @property
    def write_share(self) -> float:
        """The checkpoint writes' share of run (b)'s fit time (rank 0 waits for them)."""
        return sum(self.checkpointed.checkpoint_seconds) / self.checkpointed.fit_seconds

    @property
    def mean_checkpoint_seconds(self) -> float | None:
        """Mean seconds of one checkpoint write; None when none was written."""
        s = self.checkpointed.checkpoint_seconds
        return sum(s) / len(s) if s else None

    @property
    def steady_share(self) -> float | None:
        """A long run's share: one write per interval (time intervals only)."""
        mean = self.mean_checkpoint_seconds
        if mean is None or self.interval_seconds is None:
            return None
        return mean / (self.interval_seconds + mean)


# -- report (pure) ---------------------------------------------------------------------


def _status(value: float | None, target: float) -> str:
    return "-" if value is None else ("met" if value <= target else "missed")


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f} %"


def _checkpoint_lines(r: RecoveryReport) -> list[list[str]]:
    target = TARGETS["checkpoint_overhead"]
    writes = r.checkpointed.checkpoint_seconds
    mean = r.mean_checkpoint_seconds
    return [
        ["(a) fit, checkpoints off", f"{r.plain.fit_seconds:.1f} s "
         f"({r.plain.steps} steps, {1e3 * r.plain.step_seconds:.0f} ms/step)", "", ""],
        [f"(b) fit, checkpoint every {r.interval}", f"{r.checkpointed.fit_seconds:.1f} s "
         f"({r.checkpointed.steps} steps)", "", ""],
        ["checkpoints written in (b) (the final one included)", str(len(writes)), "", ""],
        ["seconds per checkpoint (rank 0 write)",
         "-" if mean is None else f"{mean:.2f} s (max {max(writes):.2f} s)", "", ""],
        ["checkpoint overhead (b - a) / a", _pct(r.overhead), f"<= {_pct(target)}",
         _status(r.overhead, target)],
        ["checkpoint writes / fit time of (b)", _pct(r.write_share), "", ""],
        [f"a long run's share at one write per {r.interval}", _pct(r.steady_share), "", ""],
    ]  # fmt: skip


def _recovery_lines(r: RecoveryReport) -> list[list[str]]:
    rec = r.recovery
    if rec is None:
        return [["(c) kill of worker:1 mid-fit", f"not measured: {r.skipped}", "", ""]]
    target = TARGETS["recovery_seconds"]
    lines = [
        ["(c) kill -> first step of attempt 2, all included", f"{rec.total_seconds:.1f} s", "", ""],
        *[[f"  {name}", f"{secs:.1f} s", "", ""] for name, secs in rec.phases()],
        ["recovery without the TensorFlow import", f"{rec.without_import:.1f} s",
         f"<= {target:.0f} s", _status(rec.without_import, target)],
        ["killed at step / resumed from step",
         f"{rec.killed_at_step} / {rec.resumed_from_step}", "", ""],
        ["steps redone (marks; driver's heartbeat figure)",
         f"{rec.steps_redone} ({rec.steps_redone_driver})", "", ""],
        [f"steps redone at most (one interval, {r.interval})", f"{r.interval_steps:.0f}", "", ""],
    ]  # fmt: skip
    if r.resumed is not None:
        lines.append(["fit of attempt 2", f"{r.resumed.fit_seconds:.1f} s "
                      f"({r.resumed.steps} steps)", "", ""])  # fmt: skip
    return lines


def report_markdown(r: RecoveryReport) -> str:
    """The report as markdown: what was run, then one table of every figure."""
    head = (
        f"# tfyarn recovery benchmark\n\n"
        f"{WORKERS} workers, `allreduce`, Keras `model.fit` of an MLP of {r.params:,} "
        f"parameters (Adam), {r.epochs} epochs of {r.steps_per_epoch} steps, batch "
        f"{r.batch} per worker, synthetic data; local Spark cluster, 1 intra-op thread "
        f"per role. Checkpoint interval of (b) and (c): {r.interval}.\n\n"
    )
    table = markdown_table(
        ["measure", "value", "target", "status"], _checkpoint_lines(r) + _recovery_lines(r)
    )
    load = ", ".join(f"{k} {v}" for k, v in r.load.items())
    tail = (
        f"\nThe TensorFlow import is timed inside `train_fn` of the killed role's next "
        f"attempt (both workers restart and import at once). Load average (1, 5, 15 min): "
        f"{load or 'n/a'} on {os.cpu_count()} cores; figures move with the machine's other "
        "load, compare only rows of one run.\n"
    )
    return head + table + tail


def report_json(r: RecoveryReport) -> dict[str, Any]:
    """The report as JSON-able data: the records, the derived figures and the targets."""
    rec = r.recovery
    return {
        "meta": machine_info(),
        "config": {
            "params": r.params, "workers": WORKERS, "batch": r.batch,
            "steps_per_epoch": r.steps_per_epoch, "epochs": r.epochs,
            "interval": r.interval, "interval_seconds": r.interval_seconds,
            "interval_steps": r.interval_steps,
        },
        "runs": {
            "plain": asdict(r.plain),
            "checkpointed": asdict(r.checkpointed),
            "resumed": None if r.resumed is None else asdict(r.resumed),
        },
        "checkpoint": {
            "overhead": r.overhead, "write_share": r.write_share,
            "mean_seconds": r.mean_checkpoint_seconds, "steady_share": r.steady_share,
        },
        "recovery": None if rec is None else {
            **asdict(rec), "total_seconds": rec.total_seconds,
            "without_import": rec.without_import, "steps_redone": rec.steps_redone,
            "phases": dict(rec.phases()),
        },
        "skipped": r.skipped,
        "targets": TARGETS,
        "load": r.load,
    }  # fmt: skip


def write_outputs(r: RecoveryReport, out_dir: str | os.PathLike[str]) -> dict[str, Path]:
    """Write ``recovery.json`` and ``recovery.md`` under ``out_dir``; return their paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / "recovery.json", "markdown": out / "recovery.md"}
    paths["json"].write_text(json.dumps(report_json(r), indent=2, default=str) + "\n")
    paths["markdown"].write_text(report_markdown(r))
    return paths


# -- the job ----------------------------------------------------------------------------


def _mark_path(marks: str | Path, task_id: str, attempt: int, kind: str) -> Path:
    """``<marks>/<role>.a<attempt>.<kind>``: a role's progress (``step``) or times (``json``)."""
    return Path(marks) / f"{task_id.replace(':', '-')}.a{attempt}.{kind}"


def _train_fn(marks: str, width: int, epochs: int, batch: int) -> Callable[[Any], dict[str, Any]]:
    """The benchmark's ``train_fn``: every role writes its progress under ``marks``.

    ``<role>.a<n>.step`` holds ``pid global_step`` after each step (the killer reads it),
    ``<role>.a<n>.json`` the times of the attempt's start (written at its first step).
    """

    def train(ctx: Any) -> dict[str, Any]:
        entered = time.time()
        began = time.perf_counter()
        import keras
        import tensorflow as tf

        import_seconds = time.perf_counter() - began
        from tfyarn.exchange.keras_checkpoint import CheckpointCallback

        tf.config.threading.set_intra_op_parallelism_threads(1)
        keras.utils.set_random_seed(0)
        strategy = ctx.strategy()
        model = keras.Sequential(
            [
                keras.Input((INPUTS,)),
                keras.layers.Dense(width, activation="relu"),
                keras.layers.Dense(width, activation="relu"),
                keras.layers.Dense(CLASSES),
            ]
        )
        model.compile(
            optimizer=strategy.distributed_optimizer(keras.optimizers.Adam(1e-3)),
            loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        )
        start = ctx.resume.global_step if ctx.resume is not None else 0
        times_path = _mark_path(marks, ctx.task_id, ctx.attempt, "json")
        step_path = _mark_path(marks, ctx.task_id, ctx.attempt, "step")

        class Marks(keras.callbacks.Callback):
            done = 0

            def on_train_batch_end(self, batch: int, logs: Any = None) -> None:
                self.done += 1
                step = start + self.done
                if self.done == 1:
                    times = {"entered": entered, "import_seconds": import_seconds,
                             "resumed_at": time.time(), "start_step": start}  # fmt: skip
                    times_path.write_text(json.dumps(times))
                step_path.write_text(f"{os.getpid()} {step}")
                ctx.report(global_step=step)

        callbacks = [*strategy.callbacks(), Marks()]
        steps = ctx.steps_per_epoch(batch)
        fit_began = time.perf_counter()
        model.fit(
            ctx.dataset(batch, epochs=epochs, features="x", label="y", seed=ctx.trainer_rank),
            epochs=epochs, steps_per_epoch=steps, callbacks=callbacks, verbose=0,
        )  # fmt: skip
        fit_seconds = time.perf_counter() - fit_began
        writes = [c.write_seconds for c in callbacks if isinstance(c, CheckpointCallback)]
        return {
            "fit_seconds": fit_seconds,
            "steps": callbacks[-1].done,
            "steps_per_epoch": steps,
            "checkpoint_seconds": writes[0] if writes else [],
            "import_seconds": import_seconds,
        }

    return train


def _frame(spark: Any, rows: int) -> Any:
    """Synthetic data: labels from a fixed random linear map, so that there is a signal."""
    import numpy as np
    import pyarrow as pa

    rng = np.random.default_rng(0)
    x = rng.standard_normal((rows, INPUTS), dtype=np.float32)
    y = np.argmax(x @ rng.standard_normal((INPUTS, CLASSES), dtype=np.float32), axis=1)
    table = pa.table(
        {
            "x": pa.FixedSizeListArray.from_arrays(pa.array(x.reshape(-1)), INPUTS),
            "y": pa.array(y.astype(np.int64)),
        }
    )
    return spark.createDataFrame(table)


def _session(profile: str) -> Any:
    """A SparkSession from a conf/ profile (``local-cluster``: one executor per worker)."""
    from pyspark.sql import SparkSession

    from tfyarn.cluster.profiles import (
        default_env,
        find_profile,
        load_profile,
        local_ip_env,
        profile_dirs,
    )

    env = default_env(os.environ, WORKERS, sys.executable)
    props = load_profile(find_profile(profile, profile_dirs(None, env)), env)
    os.environ.update(local_ip_env(props, env))
    for key in ("PYSPARK_PYTHON", "PYSPARK_DRIVER_PYTHON"):
        os.environ[key] = env[key]
    builder = SparkSession.builder.appName("tfyarn-bench-recovery")
    for key, value in props.items():
        builder = builder.config(key, value)
    session = builder.getOrCreate()
    session.sparkContext.setLogLevel("ERROR")
    return session


# -- the kill ---------------------------------------------------------------------------


def _read_step(path: Path) -> tuple[int, int] | None:
    try:
        pid, step = path.read_text().split()
        return int(pid), int(step)
    except (OSError, ValueError):  # not written yet, or caught mid-write
        return None


@dataclass
class Killer:
    """Kills :data:`VICTIM`'s role in attempt 1 past ``kill_step`` and a first checkpoint.

    Waiting for a checkpoint makes run (c) measure a resume from one, not a restart from
    scratch; the first step that satisfies both is struck, so the steps redone are what
    that kill point costs at the interval. Never at or past ``total_steps``: the
    checkpoint written when the fit ends would leave the next attempt nothing to train.
    """

    marks: Path
    checkpoint_dir: Path
    kill_step: int
    total_steps: int
    killed_at: float | None = None
    missed: str = ""
    stop: threading.Event = field(default_factory=threading.Event)

    def start(self) -> None:
        threading.Thread(target=self._watch, daemon=True, name="recovery-killer").start()

    def _due(self, step: int) -> bool:
        from tfyarn.exchange.checkpoint import checkpoint_files

        return self.kill_step <= step < self.total_steps and bool(
            checkpoint_files(self.checkpoint_dir)
        )

    def _watch(self) -> None:
        path = _mark_path(self.marks, VICTIM, 1, "step")
        while not self.stop.is_set():
            mark = _read_step(path)
            if mark is not None and self._due(mark[1]):
                try:
                    os.kill(mark[0], signal.SIGKILL)
                except ProcessLookupError:  # the role ended between its mark and the kill
                    self.missed = f"worker:1's role (pid {mark[0]}) was gone at step {mark[1]}"
                    return
                self.killed_at = time.time()
                return
            time.sleep(0.02)


# -- measurement ------------------------------------------------------------------------


@dataclass(frozen=True)
class Settings:
    """What the three runs share (from the command line)."""

    width: int
    epochs: int
    steps_per_epoch: int
    batch: int
    checkpoint_every: int | float | str
    kill_at: float
    timeout: float


def _run_job(spark: Any, s: Settings, data: Any, marks: Path, **options: Any) -> Any:
    import cloudpickle

    import tfyarn

    # The executors cannot import benchmarks/ (not installed): train_fn travels by value.
    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    marks.mkdir(parents=True, exist_ok=True)
    return tfyarn.run(
        spark,
        _train_fn(str(marks), s.width, s.epochs, s.batch),
        workers=WORKERS, chief=False, strategy="allreduce", transport="tcp", data=data,
        progress=False, heartbeat_interval=1.0, timeout=s.timeout,
        env={"TF_NUM_INTEROP_THREADS": "1", "OMP_NUM_THREADS": "1"}, **options,
    )  # fmt: skip


def _fit_run(label: str, result: Any) -> FitRun:
    v = result.value
    return FitRun(
        label, float(v["fit_seconds"]), int(v["steps"]),
        tuple(float(x) for x in v["checkpoint_seconds"]), float(result.wall_time),
    )  # fmt: skip


def _highest_step(marks: Path, attempt: int) -> int:
    steps = [_read_step(p) for p in marks.glob(f"*.a{attempt}.step")]
    return max((m[1] for m in steps if m is not None), default=0)


def _recovery(result: Any, killer: Killer, marks: Path) -> Recovery:
    lost, resumed = result.attempts[0], result.attempts[-1]
    times = json.loads(_mark_path(marks, VICTIM, 2, "json").read_text())
    assert killer.killed_at is not None
    return Recovery(
        killed_at=killer.killed_at, attempt_ended=lost.ended, attempt_started=resumed.started,
        entered=times["entered"], import_seconds=times["import_seconds"],
        resumed_at=times["resumed_at"], killed_at_step=_highest_step(marks, 1),
        resumed_from_step=resumed.resumed_from_step, steps_redone_driver=resumed.steps_redone,
    )  # fmt: skip


def _killed_run(
    spark: Any, s: Settings, data: Any, tmp: Path, total_steps: int
) -> tuple[FitRun | None, Recovery | None, str]:
    """Run (c): the fit with worker:1 killed; its figures, or why there are none."""
    marks, ckpt = tmp / "c-marks", tmp / "c-checkpoints"
    killer = Killer(marks, ckpt, max(1, int(total_steps * s.kill_at)), total_steps)
    killer.start()
    try:
        result = _run_job(spark, s, data, marks, max_restarts=1, checkpoint_dir=str(ckpt),
                          checkpoint_every=s.checkpoint_every)  # fmt: skip
    finally:
        killer.stop.set()
    if killer.killed_at is None:
        return (
            None,
            None,
            killer.missed
            or (
                f"the fit ended before worker:1 passed step {killer.kill_step} with a checkpoint "
                f"written (only the one at the end, step {total_steps}): give more steps "
                "(--epochs, --steps-per-epoch) or a shorter --checkpoint-every"
            ),
        )
    if [a.kind for a in result.attempts] != ["lost", None]:
        return (
            None,
            None,
            "unexpected attempts: " + "; ".join(a.describe() for a in result.attempts),
        )
    return _fit_run("killed + resumed", result), _recovery(result, killer, marks), ""


def _interval(every: int | float | str) -> tuple[int | None, float | None]:
    """``checkpoint_every`` as (steps, seconds), as :func:`tfyarn.run` reads it."""
    from tfyarn.exchange.checkpoint import CheckpointPolicy

    return CheckpointPolicy.parse_every(every)


def measure(args: argparse.Namespace) -> RecoveryReport:
    """Start the local cluster, run (a), (b) and (c), and return the report."""
    from tfyarn.cluster.options import DEFAULT_CHECKPOINT_EVERY

    every = args.checkpoint_every or DEFAULT_CHECKPOINT_EVERY
    s = Settings(hidden_width(args.params), args.epochs, args.steps_per_epoch, args.batch,
                 every, args.kill_at, args.timeout)  # fmt: skip
    load = {"start": tuple(round(x, 1) for x in os.getloadavg())}
    spark = _session(args.profile)
    try:
        data = _frame(spark, WORKERS * s.steps_per_epoch * s.batch)
        with tempfile.TemporaryDirectory(prefix="tfyarn-bench-recovery-") as name:
            tmp = Path(name)
            plain = _fit_run("no checkpoints", _run_job(spark, s, data, tmp / "a-marks"))
            print(f"(a) {plain}", flush=True)
            checkpointed = _fit_run("checkpoints", _run_job(
                spark, s, data, tmp / "b-marks", checkpoint_dir=str(tmp / "b-checkpoints"),
                checkpoint_every=every))  # fmt: skip
            print(f"(b) {checkpointed}", flush=True)
            resumed, recovery, why = (
                (None, None, "skipped (--skip-kill)") if args.skip_kill
                else _killed_run(spark, s, data, tmp, plain.steps)
            )  # fmt: skip
            print(f"(c) {recovery or why}", flush=True)
    finally:
        spark.stop()
    load["end"] = tuple(round(x, 1) for x in os.getloadavg())
    return RecoveryReport(
        mlp_params(s.width), s.batch, plain.steps // s.epochs, s.epochs, str(every),
        _interval(every), plain, checkpointed, resumed, recovery, why, load,
    )  # fmt: skip


# -- command line -----------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the options of ``tfyarn bench recovery``."""
    parser.add_argument("--params", type=float, default=10e6,
                        help="parameters of the MLP (default 10e6)")  # fmt: skip
    parser.add_argument("--epochs", type=int, default=3, help="epochs of every fit (default 3)")
    parser.add_argument("--steps-per-epoch", type=int, default=160,
                        help="steps per epoch and worker (default 160)")  # fmt: skip
    parser.add_argument("--batch", type=int, default=64, help="batch per worker (default 64)")
    parser.add_argument(
        "--checkpoint-every",
        default=None,
        help="checkpoint interval of runs (b) and (c): steps (100) or a time (30s); "
        "default: tfyarn.run's default",
    )
    parser.add_argument(
        "--kill-at",
        type=float,
        default=0.5,
        help="kill worker:1 once past this share of the steps and a first checkpoint (default 0.5)",
    )
    parser.add_argument("--skip-kill", action="store_true", help="leave out run (c)")
    parser.add_argument("--profile", default="local-cluster",
                        help="Spark profile in conf/ (default local-cluster)")  # fmt: skip
    parser.add_argument("--out", default=DEFAULT_OUT, help="output directory (default results/)")
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds per run")


def _check(args: argparse.Namespace) -> None:
    from tfyarn.errors import ConfigError

    problems = [
        f"--{name.replace('_', '-')} must be >= 1, not {getattr(args, name)}"
        for name in ("epochs", "steps_per_epoch", "batch")
        if getattr(args, name) < 1
    ]
    if not 0 < args.kill_at < 1:
        problems.append(f"--kill-at is a share of the steps between 0 and 1, not {args.kill_at}")
    try:
        hidden_width(args.params)
        if args.checkpoint_every:
            _interval(args.checkpoint_every)
    except (ValueError, ConfigError) as exc:
        problems.append(str(exc))
    if problems:
        raise ConfigError("tfyarn bench recovery: " + "; ".join(problems))


def run(args: argparse.Namespace) -> int:
    """Run the benchmark described by ``args``; write and print the report; return 0."""
    _check(args)
    report = measure(args)
    paths = write_outputs(report, args.out)
    print(report_markdown(report))
    for kind, path in paths.items():
        print(f"{kind}: {path}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m benchmarks.recovery_bench``."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.recovery_bench")
    add_arguments(parser)
    return run(parser.parse_args(sys.argv[1:] if argv is None else argv))


if __name__ == "__main__":
    sys.exit(main())
