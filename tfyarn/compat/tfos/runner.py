"""What each role runs: TensorFlowOnSpark's ``map_fun(args, ctx)`` inside ``tfyarn.run``.

:class:`RoleRunner` is the ``train_fn`` the compatibility layer hands to ``tfyarn.run``:
it builds the TensorFlowOnSpark context, puts TF_CONFIG in the environment as
TensorFlowOnSpark names it, releases the TensorFlow port (``release_port=True``), runs
``map_fun`` and, under ``cluster.inference``, leaves the role's results where the driver
collects them.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import cloudpickle

from tfyarn import storage
from tfyarn.compat.tfos.context import TFNodeContext
from tfyarn.compat.tfos.feed import FeedPlan, FeedSource
from tfyarn.compat.tfos.settings import ClusterLayout, tfos_tf_config
from tfyarn.errors import ConfigError

if TYPE_CHECKING:
    from tfyarn.node.context import NodeContext

__all__ = ["RESULTS_FOLDER", "RoleRunner", "results_file"]

log = logging.getLogger("tfyarn")

#: Folder under the job's model_dir where each trainer leaves its inference results.
RESULTS_FOLDER = "tfos-inference-results"


def results_file(model_dir: str, task_id: str) -> str:
    """Where role ``task_id`` leaves its inference results."""
    return storage.join(model_dir, RESULTS_FOLDER, f"{task_id.replace(':', '_')}.pkl")


@dataclass(frozen=True)
class RoleRunner:
    """``train_fn`` of a TensorFlowOnSpark job (pickled to every role).

    Attributes
    ----------
    map_fun : callable
        The program's ``map_fun(args, ctx)``.
    tf_args : Any
        Its ``args``.
    plan : ClusterLayout
        The cluster's roles and names.
    default_fs : str
        The cluster's default file system.
    feed : FeedPlan or None
        The data fed (InputMode.SPARK), else None.
    release_port : bool
        Release the TensorFlow port before ``map_fun`` starts.
    """

    map_fun: Callable[[Any, TFNodeContext], Any]
    tf_args: Any
    plan: ClusterLayout
    default_fs: str
    feed: FeedPlan | None
    release_port: bool = True

    def __call__(self, node: NodeContext) -> Any:
        """Run ``map_fun`` as this role; return its value (the chief's is the job's)."""
        mgr = self._feed_source(node)
        ctx = TFNodeContext(node, self.plan, self.default_fs, mgr)
        os.environ["TF_CONFIG"] = tfos_tf_config(node.tf_config, self.plan.master_name)
        if self.release_port:
            node.release_tf_port()
        if node.trainer_rank is None:
            return self._serve(node, ctx)
        if mgr is None:
            return self.map_fun(self.tf_args, ctx)
        mgr.watch()
        try:
            value = self.map_fun(self.tf_args, ctx)
        finally:
            mgr.end()
        if mgr.position < mgr.total and not mgr.terminated:
            log.warning(
                "tfyarn %s: map_fun returned with %d of %d fed rows unread",
                node.task_id, mgr.total - mgr.position, mgr.total,
            )  # fmt: skip
        if self.feed is not None and not self.feed.train:
            if len(mgr.results) < mgr.rows:
                log.warning(
                    "tfyarn %s: %d of %d rows got no result from DataFeed.batch_results()",
                    node.task_id, mgr.rows - len(mgr.results), mgr.rows,
                )  # fmt: skip
            storage.write_bytes_atomically(
                results_file(node.model_dir, node.task_id), cloudpickle.dumps(mgr.results)
            )
        return value

    def _feed_source(self, node: NodeContext) -> FeedSource | None:
        """The role's fed rows (trainers of a fed job only)."""
        if self.feed is None or node.trainer_rank is None:
            return None
        rows = [node.members[t].rows for t in node.trainers]
        columns = node.columns()
        mine = node.members[node.task_id].rows
        if self.feed.train and mine == 0:
            # A trainer without rows would end at once and leave synchronous peers waiting.
            raise ConfigError(
                f"{node.task_id} received no rows: the RDD has fewer elements "
                f"({sum(rows)}) than there are trainers ({len(rows)}); feed more data or "
                "use fewer executors"
            )
        return FeedSource(self.feed, columns, max(rows), node.task_id)

    def _serve(self, node: NodeContext, ctx: TFNodeContext) -> Any:
        """A parameter server or evaluator: ``map_fun`` until it returns or training ends.

        TensorFlowOnSpark ran these in the background and ended them at shutdown
        (a ps's ``server.join()`` never returns): here ``map_fun`` runs in a daemon thread
        and the role ends when the trainers are done.
        """
        box: dict[str, Any] = {}

        def body() -> None:
            try:
                box["value"] = self.map_fun(self.tf_args, ctx)
            except BaseException as exc:  # handed to the role's main thread
                box["error"] = exc

        thread = threading.Thread(target=body, name=f"tfos-{node.task_id}", daemon=True)
        thread.start()
        while thread.is_alive() and not node.wait_training_finished(timeout=0.5):
            pass
        if "error" in box:
            raise box["error"]
        return box.get("value")
