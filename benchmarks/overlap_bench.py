"""``tfyarn bench overlap``: how much exchange time a training step hides behind backprop.

Two worker processes (:func:`tfyarn.exchange.local.run_local`, tcp on 127.0.0.1) train an
MLP of ``--layers`` Dense(``--width``) layers with ``strategy="allreduce"``, Keras
``model.fit``. A slower link than loopback is stood in for by a delay in every exchange:
``--delay`` seconds per MiB of gradient, slept before the real ring all-reduce, the same
total per step however the gradients are grouped. Measured in the same run, per step (after a
traced warm-up fit):

(a) no delay (the compute and the loopback exchange): the baseline;
(b) the delay, one bucket at the end of backprop (``bucket_bytes`` 1 GiB: the exchange of
    tfyarn before buckets): the delay is fully exposed;
(c) the delay, buckets of ``--bucket-bytes`` (4 MiB, the default), last layer first: each
    starts while backprop computes the layers before it;
(d) the delay, fused by readiness (``cycle_time_ms=--cycle-time-ms``, up to
    ``--bucket-bytes``): each gradient is handed over as soon as it exists and a
    background thread all-reduces what arrived within the cycle.

Exposed exchange = step time minus (a). Writes ``overlap.json`` and ``overlap.md`` under
``--out``. The delay sleeps (no CPU), so on a loaded machine (a) and (c) move together;
compare the rows of one run only.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from benchmarks.common import DEFAULT_OUT, machine_info, markdown_table

__all__ = ["OverlapRow", "add_arguments", "main", "run"]

#: The bucket size of "one bucket at the end": larger than any model measured here.
ONE_BUCKET = 1 << 30
STEPS = 8


@dataclass(frozen=True)
class OverlapRow:
    """One configuration's step time."""

    name: str
    bucket_bytes: int
    cycle_time_ms: float | None
    delay_per_step_ms: float
    step_ms: float
    exposed_ms: float


def _job(width: int, layers: int, batch: int, delay: float) -> Any:
    def job(ctx: Any) -> float:
        import keras
        import numpy as np

        strategy = ctx.strategy()
        algorithm = strategy.algorithm
        exchange = algorithm.exchange_gradients

        def delayed(grads: Any, bucket: int = 0) -> Any:
            time.sleep(delay * sum(g.nbytes for g in grads) / (1 << 20))  # a slower link
            return exchange(grads, bucket=bucket)

        algorithm.exchange_gradients = delayed
        keras.utils.set_random_seed(0)
        model = keras.Sequential(
            [keras.Input((width,))]
            + [keras.layers.Dense(width, activation="relu") for _ in range(layers)]
            + [keras.layers.Dense(10)]
        )
        model.compile(
            optimizer=strategy.distributed_optimizer(keras.optimizers.SGD(0.01)),
            loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        )
        rng = np.random.default_rng(strategy.rank)
        x = rng.standard_normal((batch * (STEPS + 1), width)).astype(np.float32)
        y = rng.integers(0, 10, batch * (STEPS + 1)).astype(np.int32)
        callbacks = strategy.callbacks()
        model.fit(x[:batch], y[:batch], batch_size=batch, verbose=0, callbacks=callbacks)
        started = time.perf_counter()
        model.fit(x[batch:], y[batch:], batch_size=batch, verbose=0, callbacks=callbacks)
        return (time.perf_counter() - started) / STEPS

    return job


def _gradient_mib(args: argparse.Namespace) -> float:
    """MiB of float32 gradient per step: the hidden layers, their input and the head."""
    params = args.layers * (args.width * args.width + args.width) + args.width * 10 + 10
    return params * 4 / (1 << 20)


