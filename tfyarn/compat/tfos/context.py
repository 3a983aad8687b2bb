"""The ``ctx`` a TensorFlowOnSpark ``map_fun(args, ctx)`` gets, built on tfyarn's NodeContext."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from tfyarn.compat.tfos.feed import DataFeed, FeedSource
from tfyarn.compat.tfos.settings import ClusterLayout, executor_id, tfos_cluster_spec

if TYPE_CHECKING:
    from tfyarn.node.context import NodeContext

__all__ = ["TFNodeContext", "absolute_path"]


class TFNodeContext:
    """TensorFlowOnSpark's node context.

    Attributes
    ----------
    job_name : str
        ``"chief"`` (or ``"master"``, as ``master_node=`` named it), ``"worker"``,
        ``"ps"`` or ``"evaluator"``.
    task_index : int
        Index among the roles of the same name.
    executor_id, worker_num : int
        The role's number in the cluster, 0..N-1 (parameter servers, chief, evaluator,
        workers, in that order).
    num_workers : int
        Chief and workers.
    cluster_spec : dict
        TensorFlow's cluster dict, the chief named as ``job_name`` calls it.
    defaultFS : str
        The cluster's default file system (``fs.defaultFS``), ``file://`` without one.
    working_dir : str
        The role's working directory.
    mgr : FeedSource or None
        The fed rows, for ``TFNode.DataFeed(ctx.mgr, ...)``; None without a feed.
    tfyarn : NodeContext
        tfyarn's own context of the role (``ctx.tfyarn.report(...)``, ``model_dir``,
        ``strategy()``...), for programs that go on to use tfyarn directly.
    """

    def __init__(
        self,
        node: NodeContext,
        plan: ClusterLayout,
        default_fs: str,
        mgr: FeedSource | None,
    ) -> None:
        self.tfyarn = node
        tf_name = node.role
        if node.role == "chief" and plan.master_name:
            tf_name = plan.master_name
        self.job_name = tf_name
        self.task_index = node.index
        self.executor_id = executor_id(plan, node.role, node.index)
        self.worker_num = self.executor_id
        self.num_workers = plan.num_workers
        self.cluster_spec = tfos_cluster_spec(node.cluster_spec, plan.master_name)
        self.defaultFS = default_fs
        self.working_dir = os.getcwd()
        self.mgr = mgr

    def absolute_path(self, path: str) -> str:
        """``path`` made absolute on the cluster's file system (see :func:`absolute_path`)."""
        return absolute_path(path, self.defaultFS, self.working_dir)

    def get_data_feed(
        self,
        train_mode: bool = True,
        qname_in: str = "input",
        qname_out: str = "output",
        input_mapping: Mapping[str, str] | None = None,
    ) -> DataFeed:
        """``TFNode.DataFeed(ctx.mgr, train_mode, qname_in, qname_out, input_mapping)``."""
        return DataFeed(self.mgr, train_mode, qname_in, qname_out, input_mapping)

    def release_port(self) -> None:
        """Stop holding this role's TensorFlow port, right before TensorFlow binds it.

        Only needed with ``TFCluster.run(..., release_port=False)``; by default the port
        is released before ``map_fun`` starts.
        """
        self.tfyarn.release_tf_port()

    def __repr__(self) -> str:
        return f"TFNodeContext({self.job_name}:{self.task_index}, executor_id={self.executor_id})"


def absolute_path(path: str, default_fs: str, working_dir: str) -> str:
    """A path as TensorFlowOnSpark resolves it (pure).

    A path with a scheme (``hdfs://``, ``file://``, ``viewfs://``...) is kept. On a local
    default file system a relative path is taken against ``working_dir`` and the result
    given as ``file://...``. On a cluster file system an absolute path is put on it
    (``hdfs://nn:8020/data``) and a relative one under the user's home there
    (``hdfs://nn:8020/user/<user>/data``).
    """
    if urlsplit(path).scheme:
        return path
    fs = (default_fs or "file://").rstrip("/")
    if urlsplit(fs).scheme in ("", "file"):
        full = path if os.path.isabs(path) else os.path.join(working_dir, path)
        return f"file://{os.path.normpath(full)}"
    if path.startswith("/"):
        return f"{fs}{path}"
    user = os.environ.get("HADOOP_USER_NAME") or os.environ.get("USER") or _login()
    return f"{fs}/user/{user}/{path}"


def _login() -> str:
    import getpass

    return getpass.getuser()
