"""``TFNode``: TensorFlowOnSpark's helpers for use inside ``map_fun``."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from tfyarn.compat.tfos.feed import DataFeed, FeedSource
from tfyarn.errors import ConfigError

if TYPE_CHECKING:
    from tfyarn.compat.tfos.context import TFNodeContext

__all__ = [
    "DataFeed",
    "batch_results",
    "export_saved_model",
    "hdfs_path",
    "next_batch",
    "start_cluster_server",
    "terminate",
]


def hdfs_path(ctx: TFNodeContext, path: str) -> str:
    """``path`` made absolute on the cluster's file system (``ctx.absolute_path``)."""
    return ctx.absolute_path(path)


def start_cluster_server(
    ctx: TFNodeContext, num_gpus: int = 1, rdma: bool = False
) -> tuple[Any, Any]:
    """Start this role's ``tf.distribute.Server``; return ``(cluster_spec, server)``.

    Parameters
    ----------
    ctx : TFNodeContext
        The role's context.
    num_gpus : int
        GPUs this role expects. tfyarn takes GPUs from Spark's resource scheduling
        (``spark.executor.resource.gpu.amount``), never by probing: asking for more than
        Spark gave the role is refused; a role without GPUs runs on its CPU, as
        TensorFlowOnSpark's did.
    rdma : bool
        Refused: TensorFlow 2's server speaks gRPC only (``grpc+verbs`` is gone).

    Raises
    ------
    ConfigError
        ``rdma=True``, or more GPUs than Spark assigned.
    """
    if rdma:
        raise ConfigError(
            "start_cluster_server(rdma=True): TensorFlow 2's server has only its gRPC "
            "protocol (grpc+verbs was removed), so it would not use RDMA. Start the "
            "cluster with TFCluster.run(..., rdma=True), which puts tfyarn's own traffic "
            "(its exchange strategies: ctx.tfyarn.strategy() with tfyarn_options="
            "{'strategy': 'allreduce'}) on UCX over RDMA, and call "
            "start_cluster_server(ctx) without rdma"
        )
    gpus = os.environ.get("CUDA_VISIBLE_DEVICES", "")
    assigned = len([g for g in gpus.split(",") if g.strip()]) if gpus else 0
    if gpus and num_gpus > assigned:
        raise ConfigError(
            f"start_cluster_server(num_gpus={num_gpus}) but Spark assigned this executor "
            f"{assigned} GPU(s) ({gpus}): ask Spark for them "
            "(spark.executor.resource.gpu.amount) or pass num_gpus={assigned}"
        )
    import tensorflow as tf

    cluster = tf.train.ClusterSpec(ctx.cluster_spec)
    ctx.release_port()  # idempotent: the port may already be free (release_port=True)
    server = tf.distribute.Server(cluster, job_name=ctx.job_name, task_index=ctx.task_index)
    return cluster, server


def export_saved_model(model: Any, export_dir: str, is_chief: bool = False) -> str:
    """Export a Keras model as a TensorFlow SavedModel; return where the chief put it.

    Every worker of a ``MultiWorkerMirroredStrategy`` must take part in saving; only the
    chief's copy is kept at ``export_dir`` (local or ``hdfs://``), the others go to a
    temporary folder that is removed.
    """
    from tfyarn import storage

    local_target = storage.is_local(export_dir)
    if is_chief and local_target:
        _, path = storage.filesystem(export_dir)
        model.export(path)
        return export_dir
    scratch = tempfile.mkdtemp(prefix="tfos-export-")
    try:
        model.export(os.path.join(scratch, "model"))
        if is_chief:
            _upload_folder(os.path.join(scratch, "model"), export_dir)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return export_dir


def _upload_folder(local: str, url: str) -> None:
    """Copy the folder ``local`` to ``url`` on a cluster file system, file by file."""
    from tfyarn import storage

    for folder, _, names in os.walk(local):
        relative = os.path.relpath(folder, local)
        for name in names:
            parts = [p for p in (relative, name) if p and p != "."]
            storage.upload(os.path.join(folder, name), storage.join(url, *parts))


def next_batch(mgr: FeedSource, batch_size: int, qname: str = "input") -> list[Any]:
    """TensorFlowOnSpark's older function form of ``DataFeed(mgr).next_batch``."""
    items = DataFeed(mgr, mgr.plan.train, qname_in=qname).next_batch(batch_size)
    assert isinstance(items, list)
    return items


def batch_results(mgr: FeedSource, data: Sequence[Any], qname: str = "output") -> None:
    """TensorFlowOnSpark's older function form of ``DataFeed(mgr).batch_results``."""
    mgr.add_results(data)


def terminate(mgr: FeedSource, qname: str = "input") -> None:
    """TensorFlowOnSpark's older function form of ``DataFeed(mgr).terminate``."""
    mgr.terminated = True