def _step_seconds(
    args: argparse.Namespace, bucket_bytes: int, cycle_ms: float | None, delay: float
) -> float:
    from tfyarn.exchange.local import run_local

    results = run_local(
        _job(args.width, args.layers, args.batch, delay),
        workers=2,
        strategy="allreduce",
        strategy_options={"bucket_bytes": bucket_bytes, "cycle_time_ms": cycle_ms},
        env={"TF_CPP_MIN_LOG_LEVEL": "3"},
        timeout=900,
    )
    return float(max(results.values()))


def measure(args: argparse.Namespace) -> list[OverlapRow]:
    """The four configurations of the module docstring, in one run."""
    per_step = args.delay * _gradient_mib(args) * 1e3
    base = _step_seconds(args, args.bucket_bytes, None, 0.0) * 1e3
    rows = [OverlapRow("no delay", args.bucket_bytes, None, 0.0, base, 0.0)]
    for name, bucket, cycle in (
        ("one bucket at the end", ONE_BUCKET, None),
        ("buckets, last layer first", args.bucket_bytes, None),
        ("fused by readiness (cycle time)", args.bucket_bytes, args.cycle_time_ms),
    ):
        step = _step_seconds(args, bucket, cycle, args.delay) * 1e3
        rows.append(OverlapRow(name, bucket, cycle, per_step, step, step - base))
        print(f"  {name}: {step:.0f} ms per step ({step - base:.0f} ms exposed)", flush=True)
    return rows


def report_markdown(rows: list[OverlapRow], args: argparse.Namespace) -> str:
    """The table, with what was run."""
    lines = [
        [
            r.name,
            r.bucket_bytes,
            "-" if r.cycle_time_ms is None else f"{r.cycle_time_ms:g}",
            f"{r.delay_per_step_ms:.0f}",
            f"{r.step_ms:.0f}",
            f"{r.exposed_ms:.0f}",
        ]
        for r in rows
    ]
    return (
        "# Exchange hidden behind backpropagation\n\n"
        f"2 workers, allreduce, Keras model.fit of {args.layers} Dense({args.width}) layers, "
        f"batch {args.batch}; {args.delay * 1e3:.1f} ms of simulated link delay per MiB of "
        "gradient, slept before each ring all-reduce. Exposed = step time minus the step "
        "without delay, measured in the same run.\n\n"
        + markdown_table(
            [
                "configuration",
                "bucket_bytes",
                "cycle_time_ms",
                "delay per step (ms)",
                "ms per step",
                "exposed (ms)",
            ],
            lines,
        )
    )


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The benchmark's options."""
    parser.add_argument("--out", default=DEFAULT_OUT, help="folder for the JSON and markdown")
    parser.add_argument("--width", type=int, default=1024, help="units of each Dense layer")
    parser.add_argument("--layers", type=int, default=6, help="hidden Dense layers")
    parser.add_argument("--batch", type=int, default=1024, help="rows per step and worker")
    parser.add_argument(
        "--delay",
        type=float,
        default=0.011,
        help="seconds of simulated link delay per MiB of gradient",
    )
    parser.add_argument(
        "--bucket-bytes", type=int, default=4 << 20, help="bucket size of the overlapping run"
    )
    parser.add_argument(
        "--cycle-time-ms", type=float, default=5.0, help="cycle time of the fused-by-readiness run"
    )


def run(args: argparse.Namespace) -> int:
    """Measure, print and write the report."""
    import cloudpickle

    # the job travels by value to the worker processes
    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    started = time.monotonic()
    rows = measure(args)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    meta = {**machine_info(), "seconds": time.monotonic() - started, "args": vars(args)}
    payload = {"meta": meta, "rows": [asdict(r) for r in rows]}
    (out / "overlap.json").write_text(json.dumps(payload, indent=2, default=str) + "\n")
    table = report_markdown(rows, args)
    (out / "overlap.md").write_text(table)
    print(table)
    return 0


def main(argv: list[str] | None = None) -> int:
    """``python -m benchmarks.overlap_bench``."""
    parser = argparse.ArgumentParser(prog="tfyarn bench overlap", description=__doc__)
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    sys.exit(main())
