"""``tfyarn bench exchange``: ring all-reduce vs Open MPI, and training throughput scaling.

Three measurements, each with its baseline in the same run:

(a) **all-reduce bus bandwidth**, float32 buffers of 1-256 MiB between 2 processes:
    tfyarn's ring over each transport vs Open MPI's ``MPI_Allreduce`` through mpi4py
    (``mpirun -np 2``, shared-memory ``vader`` BTL). Bus bandwidth is NCCL's definition,
    ``size / time * 2 (n-1) / n``, the same for both. Target: tfyarn >= 1.0x MPI.
(b) **training throughput** of a fixed Keras model (a small CNN on 28x28 inputs) with
    2 workers vs 1 worker under ``strategy="allreduce"``, every process limited to one
    intra-op and one inter-op thread. Target: >= 1.8x.
(c) **overhead**: tfyarn with 1 worker vs plain single-process Keras ``model.fit`` of the
    same model, same thread limits, timed windows alternating in one process (so that
    both see the same background load). Target: >= 0.95x.

Workers are local processes wired exactly as the launcher wires executors
(:func:`tfyarn.exchange.local.run_local`); Spark itself is not in the timed path.
Throughput is measured after a warm-up epoch, so that tracing and start-up do not count.
Writes ``exchange.json``, ``exchange.md``, ``exchange.png`` (bus bandwidth) and
``exchange_training.png`` under ``--out``.
"""

from __future__ import annotations

import argparse
import functools
import json
import multiprocessing as mp
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from benchmarks.common import (
    DEFAULT_OUT,
    Row,
    format_size,
    markdown_table,
    parse_size,
    write_report,
)

__all__ = ["add_arguments", "main", "run"]

DEFAULT_SIZES = ("1M", "4M", "16M", "64M", "256M")
#: tfyarn transports measured, with the environment that selects them.
TRANSPORTS: dict[str, tuple[str, dict[str, str]]] = {
    "tfyarn-tcp": ("tcp", {}),
    "tfyarn-ucx-shm": ("ucx", {"UCX_TLS": "posix,sysv,cma,self"}),
    "tfyarn-grpc": ("grpc", {}),
}
TRIALS = 3
#: Bytes reduced per trial (repetitions adapt to the size).
TRIAL_BYTES = 512 << 20
TARGETS = {"allreduce_vs_mpi": 1.0, "two_vs_one_worker": 1.8, "tfyarn_vs_keras": 0.95}
ONE_THREAD = {
    "TF_NUM_INTRAOP_THREADS": "1",
    "TF_NUM_INTEROP_THREADS": "1",
    "OMP_NUM_THREADS": "1",
    "TF_CPP_MIN_LOG_LEVEL": "3",
}


