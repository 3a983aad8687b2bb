"""Driver of the multi-host test: one data-parallel job per transport, standalone or YARN.

``multihost_job.py MASTER OUT_DIR TRANSPORT[:INTERFACE] ...``: MASTER is the standalone
master's URL, or ``yarn`` (a client-mode application on the YARN of HADOOP_CONF_DIR, see
:func:`yarn_session`). For each entry, two trainers (one per worker host) train a linear
model with tfyarn's all-reduce exchange in a NumPy loop (no TensorFlow: the test is about
the wiring across hosts). Each role writes
``OUT_DIR/<n>-<task>.json``: its host, the TensorFlow cluster it was given, the
transport it used and its final weights; the driver writes ``OUT_DIR/<n>-result.json``.
The entry ``linkcut`` is a longer job that restarts from its checkpoints (see _options).
"""

import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyspark
from pyspark.sql import SparkSession

import tfyarn
from tfyarn.exchange import tensors
from tfyarn.exchange.tensors import ArrayVariable
from tfyarn.yarn.hadoop_conf import DEV_JVM_FLAGS
from tfyarn.yarn.submit_support import dev_cluster_marker, dev_cluster_uri

STEPS, LR = 12, 0.05
LINKCUT_STEPS, LINKCUT_EVERY = 60, 5
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


def make_train(out: Path, n: int, steps: int = STEPS, pause: float = 0.0) -> Any:
    def train(ctx: Any) -> dict[str, Any]:
        s = ctx.strategy()
        m = Model()
        # Resume (when restarted), then rank 0's weights to every rank (plain SGD: no
        # optimizer state).
        start = s.begin(m)
        name = ctx.task_id.replace(":", "-")
        host = ctx.members[ctx.task_id].host
        for step in range(start, steps):
            w = [v.numpy() for v in m.trainable_weights]
            g = s.algorithm.exchange_gradients(grads(w, *batch(s.rank, step)))
            tensors.assign(m.trainable_weights, [a - LR * b for a, b in zip(w, g, strict=True)])
            s.step_end(m)
            if pause:  # the link-cut test strikes mid-training, by this mark
                (out / f"{n}-{name}.mark").write_text(f"{host} {ctx.attempt} {step}")
                time.sleep(pause)
        s.end(m)
        seen = {
            "task": ctx.task_id,
            "host": host,
            "cluster": ctx.cluster_spec,
            "peers": ctx.peers,
            "transport": ctx.transport,
            "start": start,
            "weights": [v.numpy().tolist() for v in m.weights],
            # Under YARN: the container and the node its NodeManager launched it on.
            "container": os.environ.get("CONTAINER_ID"),
            "nm_host": os.environ.get("NM_HOST"),
        }
        (out / f"{n}-{name}.json").write_text(json.dumps(seen))
        return seen

    return train


def _options(entry: str, out: Path, n: int) -> dict[str, Any]:
    """tfyarn.run's arguments for one command-line entry.

    ``TRANSPORT[+tls][:INTERFACE]``, or ``linkcut``: a longer tcp job that restarts once from
    its checkpoints when a host goes silent (the test takes its link down meanwhile).
    """
    if entry == "linkcut":
        return {
            "train_fn": make_train(out, n, steps=LINKCUT_STEPS, pause=0.1),
            "transport": "tcp",
            "max_restarts": 1,
            "checkpoint_dir": str(out / f"{n}-checkpoints"),
            "checkpoint_every": LINKCUT_EVERY,
            "heartbeat_interval": 1.0,
            "silent_fail_after": 4.0,
        }
    transport, _, interface = entry.partition(":")
    return {
        "train_fn": make_train(out, n),
        "transport": transport.removesuffix("+tls"),
        "interface": interface or None,
        "tls": transport.endswith("+tls"),  # a certificate made for the job
    }


def yarn_session(builder: Any) -> Any:
    """Client mode on the multi-host dev YARN (tests/multihost/apps/netns_cluster.py).

    Two executors, one container on each worker host's NodeManager; the ApplicationMaster
    runs inside this driver (``unmanagedAM``), so no third host is needed for it. Spark's
    jars are used in place and the staging dir is the cluster's (the same disk under its
    viewfs:// name, as ``tfyarn submit`` does on the dev YARN). Unlike on the one-host dev
    YARN nothing is bound to 127.0.0.1: each executor binds the address YARN gives for its
    node (``nm_host``), and the driver its own host's (SPARK_LOCAL_IP).
    """
    marker = dev_cluster_marker(os.environ)
    if marker is None:
        raise SystemExit("master yarn needs HADOOP_CONF_DIR of a dev YARN (tfyarn-dev-yarn.json)")
    spark_home = Path(pyspark.__file__).parent
    return (
        builder.config("spark.submit.deployMode", "client")
        .config("spark.yarn.unmanagedAM.enabled", "true")
        .config("spark.executor.instances", "2")
        .config("spark.executor.memory", "512m")
        .config("spark.executor.memoryOverhead", "1024m")
        .config("spark.yarn.jars", f"local:{spark_home}/jars/*")
        .config("spark.yarn.stagingDir", dev_cluster_uri(str(marker["staging_dir"])))
    )


def main() -> None:
    """Run one job per transport entry of the command line."""
    master, out = sys.argv[1], Path(sys.argv[2])
    out.mkdir(parents=True, exist_ok=True)
    builder = (
        SparkSession.builder.master(master)
        .appName("tfyarn-multihost")
        .config("spark.executor.cores", "1")
        .config("spark.task.maxFailures", "1")
        # short-lived JVMs on a shared 2-core box (tests/conftest.py SHORT_LIVED_JVM)
        .config("spark.driver.extraJavaOptions", " ".join(DEV_JVM_FLAGS))
        .config("spark.executor.extraJavaOptions", " ".join(DEV_JVM_FLAGS))
    )
    if master == "yarn":
        builder = yarn_session(builder)
    else:
        builder = builder.config("spark.cores.max", "2").config("spark.executor.memory", "1g")
    spark = builder.getOrCreate()
    for n, entry in enumerate(sys.argv[3:]):
        result = tfyarn.run(
            spark,
            workers=2,
            chief=False,
            strategy="allreduce",
            progress=False,
            timeout=300,
            **_options(entry, out, n),
        )
        (out / f"{n}-result.json").write_text(json.dumps(result.to_json()))
    spark.stop()


if __name__ == "__main__":  # the test imports this module for the reference
    main()
