"""``DataFeed``: TensorFlowOnSpark's queue reader, over tfyarn's cached Arrow shard.

TensorFlowOnSpark feeds a running ``map_fun`` through a multiprocessing queue that Spark
tasks fill partition by partition; its known hangs come from that hand-over (a worker
that stops reading blocks the feeding task; a worker that runs out of data first leaves
the others waiting in their last synchronous step). Here the role's whole shard is
already on its local disk when ``map_fun`` starts (:mod:`tfyarn.node.feed`), so nothing
waits on a queue:

* training: every trainer reads the same number of rows per epoch (the longest shard
  decides; shorter ones wrap around, as ``ctx.dataset`` does), so synchronous workers
  take the same number of batches and none is left waiting;
* ``feed_timeout``: a trainer that neither reads for that long nor calls ``terminate()``
  while rows are left fails the job with :class:`FeedTimeoutError` (TensorFlowOnSpark's
  feeder raised after the same time);
* inference: each row is read exactly once, and ``batch_results`` pairs the results with
  the rows read, in order, so the driver can give them back in the input's order.
"""

from __future__ import annotations

import collections
import contextlib
import os
import signal
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from tfyarn.compat.tfos.rows import PARTITION_COLUMN, POSITION_COLUMN, RowLayout
from tfyarn.errors import ConfigError, TFYarnError

__all__ = ["DataFeed", "FeedPlan", "FeedSource", "FeedTimeoutError"]

#: Seconds the map function gets to end after a feed timeout before its process is ended.
_TIMEOUT_GRACE = 10.0


class FeedTimeoutError(TFYarnError):
    """A trainer read no data for ``feed_timeout`` seconds while rows were left for it."""


@dataclass(frozen=True)
class FeedPlan:
    """What ``cluster.train``/``cluster.inference`` fed the job (pickled to the roles).

    Attributes
    ----------
    layout : RowLayout
        How the RDD's elements were taken apart into columns.
    train : bool
        True for ``train``, False for ``inference``.
    epochs : int
        Passes over the data (``num_epochs``; 0 counts as 1, as in TensorFlowOnSpark).
    feed_timeout : float
        Seconds a trainer may go without reading while rows are left.
    qname : str
        The queue name the data was fed to.
    """

    layout: RowLayout
    train: bool
    epochs: int
    feed_timeout: float
    qname: str = "input"


class FeedSource:
    """A role's fed rows: what ``ctx.mgr`` is, and what ``DataFeed`` reads from.

    Parameters
    ----------
    plan : FeedPlan
        The feed of the job.
    columns : dict
        This role's shard as NumPy columns (``NodeContext.columns()``).
    rows_per_epoch : int
        Rows each trainer reads per epoch in training (the longest shard).
    task_id : str
        The role, for messages.
    """

    def __init__(
        self,
        plan: FeedPlan,
        columns: Mapping[str, np.ndarray],
        rows_per_epoch: int,
        task_id: str,
    ) -> None:
        self.plan = plan
        self.task_id = task_id
        self._fields = [columns[name] for name in plan.layout.columns]
        self._keys: tuple[np.ndarray, np.ndarray] | None = None
        if not plan.train:
            self._keys = (columns[PARTITION_COLUMN], columns[POSITION_COLUMN])
        self.rows = len(self._fields[0]) if self._fields else 0
        if plan.train:
            self.total = rows_per_epoch * max(plan.epochs, 1) if self.rows else 0
        else:
            self.total = self.rows
        self.position = 0
        self.terminated = False
        self.results: list[tuple[int, int, Any]] = []
        self._pending: collections.deque[tuple[int, int]] = collections.deque()
        self._last_read = time.monotonic()
        self._lock = threading.Lock()
        self._ended = threading.Event()
        self.timed_out = ""

    # -- reading -------------------------------------------------------------------

    def take(self, n: int) -> list[Any]:
        """The next (up to) ``n`` elements, as the RDD had them."""
        if n < 1:
            raise ConfigError(f"next_batch({n}): the batch size must be at least 1")
        # Under the lock: a tf.data generator may read from TensorFlow's own threads.
        with self._lock:
            self._last_read = time.monotonic()
            end = min(self.position + n, self.total) if not self.terminated else self.position
            wanted = np.arange(self.position, end)
            self.position = end
            rows = wanted % self.rows if self.rows else wanted
            if self._keys is not None:
                parts, places = self._keys
                self._pending.extend((int(parts[i]), int(places[i])) for i in rows)
        return [self.plan.layout.element([c[i] for c in self._fields]) for i in rows]

    def done(self) -> bool:
        """Whether every row was read (or the reader terminated the feed)."""
        return self.terminated or self.position >= self.total

    def add_results(self, results: Sequence[Any]) -> None:
        """Pair ``results`` with the oldest rows read that have none yet."""
        if self.plan.train:
            raise ConfigError(
                "DataFeed.batch_results() in a job fed by cluster.train(): results are "
                "collected by cluster.inference(rdd) only (TensorFlowOnSpark dropped them "
                "in training too); remove the call or feed with inference()"
            )
        if len(results) > len(self._pending):
            raise ConfigError(
                f"DataFeed.batch_results() got {len(results)} results but only "
                f"{len(self._pending)} rows were read without a result: give one result per "
                "row read by next_batch()"
            )
        with self._lock:
            for result in results:
                part, place = self._pending.popleft()
                self.results.append((part, place, _plain(result)))

    # -- the feed_timeout watch ----------------------------------------------------

    def watch(self) -> None:
        """Start watching for a reader that stops reading (call from the main thread).

        On a timeout the main thread gets :class:`FeedTimeoutError` (through SIGUSR1, so
        that a blocking call is interrupted too); if it does not end within
        ``_TIMEOUT_GRACE`` seconds (stuck inside native code), the process ends with the
        message on stderr, which the driver reports.
        """
        timeout = self.plan.feed_timeout
        if timeout <= 0 or threading.current_thread() is not threading.main_thread():
            return

        def raise_timeout(*_: Any) -> None:
            if self.timed_out:
                raise FeedTimeoutError(self.timed_out)

        signal.signal(signal.SIGUSR1, raise_timeout)
        threading.Thread(target=self._watch, name="tfos-feed-timeout", daemon=True).start()

    def _watch(self) -> None:
        timeout = self.plan.feed_timeout
        while not self._ended.wait(min(1.0, timeout / 4)):
            with self._lock:
                idle = time.monotonic() - self._last_read
                stalled = not self.done() and idle > timeout
            if stalled:
                self.timed_out = (
                    f"{self.task_id} read no data for {idle:.0f} s (feed_timeout={timeout:g}) "
                    f"with {self.total - self.position} of {self.total} rows still unread: its "
                    "map_fun stopped reading without DataFeed.terminate(). Call terminate() "
                    "when map_fun stops early, read until should_stop(), or raise feed_timeout"
                )
                os.kill(os.getpid(), signal.SIGUSR1)
                if not self._ended.wait(_TIMEOUT_GRACE):
                    print(f"FeedTimeoutError: {self.timed_out}", file=sys.stderr, flush=True)
                    os._exit(1)
                return

    def end(self) -> None:
        """Stop the watch: ``map_fun`` returned."""
        self._ended.set()
        with contextlib.suppress(ValueError):  # not the main thread: nothing was installed
            signal.signal(signal.SIGUSR1, signal.SIG_DFL)