def _reps(size: int, scale: float) -> int:
    return int(max(2, min(100, TRIAL_BYTES * scale // size)))


# -- (a) all-reduce -------------------------------------------------------------------


def _allreduce_job(
    ctx: Any, sizes: Sequence[int], scale: float, chunk: int
) -> list[dict[str, Any]]:
    import numpy as np

    from tfyarn.exchange.mesh import Mesh, training_tasks
    from tfyarn.exchange.ring import Ring

    mesh = Mesh(ctx.task_id, ctx.listener, ctx.peers, ctx.secret, timeout=120)
    ring = Ring.connect(mesh, training_tasks(ctx.peers), chunk_bytes=chunk)
    out = []
    try:
        for size in sizes:
            a = np.ones(size // 4, np.float32)
            reps = _reps(size, scale)
            ring.allreduce_(a)  # warm-up: page faults, pool slabs, TCP windows
            best = float("inf")
            for _ in range(TRIALS):
                ring.barrier()
                t = time.perf_counter()
                for _ in range(reps):
                    ring.allreduce_(a)
                best = min(best, time.perf_counter() - t)
            out.append({"size": size, "reps": reps, "seconds": best, "transport": ring.transport})
        return out
    finally:
        ring.close()
        mesh.close()


_MPI_SCRIPT = r"""
import json, sys, time
import numpy as np
from mpi4py import MPI
comm = MPI.COMM_WORLD
sizes = [int(s) for s in sys.argv[1].split(",")]
reps_of = json.loads(sys.argv[2])
trials = int(sys.argv[3])
for size in sizes:
    a = np.ones(size // 4, np.float32)
    b = np.empty_like(a)
    reps = reps_of[str(size)]
    comm.Allreduce(a, b, op=MPI.SUM)
    best = float("inf")
    for _ in range(trials):
        comm.Barrier()
        t = time.perf_counter()
        for _ in range(reps):
            comm.Allreduce(a, b, op=MPI.SUM)
        best = min(best, time.perf_counter() - t)
    if comm.rank == 0:
        print("ROW " + json.dumps({"size": size, "reps": reps, "seconds": best}), flush=True)
"""


def _mpi_python() -> str | None:
    """A Python that has mpi4py: this one, else Debian's (python3-mpi4py)."""
    for exe in (sys.executable, "/usr/bin/python3"):
        if (
            Path(exe).exists()
            and subprocess.run(
                [exe, "-c", "import mpi4py, numpy"], capture_output=True, timeout=60
            ).returncode
            == 0
        ):
            return exe
    return None


def measure_mpi(sizes: Sequence[int], scale: float, timeout: float) -> tuple[list[Row], str]:
    """Open MPI ``MPI_Allreduce`` (2 ranks, vader) rows, or a reason why none."""
    mpirun = shutil.which("mpirun")
    py = _mpi_python()
    if mpirun is None or py is None:
        return [], "Open MPI/mpi4py not installed (scripts/setup-system.sh installs them)"
    reps = {str(s): _reps(s, scale) for s in sizes}
    best: dict[int, Row] = {}
    errors = []
    # Open MPI's default (ranks bound to cores) and unbound: on a loaded machine either
    # may win; the baseline is the better of the two at each size
    for binding in ([], ["--bind-to", "none"]):
        with tempfile.TemporaryDirectory(prefix="tfyarn-mpi-") as tmp:
            script = Path(tmp) / "allreduce.py"
            script.write_text(_MPI_SCRIPT)
            cmd = [
                mpirun, "--allow-run-as-root", "-np", "2", *binding,
                "--mca", "btl", "self,vader", py, str(script),
                ",".join(map(str, sizes)), json.dumps(reps), str(TRIALS),
            ]  # fmt: skip
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
        for line in proc.stdout.splitlines():
            if line.startswith("ROW "):
                d = json.loads(line[4:])
                row = _busbw_row(
                    "openmpi",
                    d["size"],
                    d["reps"],
                    d["seconds"],
                    2,
                    binding=" ".join(binding) or "default (bind to core)",
                )
                if d["size"] not in best or row.gbps > best[d["size"]].gbps:
                    best[d["size"]] = row
        if proc.returncode != 0:
            errors.append(
                f"mpirun {' '.join(binding)} failed ({proc.returncode}): {proc.stderr[-300:]}"
            )
    rows = [best[s] for s in sorted(best)]
    return rows, "" if rows else "; ".join(errors)


def _busbw_row(backend: str, size: int, reps: int, seconds: float, n: int, **extra: Any) -> Row:
    row = Row.measured(backend, "allreduce", size, reps, seconds, **extra)
    row.gbps = size * reps / seconds / 1e9 * 2 * (n - 1) / n  # NCCL's bus bandwidth
    return row


def measure_tfyarn(
    name: str, sizes: Sequence[int], scale: float, chunk: int, timeout: float
) -> tuple[list[Row], str]:
    """Ring all-reduce rows over one transport, or a reason why none."""
    from tfyarn.errors import TFYarnError
    from tfyarn.exchange.local import run_local

    scheme, env = TRANSPORTS[name]
    job = functools.partial(_allreduce_job, sizes=list(sizes), scale=scale, chunk=chunk)
    try:
        res = run_local(job, workers=2, transport=scheme, env=env, timeout=timeout)
    except TFYarnError as exc:
        return [], str(exc).splitlines()[0]
    rows = []
    for i, d in enumerate(res["worker:0"]):
        slowest = max(r[i]["seconds"] for r in res.values())
        rows.append(_busbw_row(name, d["size"], d["reps"], slowest, 2, transport=d["transport"]))
    return rows, ""


# -- (b), (c) training throughput ------------------------------------------------------

BATCH = 64
#: Timed windows per process (the fastest counts) and interleaved rounds per setting.
WINDOWS = 3
ROUNDS = 2


def _cnn() -> Any:
    import keras

    keras.utils.set_random_seed(0)
    return keras.Sequential(
        [
            keras.Input((28, 28, 1)),
            keras.layers.Conv2D(32, 3, activation="relu"),
            keras.layers.Conv2D(32, 3, activation="relu"),
            keras.layers.MaxPooling2D(),
            keras.layers.Conv2D(64, 3, activation="relu"),
            keras.layers.GlobalAveragePooling2D(),
            keras.layers.Dense(10),
        ]
    )


def _setup_tf() -> Any:
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(1)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    return tf


def _dataset(tf: Any) -> Any:
    import numpy as np

    rng = np.random.default_rng(0)
    x = rng.standard_normal((BATCH * 8, 28, 28, 1)).astype(np.float32)
    y = rng.integers(0, 10, BATCH * 8).astype(np.int32)
    return tf.data.Dataset.from_tensor_slices((x, y)).batch(BATCH).repeat()


def _compiled(ctx: Any, ds: Any, steps: int) -> tuple[Any, list[Any]]:
    """The CNN compiled plainly (``ctx`` None) or under ctx's strategy, after a warm-up."""
    import keras

    model = _cnn()
    opt = keras.optimizers.SGD(0.01, momentum=0.9)
    callbacks: list[Any] = []
    if ctx is not None:
        strategy = ctx.strategy()
        opt = strategy.distributed_optimizer(opt)
        callbacks = strategy.callbacks(average_metrics=False)
    model.compile(optimizer=opt, loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(ds, epochs=1, steps_per_epoch=max(3, steps // 4), verbose=0, callbacks=callbacks)
    return model, callbacks


def _window(model: Any, callbacks: list[Any], ds: Any, steps: int) -> float:
    t = time.perf_counter()
    model.fit(ds, epochs=1, steps_per_epoch=steps, verbose=0, callbacks=callbacks)
    return time.perf_counter() - t


def _train(ctx: Any, steps: int, windows: int = WINDOWS) -> dict[str, Any]:
    """A worker of the 2-worker job: warm-up, then ``windows`` timed epochs.

    The fastest window counts: the machine is shared, and a window slowed down by
    someone else's burst says nothing about tfyarn.
    """
    tf = _setup_tf()
    ds = _dataset(tf)
    model, callbacks = _compiled(ctx, ds, steps)
    times = [_window(model, callbacks, ds, steps) for _ in range(windows)]
    # the exchange alone: one step's gradients (all trainable weights, fused), all-reduced
    import numpy as np

    strategy = ctx.strategy()
    grads = np.zeros(sum(int(np.prod(w.shape)) for w in model.trainable_weights), np.float32)
    strategy.barrier()
    reps, t = 50, time.perf_counter()
    for _ in range(reps):
        strategy.ring.allreduce_(grads, average=True)
    exchange = (time.perf_counter() - t) / reps
    return {
        "seconds": min(times),
        "samples": float(steps * BATCH),
        "all_seconds": times,
        "exchange_seconds": exchange,
        "gradient_bytes": grads.nbytes,
    }


def _plain_vs_one_worker(steps: int, windows: int) -> dict[str, float]:
    """Plain Keras and tfyarn with 1 worker in one process, windows alternating.

    Alternating in one process exposes both to the same background load, which is what
    makes a ratio near 1 measurable on a shared machine.
    """
    import secrets

    os.environ.update(ONE_THREAD)
    tf = _setup_tf()
    from tfyarn import transport
    from tfyarn.exchange.local import LocalContext

    secret = secrets.token_bytes(32)
    listener = transport.listen("tcp://127.0.0.1:0", secret=secret)
    ctx = LocalContext(
        "worker", 0, secret, "tcp", listener, {"worker:0": listener.address}, "allreduce", {}
    )
    try:
        ds = _dataset(tf)
        plain = _compiled(None, ds, steps)
        ours = _compiled(ctx, ds, steps)
        best = {"keras_1proc": 0.0, "tfyarn_1w": 0.0}
        for _ in range(windows):
            for name, (model, cbs) in (("keras_1proc", plain), ("tfyarn_1w", ours)):
                rate = steps * BATCH / _window(model, cbs, ds, steps)
                best[name] = max(best[name], rate)
        return best
    finally:
        ctx.strategy().close()
        listener.close()


def measure_training(steps: int, transport: str, timeout: float) -> dict[str, Any]:
    """Samples/s of plain Keras, tfyarn 1 worker and tfyarn 2 workers."""
    from tfyarn.exchange.local import run_local

    scheme, env = TRANSPORTS[transport]
    out: dict[str, Any] = {
        "batch_per_worker": BATCH,
        "steps": steps,
        "transport": transport,
        "windows": WINDOWS,
        "rounds": ROUNDS,
    }
    job = functools.partial(_train, steps=steps)
    best: dict[str, float] = {"keras_1proc": 0.0, "tfyarn_1w": 0.0, "tfyarn_2w": 0.0}
    exchange = float("inf")
    # settings interleaved round after round, so that a load burst on the shared machine
    # does not fall on one setting only; the best round of each counts
    for _ in range(ROUNDS):
        with mp.get_context("spawn").Pool(1) as pool:
            ab = pool.apply_async(_plain_vs_one_worker, (steps, 2 * WINDOWS)).get(timeout)
        for k, v in ab.items():
            best[k] = max(best[k], v)
        res = run_local(
            job,
            workers=2,
            strategy="allreduce",
            transport=scheme,
            env={**ONE_THREAD, **env},
            timeout=timeout,
        )
        total = sum(v["samples"] for v in res.values())
        best["tfyarn_2w"] = max(best["tfyarn_2w"], total / max(v["seconds"] for v in res.values()))
        exchange = min(exchange, max(v["exchange_seconds"] for v in res.values()))
        out["gradient_bytes"] = res["worker:0"]["gradient_bytes"]
    out.update(best)
    out["exchange_ms_per_step"] = exchange * 1e3
    # what 2 workers would reach with two free cores: compute per step as measured with
    # 1 worker, plus the measured exchange
    step = BATCH / out["tfyarn_1w"]
    out["two_vs_one_bound"] = 2 * step / (step + exchange)
    out["two_vs_one_worker"] = out["tfyarn_2w"] / out["tfyarn_1w"]
    out["tfyarn_vs_keras"] = out["tfyarn_1w"] / out["keras_1proc"]
    return out


# -- report -----------------------------------------------------------------------------


def _write_training_png(path: Path, training: dict[str, Any]) -> Path | None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    labels = ["Keras, 1 process", "tfyarn, 1 worker", "tfyarn, 2 workers"]
    values = [training["keras_1proc"], training["tfyarn_1w"], training["tfyarn_2w"]]
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    ax.bar(labels, values, color=["#888888", "#4c72b0", "#55a868"])
    ax.set_ylabel("samples / s")
    ax.set_title("Keras model.fit throughput (1 intra-op thread per process)")
    for i, v in enumerate(values):
        ax.text(i, v, f"{v:.0f}", ha="center", va="bottom")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _notes(
    rows: Sequence[Row],
    training: dict[str, Any] | None,
    skipped: dict[str, str],
    load: dict[str, tuple[float, float, float]],
) -> str:
    lines = []
    mpi = {r.size: r.gbps for r in rows if r.backend == "openmpi"}
    tf_rows = [r for r in rows if r.backend.startswith("tfyarn")]
    if mpi and tf_rows:
        table = []
        for size in sorted(mpi):
            best = max((r for r in tf_rows if r.size == size), key=lambda r: r.gbps, default=None)
            if best is not None:
                ratio = best.gbps / mpi[size]
                table.append(
                    [
                        format_size(size),
                        best.backend,
                        f"{best.gbps:.2f}",
                        f"{mpi[size]:.2f}",
                        f"{ratio:.2f}x",
                        "met" if ratio >= TARGETS["allreduce_vs_mpi"] else "missed",
                    ]
                )
        lines.append("## (a) all-reduce bus bandwidth, best tfyarn transport vs Open MPI\n")
        lines.append(
            markdown_table(
                ["size", "tfyarn backend", "tfyarn GB/s", "Open MPI GB/s", "ratio", "target 1.0x"],
                table,
            )
        )
    if training:
        lines.append("## (b), (c) Keras model.fit throughput (samples/s)\n")
        t = training
        lines.append(
            markdown_table(
                ["measure", "value", "target", "status"],
                [
                    ["plain Keras, 1 process", f"{t['keras_1proc']:.1f}", "", ""],
                    ["tfyarn allreduce, 1 worker", f"{t['tfyarn_1w']:.1f}", "", ""],
                    ["tfyarn allreduce, 2 workers", f"{t['tfyarn_2w']:.1f}", "", ""],
                    [
                        "(b) 2 workers / 1 worker",
                        f"{t['two_vs_one_worker']:.2f}x",
                        ">= 1.8x",
                        "met"
                        if t["two_vs_one_worker"] >= TARGETS["two_vs_one_worker"]
                        else "missed",
                    ],
                    [
                        "gradient all-reduce alone, 2 workers",
                        f"{t['exchange_ms_per_step']:.2f} ms/step "
                        f"({t['gradient_bytes'] / 1024:.0f} KiB of gradients)",
                        "",
                        "",
                    ],
                    [
                        "2 workers / 1 worker with two free cores (compute + exchange)",
                        f"{t['two_vs_one_bound']:.2f}x",
                        "",
                        "",
                    ],
                    [
                        "(c) tfyarn 1 worker / Keras",
                        f"{t['tfyarn_vs_keras']:.2f}x",
                        ">= 0.95x",
                        "met" if t["tfyarn_vs_keras"] >= TARGETS["tfyarn_vs_keras"] else "missed",
                    ],
                ],
            )
        )
        lines.append(
            f"Model: 3-layer CNN on 28x28x1, batch {t['batch_per_worker']} per worker, "
            f"best of {t['windows']} windows of {t['steps']} steps after a warm-up epoch, "
            f"best of {t['rounds']} interleaved rounds; transport {t['transport']}.\n"
        )
    for k, why in skipped.items():
        lines.append(f"- {k} not measured: {why}")
    lines.append(
        f"\nLoad average (1, 5, 15 min) at the start {load['start']}, at the end "
        f"{load['end']}, on {os.cpu_count()} cores: on a shared machine the figures move "
        "with the other load; compare only rows of the same run."
    )
    return "\n".join(lines)


def _write_without_png(
    out_dir: str, name: str, title: str, rows: Sequence[Row], meta: dict[str, Any], notes: str
) -> dict[str, Any]:
    from benchmarks.common import machine_info, write_json, write_markdown

    out = Path(out_dir)
    return {
        "json": write_json(out / f"{name}.json", rows, {**machine_info(), **meta}),
        "markdown": write_markdown(out / f"{name}.md", title, rows, notes),
    }


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the options of ``tfyarn bench exchange``."""
    parser.add_argument(
        "--sizes",
        default=",".join(DEFAULT_SIZES),
        help=f"all-reduce sizes (default {','.join(DEFAULT_SIZES)})",
    )
    parser.add_argument(
        "--transports", default=",".join(TRANSPORTS), help=f"subset of {','.join(TRANSPORTS)}"
    )
    parser.add_argument("--chunk", default="1M", help="ring pipeline chunk (default 1M)")
    parser.add_argument("--steps", type=int, default=30, help="timed steps per window (default 30)")
    parser.add_argument(
        "--train-transport",
        default="tfyarn-tcp",
        help="transport of the training measurement (default tfyarn-tcp)",
    )
    parser.add_argument("--skip", default="", help="comma-separated parts to skip: allreduce,train")
    parser.add_argument(
        "--scale",
        type=float,
        default=1.0,
        help="multiply the bytes reduced per trial (0.25 for a quick run)",
    )
    parser.add_argument("--out", default=DEFAULT_OUT, help="output directory (default results/)")
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds per measurement")


def run(args: argparse.Namespace) -> int:
    """Run the benchmark described by ``args``; write the report; return 0."""
    from tfyarn.errors import ConfigError

    try:
        sizes = sorted({parse_size(s) for s in args.sizes.split(",") if s.strip()})
        chunk = parse_size(args.chunk)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    transports = [t.strip() for t in args.transports.split(",") if t.strip()]
    skip = {s.strip() for s in args.skip.split(",") if s.strip()}
    bad = sorted(set(transports) - set(TRANSPORTS)) + sorted(skip - {"allreduce", "train"})
    if bad or args.train_transport not in TRANSPORTS or args.scale <= 0 or args.steps < 1:
        raise ConfigError(
            f"bad arguments {bad or args.train_transport}: transports are "
            f"{', '.join(TRANSPORTS)}; --skip takes allreduce,train; --scale, --steps > 0"
        )
    rows: list[Row] = []
    skipped: dict[str, str] = {}
    load = {"start": tuple(round(x, 1) for x in os.getloadavg())}
    if "allreduce" not in skip:
        got, why = measure_mpi(sizes, args.scale, args.timeout)
        rows += got
        if why:
            skipped["openmpi"] = why
        print(f"{'openmpi':>15}: {len(got)} rows {why[:100]}", flush=True)
        for name in transports:
            got, why = measure_tfyarn(name, sizes, args.scale, chunk, args.timeout)
            rows += got
            if why:
                skipped[name] = why
            print(f"{name:>15}: {len(got)} rows {why[:100]}", flush=True)
    training = None
    if "train" not in skip:
        training = measure_training(args.steps, args.train_transport, args.timeout)
        print(f"{'training':>15}: {json.dumps(training)}", flush=True)
    load["end"] = tuple(round(x, 1) for x in os.getloadavg())
    notes = _notes(rows, training, skipped, load)
    # with no all-reduce rows there is no bandwidth plot to draw (common.write_png)
    writer = write_report if rows else _write_without_png
    paths: dict[str, Any] = writer(
        args.out,
        "exchange",
        "tfyarn exchange benchmark",
        rows,
        {
            "sizes": sizes,
            "transports": transports,
            "chunk": chunk,
            "scale": args.scale,
            "training": training,
            "skipped": skipped,
            "targets": TARGETS,
            "load": load,
        },
        notes,
    )
    if training:
        paths["training png"] = _write_training_png(
            Path(args.out) / "exchange_training.png", training
        )
    print(notes)
    for kind, path in paths.items():
        if path is not None:
            print(f"{kind}: {path}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m benchmarks.exchange_bench``."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.exchange_bench")
    add_arguments(parser)
    return run(parser.parse_args(sys.argv[1:] if argv is None else argv))


if __name__ == "__main__":
    sys.exit(main())
