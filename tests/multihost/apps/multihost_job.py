"""Driver of the multi-host test: one data-parallel job per transport, on Spark standalone.

``multihost_job.py MASTER OUT_DIR TRANSPORT[:INTERFACE] ...``: for each entry, two
trainers (one per worker host) train a linear model with tfyarn's all-reduce exchange in
a NumPy loop (no TensorFlow: the test is about the wiring across hosts). Each role writes
``OUT_DIR/<n>-<task>.json``: its host, the TensorFlow cluster it was given, the
transport it used and its final weights; the driver writes ``OUT_DIR/<n>-result.json``.
"""

import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
from pyspark.sql import SparkSession

import tfyarn
from tfyarn.exchange import tensors
from tfyarn.exchange.tensors import ArrayVariable

STEPS, LR = 12, 0.05
TRUE_KERNEL = np.array([[1.0, -2.0], [0.5, 0.0], [3.0, 1.0]], np.float32)


def batch(rank: int, step: int) -> tuple[np.ndarray, np.ndarray]:
    """Rank ``rank``'s batch of step ``step`` (the test recomputes it for the reference)."""
    rng = np.random.default_rng(1000 * rank + step)
    x = rng.standard_normal((8, 3)).astype(np.float32)
    return x, x @ TRUE_KERNEL + 0.25


def grads(w: list[np.ndarray], x: np.ndarray, y: np.ndarray) -> list[np.ndarray]:
    """Mean-squared-error gradient of the linear model ``x @ w[0] + w[1]``."""
    err = x @ w[0] + w[1] - y
    return [(2 / len(x)) * x.T @ err, 2 * err.mean(axis=0)]


class Model:
    def __init__(self) -> None:
        rng = np.random.default_rng(0)
        self.trainable_weights = [
            ArrayVariable("kernel", rng.standard_normal((3, 2)).astype(np.float32)),
            ArrayVariable("bias", np.zeros(2, np.float32)),
        ]
        self.weights = list(self.trainable_weights)


def make_train(out: Path, n: int) -> Any:
    def train(ctx: Any) -> dict[str, Any]:
        s = ctx.strategy()
        m = Model()
        s.begin(m)  # rank 0's weights to every rank (no optimizer state: plain SGD)
        for step in range(STEPS):
            w = [v.numpy() for v in m.trainable_weights]
            g = s.algorithm.exchange_gradients(grads(w, *batch(s.rank, step)))
            tensors.assign(m.trainable_weights, [a - LR * b for a, b in zip(w, g, strict=True)])
            s.step_end(m)
        s.end(m)
        seen = {
            "task": ctx.task_id,
            "host": ctx.members[ctx.task_id].host,
            "cluster": ctx.cluster_spec,
            "peers": ctx.peers,
            "transport": ctx.transport,
            "weights": [v.numpy().tolist() for v in m.weights],
        }
        (out / f"{n}-{ctx.task_id.replace(':', '-')}.json").write_text(json.dumps(seen))
        return seen

    return train


def main() -> None:
    """Run one job per transport entry of the command line."""
    master, out = sys.argv[1], Path(sys.argv[2])
    out.mkdir(parents=True, exist_ok=True)
    spark = (
        SparkSession.builder.master(master)
        .appName("tfyarn-multihost")
        .config("spark.executor.cores", "1")
        .config("spark.cores.max", "2")
        .config("spark.executor.memory", "1g")
        .config("spark.task.maxFailures", "1")
        .getOrCreate()
    )
    for n, entry in enumerate(sys.argv[3:]):
        transport, _, interface = entry.partition(":")
        result = tfyarn.run(
            spark,
            make_train(out, n),
            workers=2,
            chief=False,
            strategy="allreduce",
            transport=transport,
            interface=interface or None,
            progress=False,
            timeout=300,
        )
        (out / f"{n}-result.json").write_text(json.dumps(result.to_json()))
    spark.stop()


if __name__ == "__main__":  # the test imports this module for the reference
    main()