def _plain(result: Any) -> Any:
    """A result as it is sent back: NumPy scalars and arrays become Python values."""
    if isinstance(result, np.generic):
        return result.item()
    if isinstance(result, np.ndarray):
        return result.tolist()
    return result


class DataFeed:
    """TensorFlowOnSpark's ``TFNode.DataFeed``: reads this role's fed rows in batches.

    Parameters
    ----------
    mgr : FeedSource or None
        ``ctx.mgr``.
    train_mode : bool
        True when fed by ``cluster.train``, False by ``cluster.inference`` (results are
        expected through :meth:`batch_results`).
    qname_in : str
        The queue the data was fed to (``cluster.train(rdd, qname=...)``).
    qname_out : str
        The queue results go to; tfyarn has one per job.
    input_mapping : dict, optional
        Column name -> tensor name: :meth:`next_batch` then returns a dict of tensor name
        -> list of values, the element's fields taken in the sorted order of the column
        names (as TensorFlowOnSpark does).

    Raises
    ------
    ConfigError
        The job has no fed data, or ``train_mode``/``qname_in`` disagree with the call
        that fed it (TensorFlowOnSpark hangs in those cases).
    """

    def __init__(
        self,
        mgr: FeedSource | None,
        train_mode: bool = True,
        qname_in: str = "input",
        qname_out: str = "output",
        input_mapping: Mapping[str, str] | None = None,
    ) -> None:
        if mgr is None:
            raise ConfigError(
                "DataFeed: this role has no fed data. Data is fed with "
                "TFCluster.run(..., input_mode=InputMode.SPARK) and then cluster.train(rdd) "
                "or cluster.inference(rdd); under InputMode.TENSORFLOW map_fun reads its own, "
                "and parameter servers and the evaluator get none"
            )
        if train_mode != mgr.plan.train:
            fed = "cluster.train()" if mgr.plan.train else "cluster.inference()"
            raise ConfigError(
                f"DataFeed(train_mode={train_mode}) in a job fed by {fed}: use "
                f"train_mode={mgr.plan.train} (TensorFlowOnSpark would wait for results "
                "that never come, or drop them)"
            )
        if qname_in != mgr.plan.qname:
            raise ConfigError(
                f"DataFeed(qname_in={qname_in!r}) but the data was fed to "
                f"qname={mgr.plan.qname!r}: use the same name in both"
            )
        self.mgr = mgr
        self.train_mode = train_mode
        self.qname_in = qname_in
        self.qname_out = qname_out
        self.input_tensors: list[str] | None = None
        if input_mapping is not None:
            self.input_tensors = [tensor for _, tensor in sorted(input_mapping.items())]

    def next_batch(self, batch_size: int) -> list[Any] | dict[str, list[Any]]:
        """The next ``batch_size`` elements (fewer at the end, none once done).

        Returns
        -------
        list or dict
            The elements as the RDD held them; with ``input_mapping``, a dict of tensor
            name -> the list of that field's values.
        """
        items = self.mgr.take(batch_size)
        if self.input_tensors is None:
            return items
        tensors: dict[str, list[Any]] = {name: [] for name in self.input_tensors}
        for item in items:
            fields = item if isinstance(item, tuple | list) else (item,)
            if len(fields) != len(self.input_tensors):
                raise ConfigError(
                    f"DataFeed(input_mapping=...) names {len(self.input_tensors)} columns "
                    f"but the fed elements have {len(fields)} fields"
                )
            for name, value in zip(self.input_tensors, fields, strict=True):
                tensors[name].append(value)
        return tensors

    def should_stop(self) -> bool:
        """Whether the feed is done: every row read, or :meth:`terminate` called."""
        return self.mgr.done()

    def batch_results(self, results: Sequence[Any]) -> None:
        """Give one result per row read, in order (inference only)."""
        self.mgr.add_results(results)

    def terminate(self) -> None:
        """Stop reading: the rest of the data is skipped, and no feed_timeout applies."""
        self.mgr.terminated = True
