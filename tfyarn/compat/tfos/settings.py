"""TensorFlowOnSpark's arguments mapped onto ``tfyarn.run``'s (pure, unit-tested).

Every argument of ``TFCluster.run`` either maps to a tfyarn setting, is honoured by the
compatibility layer itself, or is refused with a :class:`~tfyarn.errors.ConfigError`
naming it and saying what to do: none is dropped without a word.
"""

from __future__ import annotations

import enum
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from tfyarn.errors import ConfigError

__all__ = [
    "DEFAULT_QUEUES",
    "ClusterLayout",
    "InputMode",
    "executor_id",
    "layout",
    "tfos_cluster_spec",
    "tfos_tf_config",
    "transport_for",
]

#: TensorFlowOnSpark's default queue names.
DEFAULT_QUEUES = ("input", "output", "error")


class InputMode(enum.IntEnum):
    """Where the map function's data comes from (TensorFlowOnSpark's values: 0 and 1)."""

    #: ``map_fun`` reads its own data (files, HDFS); ``TFCluster.run`` starts the job.
    TENSORFLOW = 0
    #: ``cluster.train(rdd)``/``cluster.inference(rdd)`` feed an RDD through ``DataFeed``.
    SPARK = 1


@dataclass(frozen=True)
class ClusterLayout:
    """The roles of a TensorFlowOnSpark cluster, as tfyarn plans them.

    Attributes
    ----------
    workers, ps : int
        Worker and parameter-server roles.
    chief : bool
        A dedicated chief (TensorFlowOnSpark's ``master_node``).
    evaluator : bool
        An evaluator role (``eval_node=True``).
    master_name : str
        What the chief is called in ``ctx.job_name``, ``ctx.cluster_spec`` and TF_CONFIG:
        ``"chief"`` or ``"master"`` (``master_node=``); ``""`` without one.
    """

    workers: int
    ps: int
    chief: bool
    evaluator: bool
    master_name: str = ""
    queues: tuple[str, ...] = field(default=DEFAULT_QUEUES)

    @property
    def num_workers(self) -> int:
        """Chief and workers: TensorFlowOnSpark's ``ctx.num_workers``."""
        return self.workers + int(self.chief)


def layout(
    num_executors: int,
    num_ps: int,
    *,
    master_node: str | None = None,
    eval_node: bool = False,
    driver_ps_nodes: bool = False,
    queues: Sequence[str] = DEFAULT_QUEUES,
) -> ClusterLayout:
    """The roles of ``TFCluster.run(sc, ..., num_executors, num_ps, ...)``.

    TensorFlowOnSpark takes ``num_executors`` for the whole cluster: parameter servers,
    the master/chief and the evaluator each take one executor, and the rest are workers.

    Raises
    ------
    ConfigError
        ``driver_ps_nodes=True``, an unknown ``master_node``, too few executors, or
        queues without ``"input"``.
    """
    if driver_ps_nodes:
        raise ConfigError(
            "TFCluster.run(driver_ps_nodes=True): tfyarn runs parameter servers in Spark "
            "executors only (the driver holds no role); leave driver_ps_nodes False and size "
            "num_executors to include the num_ps parameter servers"
        )
    if master_node not in (None, "chief", "master"):
        raise ConfigError(
            f"TFCluster.run(master_node={master_node!r}): tfyarn knows the chief as "
            "'chief' (or TensorFlowOnSpark's older 'master'); pass one of them, or None for "
            "no dedicated chief (worker 0 then acts as chief)"
        )
    if num_ps < 0:
        raise ConfigError(f"TFCluster.run(num_ps={num_ps}): it cannot be negative")
    chief = master_node is not None
    workers = num_executors - num_ps - int(chief) - int(eval_node)
    if workers < 0 or (workers == 0 and not chief):
        raise ConfigError(
            f"TFCluster.run(num_executors={num_executors}) is too few for {num_ps} parameter "
            f"server(s){', a chief' if chief else ''}{', an evaluator' if eval_node else ''} "
            "and at least one worker: num_executors counts every role of the cluster"
        )
    names = tuple(queues)
    if "input" not in names:
        raise ConfigError(
            f"TFCluster.run(queues={list(names)!r}) has no 'input' queue, which the feed "
            "uses; keep 'input' in the list (tfyarn feeds one input queue per job)"
        )
    return ClusterLayout(workers, num_ps, chief, eval_node, master_node or "", names)


def executor_id(plan: ClusterLayout, role: str, index: int) -> int:
    """TensorFlowOnSpark's ``ctx.executor_id`` (= ``worker_num``) of a role.

    TensorFlowOnSpark numbers the executors of a cluster 0..N-1 in the order of its
    cluster template: parameter servers, then the master/chief, the evaluator, the workers.
    """
    chief = int(plan.chief)
    evaluator = int(plan.evaluator)
    offsets = {
        "ps": 0,
        "chief": plan.ps,
        "evaluator": plan.ps + chief,
        "worker": plan.ps + chief + evaluator,
    }
    if role not in offsets:
        raise ConfigError(f"unknown role {role!r}")
    return offsets[role] + index


def tfos_cluster_spec(spec: Mapping[str, Any], master_name: str) -> dict[str, Any]:
    """tfyarn's cluster dict with the chief named as TensorFlowOnSpark's ``master_node``."""
    out = {k: list(v) for k, v in spec.items()}
    if master_name == "master" and "chief" in out:
        out["master"] = out.pop("chief")
    return out


def tfos_tf_config(tf_config: str, master_name: str) -> str:
    """TF_CONFIG with the chief named ``master`` when ``master_node='master'`` asked so."""
    if master_name != "master":
        return tf_config
    config = json.loads(tf_config)
    config["cluster"] = tfos_cluster_spec(config.get("cluster", {}), master_name)
    task = config.get("task", {})
    if task.get("type") == "chief":
        task["type"] = "master"
    return json.dumps(config)


def transport_for(rdma: bool, protocol: str | None) -> str | None:
    """The tfyarn transport for TensorFlowOnSpark's ``rdma=``/``protocol=``; None: none.

    ``rdma=True``, ``protocol="rdma"`` and ``"grpc+verbs"`` (TensorFlow 1's RDMA
    protocol) ask for RDMA: tfyarn's ``"rdma"`` transport, UCX over an RDMA device, which
    fails rather than fall back to TCP. ``"ucx"`` is UCX over whatever it finds (shared
    memory, TCP); ``"grpc"`` is TensorFlow's own gRPC with no tfyarn transport.
    """
    wanted = (protocol or "").lower()
    if rdma and wanted not in ("", "rdma", "grpc+verbs"):
        raise ConfigError(f"rdma=True contradicts protocol={protocol!r}: pass one of them")
    if rdma or wanted in ("rdma", "grpc+verbs"):
        return "rdma"
    if wanted in ("", "grpc"):
        return None
    if wanted in ("ucx", "tcp"):
        return wanted
    raise ConfigError(
        f"protocol={protocol!r} is not one tfyarn knows: use 'grpc' (TensorFlow's own), "
        "'rdma' (UCX over InfiniBand/RoCE), 'ucx' or 'tcp'"
    )
