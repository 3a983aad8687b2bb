"""``TFCluster``: TensorFlowOnSpark's cluster API on ``tfyarn.run``.

TensorFlowOnSpark's ``TFCluster.run`` starts the roles in the background and returns;
``cluster.train(rdd)`` then feeds them through queues and ``shutdown()`` waits. tfyarn
runs a job as one Spark barrier stage that ends when the roles do, with the data cached
in each trainer before ``map_fun`` starts. The two meet like this:

* ``InputMode.TENSORFLOW``: ``run`` starts ``tfyarn.run`` in a background thread at
  once; ``shutdown()`` joins it and raises the job's error, if any.
* ``InputMode.SPARK``: ``run`` checks and records the settings; ``train(rdd)`` turns the
  RDD into a DataFrame (one column per field, :mod:`tfyarn.compat.tfos.rows`) and runs
  the job on it, returning when ``map_fun`` has ended everywhere; ``inference(rdd)``
  does the same and gives back an RDD of what ``map_fun`` passed to
  ``DataFeed.batch_results``, in the input's order and partitions.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import cloudpickle

from tfyarn import storage
from tfyarn.compat.tfos.feed import FeedPlan
from tfyarn.compat.tfos.rows import RowLayout, layout_of, to_columns
from tfyarn.compat.tfos.runner import RESULTS_FOLDER, RoleRunner, results_file
from tfyarn.compat.tfos.settings import (
    DEFAULT_QUEUES,
    ClusterLayout,
    InputMode,
    layout,
    transport_for,
)
from tfyarn.errors import ConfigError, TFYarnError

if TYPE_CHECKING:
    from pyspark import RDD, SparkContext
    from pyspark.sql import DataFrame, SparkSession

    from tfyarn.cluster.launcher import RunResult

__all__ = ["InputMode", "TFCluster", "run"]

log = logging.getLogger("tfyarn")

#: TensorFlowOnSpark's default shutdown timeout: three days.
_SHUTDOWN_TIMEOUT = 259200

#: tfyarn.run arguments the layer sets itself; tfyarn_options may not give them.
_OWN_OPTIONS = frozenset({"workers", "ps", "chief", "evaluator", "data", "input_mode"})


class TFCluster:
    """A TensorFlowOnSpark cluster (what ``TFCluster.run`` returns).

    Attributes
    ----------
    sc : SparkContext
        The Spark context.
    input_mode : InputMode
        How the roles get their data.
    layout : ClusterLayout
        The cluster's roles.
    result : RunResult or None
        The tfyarn job's result, once it ended.
    transport : str or None
        The tfyarn transport the job actually used (``rdma=``/``protocol=``), once known.
    """

    def __init__(
        self,
        sc: SparkContext,
        map_fun: Callable[[Any, Any], Any],
        tf_args: Any,
        plan: ClusterLayout,
        input_mode: InputMode,
        run_options: dict[str, Any],
        release_port: bool,
    ) -> None:
        self.sc = sc
        self.map_fun = map_fun
        self.tf_args = tf_args
        self.layout = plan
        self.input_mode = InputMode(input_mode)
        self.result: RunResult | None = None
        self.transport: str | None = None
        self._options = run_options
        self._release_port = release_port
        self._fed = ""  # "train" or "inference" once fed: one feed per cluster
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None
        self._default_fs = sc.getConf().get("spark.hadoop.fs.defaultFS", None) or _hadoop_fs(sc)

    # -- starting ------------------------------------------------------------------

    def _runner(self, feed: FeedPlan | None) -> RoleRunner:
        return RoleRunner(
            self.map_fun, self.tf_args, self.layout, self._default_fs, feed, self._release_port
        )

    def _launch(self, feed: FeedPlan | None, data: DataFrame | None) -> RunResult:
        import tfyarn

        result = tfyarn.run(
            _session(self.sc),
            self._runner(feed),
            workers=self.layout.workers,
            ps=self.layout.ps,
            chief=self.layout.chief,
            evaluator=self.layout.evaluator,
            data=data,
            **self._options,
        )
        self.result = result
        self.transport = result.transport
        if self._options.get("transport"):
            print(
                f"tfyarn.compat.tfos: the job used tfyarn transport {result.transport!r} "
                f"(asked for {self._options['transport']!r})",
                flush=True,
            )
        return result

    def _start_background(self) -> None:
        """InputMode.TENSORFLOW: the job runs from now on; ``shutdown()`` waits for it."""

        def body() -> None:
            try:
                self._launch(None, None)
            except BaseException as exc:  # re-raised by shutdown()
                self._error = exc

        self._thread = threading.Thread(target=body, name="tfos-cluster", daemon=True)
        self._thread.start()

    # -- feeding -------------------------------------------------------------------

    def _check_feed(self, call: str, data: Any, qname: str) -> None:
        if self.input_mode is not InputMode.SPARK:
            raise ConfigError(
                f"cluster.{call}() feeds data, but the cluster was started with "
                "InputMode.TENSORFLOW, where map_fun reads its own: start it with "
                "TFCluster.run(..., input_mode=InputMode.SPARK)"
            )
        if self._fed:
            raise ConfigError(
                f"cluster.{call}() after cluster.{self._fed}(): a tfyarn job is fed once, and "
                "a second feed would start map_fun afresh. Feed everything in one call "
                "(sc.union([...]) of the RDDs, num_epochs=...), or run another cluster"
            )
        if qname not in self.layout.queues:
            raise ConfigError(
                f"cluster.{call}(qname={qname!r}): no such queue; the cluster has "
                f"{list(self.layout.queues)!r} (TFCluster.run(queues=...))"
            )
        if hasattr(data, "foreachRDD"):
            raise ConfigError(
                f"cluster.{call}() got a DStream: Spark Streaming is not supported by "
                "tfyarn; feed each batch's RDD, or collect the stream into one RDD"
            )

    def train(
        self, dataRDD: RDD[Any] | DataFrame, num_epochs: int = 0, feed_timeout: float = 600,
        qname: str = "input",
    ) -> None:  # fmt: skip
        """Feed ``dataRDD`` to the trainers ``num_epochs`` times; return when training ended.

        Parameters
        ----------
        dataRDD : RDD or DataFrame
            Elements of tuples/lists of fields, NumPy arrays, numbers or strings (a
            DataFrame's rows become tuples).
        num_epochs : int
            Passes over the data; 0 means one, as in TensorFlowOnSpark. Every trainer
            reads as many rows per pass as the largest shard holds.
        feed_timeout : float
            Seconds a trainer may go without reading while rows are left for it; then the
            job fails with :class:`~tfyarn.compat.tfos.feed.FeedTimeoutError`.
        qname : str
            The queue to feed (``DataFeed(qname_in=...)`` must name the same).
        """
        self._check_feed("train", dataRDD, qname)
        if num_epochs < 0:
            raise ConfigError(f"cluster.train(num_epochs={num_epochs}): it cannot be negative")
        rdd = _as_rdd(dataRDD)
        row_layout, df = to_dataframe(_session(self.sc), rdd, with_position=False)
        self._fed = "train"
        feed = FeedPlan(row_layout, True, max(num_epochs, 1), float(feed_timeout), qname)
        self._launch(feed, df)

    def inference(
        self, dataRDD: RDD[Any] | DataFrame, feed_timeout: float = 600, qname: str = "input"
    ) -> RDD[Any]:
        """Feed ``dataRDD`` once for inference; an RDD of the results, in the input's order.

        The job runs now (TensorFlowOnSpark's was lazy, run by the action on the result):
        each trainer reads its rows, ``map_fun`` gives one result per row to
        ``DataFeed.batch_results``, and the results come back in the partitions and the
        order of the rows they belong to. The roles leave them under
        ``<model_dir>/tfos-inference-results`` (shared storage on a multi-host cluster:
        HDFS by default on YARN; ``tfyarn_options={"model_dir": ...}`` otherwise) and the
        driver reads them.
        """
        self._check_feed("inference", dataRDD, qname)
        rdd = _as_rdd(dataRDD)
        partitions = rdd.getNumPartitions()
        row_layout, df = to_dataframe(_session(self.sc), rdd, with_position=True)
        self._fed = "inference"
        result = self._launch(FeedPlan(row_layout, False, 1, float(feed_timeout), qname), df)
        per_partition = collect_results(result)
        ordered = [[r for _, r in sorted(per_partition.get(p, []))] for p in range(partitions)]
        return self.sc.parallelize(ordered, max(partitions, 1)).flatMap(lambda part: part)

    # -- ending --------------------------------------------------------------------

    def shutdown(
        self, ssc: Any = None, grace_secs: float = 0, timeout: float = _SHUTDOWN_TIMEOUT
    ) -> None:
        """Wait for the cluster to end; raise its error if it failed.

        Parameters
        ----------
        ssc : None
            Spark Streaming is not supported: anything but None is refused.
        grace_secs : float
            Kept for compatibility: tfyarn waits for every role to end by itself (the
            chief included), which is what the grace period was for.
        timeout : float
            Seconds to wait for an InputMode.TENSORFLOW job; past them every Spark job
            of this application is cancelled (TensorFlowOnSpark ended the application)
            and :class:`~tfyarn.errors.TFYarnError` is raised.
        """
        if ssc is not None:
            raise ConfigError(
                "cluster.shutdown(ssc=...): Spark Streaming is not supported by tfyarn; "
                "call shutdown() without ssc"
            )
        if grace_secs < 0:
            raise ConfigError(f"cluster.shutdown(grace_secs={grace_secs}): it cannot be negative")
        if self._thread is not None:
            try:
                self._thread.join(timeout if timeout and timeout > 0 else None)
            except KeyboardInterrupt:  # Ctrl-C: the job in the background must end too
                self.sc.cancelAllJobs()
                raise
            if self._thread.is_alive():
                self.sc.cancelAllJobs()
                self._thread.join(60)
                raise TFYarnError(
                    f"the TensorFlowOnSpark cluster did not end within shutdown(timeout="
                    f"{timeout:g}) s; its Spark jobs were cancelled"
                )
            if self._error is not None:
                raise self._error
        elif self.input_mode is InputMode.SPARK and not self._fed:
            log.warning(
                "tfyarn: cluster.shutdown() without cluster.train() or inference(): under "
                "InputMode.SPARK map_fun runs when the data is fed, so it never ran"
            )

    def tensorboard_url(self) -> str | None:
        """The job's TensorBoard address (``tensorboard=True``), once the job has run.

        The driver also prints it as the job starts (``tfyarn: TensorBoard at ...``);
        here it is known once the job ended. None without TensorBoard.
        """
        return self.result.tensorboard_url if self.result is not None else None


def run(
    sc: SparkContext,
    map_fun: Callable[[Any, Any], Any],
    tf_args: Any,
    num_executors: int,
    num_ps: int,
    tensorboard: bool = False,
    input_mode: InputMode = InputMode.TENSORFLOW,
    log_dir: str | None = None,
    driver_ps_nodes: bool = False,
    master_node: str | None = None,
    reservation_timeout: float = 600,
    queues: Sequence[str] = DEFAULT_QUEUES,
    eval_node: bool = False,
    release_port: bool = True,
    *,
    rdma: bool = False,
    protocol: str | None = None,
    tfyarn_options: dict[str, Any] | None = None,
) -> TFCluster:
    """Start a TensorFlowOnSpark cluster on tfyarn (``TFCluster.run``).

    Parameters
    ----------
    sc : SparkContext
        The Spark context (its session runs the job).
    map_fun : callable
        ``map_fun(args, ctx)``, run by every role.
    tf_args : Any
        Passed to ``map_fun`` as ``args``.
    num_executors : int
        Executors of the cluster: ``num_ps`` parameter servers, the chief
        (``master_node``) and the evaluator (``eval_node``) each take one, the rest are
        workers.
    num_ps : int
        Parameter servers.
    tensorboard : bool
        Serve TensorBoard from the chief's host (tfyarn's ``tensorboard=True``).
    input_mode : InputMode
        ``TENSORFLOW``: the job starts now, ``map_fun`` reads its own data.
        ``SPARK``: data is fed by ``cluster.train``/``cluster.inference``.
    log_dir : str, optional
        TensorBoard's folder (tfyarn's ``log_dir``).
    driver_ps_nodes : bool
        Refused when True: tfyarn runs parameter servers in executors only.
    master_node : str, optional
        ``"chief"`` or ``"master"``: a dedicated chief, called so in ``ctx.job_name``
        and TF_CONFIG.
    reservation_timeout : float
        Seconds to wait for the executors (tfyarn's ``allocation_timeout``).
    queues : sequence of str
        Queue names; ``"input"`` must be one of them.
    eval_node : bool
        Add an evaluator role.
    release_port : bool
        Release each role's TensorFlow port before ``map_fun`` starts; False: ``map_fun``
        calls ``ctx.release_port()`` right before TensorFlow binds it.
    rdma : bool
        Move tfyarn's traffic over RDMA: tfyarn's ``"rdma"`` transport (UCX on an RDMA
        device; an error where there is none, never a silent fallback).
    protocol : str, optional
        ``"grpc"`` (default), ``"rdma"``/``"grpc+verbs"`` (as ``rdma=True``), ``"ucx"`` or
        ``"tcp"``: the tfyarn transport of the job; the one used is printed and kept as
        ``cluster.transport``.
    tfyarn_options : dict, optional
        More ``tfyarn.run`` arguments (``model_dir``, ``timeout``, ``env``, ``strategy``,
        ``progress``...), for what TensorFlowOnSpark had no argument for.

    Returns
    -------
    TFCluster

    Raises
    ------
    ConfigError
        An argument tfyarn cannot honour, named with what to do instead.
    """
    plan = layout(
        num_executors, num_ps, master_node=master_node, eval_node=eval_node,
        driver_ps_nodes=driver_ps_nodes, queues=queues,
    )  # fmt: skip
    try:
        mode = InputMode(input_mode)
    except ValueError:
        raise ConfigError(
            f"TFCluster.run(input_mode={input_mode!r}): use InputMode.TENSORFLOW or InputMode.SPARK"
        ) from None
    if not callable(map_fun):
        raise ConfigError(f"TFCluster.run(map_fun=...) must be a function, got {map_fun!r}")
    options = _run_options(tensorboard, log_dir, reservation_timeout, rdma, protocol)
    extra = dict(tfyarn_options or {})
    clash = sorted(_OWN_OPTIONS & set(extra))
    if clash:
        raise ConfigError(
            f"tfyarn_options={{{', '.join(repr(k) for k in clash)}: ...}}: TFCluster.run sets "
            "these from its own arguments (num_executors, num_ps, master_node, eval_node, "
            "input_mode, cluster.train's data); pass them there"
        )
    options.update(extra)
    cluster = TFCluster(sc, map_fun, tf_args, plan, mode, options, release_port)
    if mode is InputMode.TENSORFLOW:
        cluster._start_background()
    return cluster


def _run_options(
    tensorboard: bool, log_dir: str | None, reservation_timeout: float, rdma: bool,
    protocol: str | None,
) -> dict[str, Any]:  # fmt: skip
    """The ``tfyarn.run`` keyword arguments of TensorFlowOnSpark's settings."""
    if reservation_timeout <= 0:
        raise ConfigError(
            f"TFCluster.run(reservation_timeout={reservation_timeout}): give the seconds to "
            "wait for the executors, more than 0"
        )
    options: dict[str, Any] = {
        "strategy": None,  # map_fun builds its own, as TensorFlowOnSpark programs do
        "allocation_timeout": float(reservation_timeout),
    }
    if tensorboard:
        options["tensorboard"] = True
    if log_dir:
        options["log_dir"] = log_dir
    transport = transport_for(rdma, protocol)
    if transport is not None:
        options["transport"] = transport
        print(
            f"tfyarn.compat.tfos: rdma={rdma} protocol={protocol!r} -> tfyarn transport "
            f"{transport!r}" + (" (UCX over an RDMA device)" if transport == "rdma" else ""),
            flush=True,
        )
    return options


def to_dataframe(
    spark: SparkSession, rdd: RDD[Any], *, with_position: bool
) -> tuple[RowLayout, DataFrame]:
    """The RDD as a DataFrame of one column per field (plus each row's place, for inference)."""
    try:
        first = rdd.first()
    except ValueError:
        raise ConfigError("the RDD to feed is empty: there is nothing to train on") from None
    row_layout = layout_of(first)

    def columns(index: int, elements: Any) -> Any:
        for position, element in enumerate(elements):
            values = to_columns(row_layout, element)
            yield (*values, index, position) if with_position else values

    rows = rdd.mapPartitionsWithIndex(columns)
    schema = row_layout.schema(with_position=with_position)
    return row_layout, spark.createDataFrame(rows, schema, verifySchema=False)


def collect_results(result: RunResult) -> dict[int, list[tuple[int, Any]]]:
    """The trainers' inference results: input partition -> [(position, result)]."""
    trainers = [t for t in result.roles if t.split(":")[0] in ("chief", "worker")]
    out: dict[int, list[tuple[int, Any]]] = {}
    for task in trainers:
        url = results_file(result.model_dir, task)
        try:
            data = storage.read_bytes(url)
        except FileNotFoundError:
            raise TFYarnError(
                f"{task} left no inference results at {url}: on a cluster of several hosts "
                "the job's model_dir must be shared storage (HDFS is the default on YARN; "
                "otherwise pass tfyarn_options={'model_dir': 'hdfs://...'})"
            ) from None
        for part, place, value in cloudpickle.loads(data):
            out.setdefault(part, []).append((place, value))
        storage.remove(url)
    _remove_folder(storage.join(result.model_dir, RESULTS_FOLDER))
    return out


def _remove_folder(url: str) -> None:
    """Remove the (now empty) results folder, if it can be."""
    if storage.is_local(url):
        _, path = storage.filesystem(url)
        with contextlib.suppress(OSError):
            os.rmdir(path)


def _as_rdd(data: Any) -> RDD[Any]:
    """A DataFrame's rows as tuples; an RDD as it is."""
    from pyspark.sql import DataFrame

    if isinstance(data, DataFrame):
        return data.rdd.map(tuple)
    return data


def _session(sc: SparkContext) -> SparkSession:
    from pyspark.sql import SparkSession

    return SparkSession.getActiveSession() or SparkSession(sc)


def _hadoop_fs(sc: SparkContext) -> str:
    """The context's Hadoop ``fs.defaultFS`` (``file:///`` without one)."""
    try:
        conf = sc._jsc.hadoopConfiguration()
        return str(conf.get("fs.defaultFS") or "file:///")
    except Exception:  # a context without a JVM gateway (Spark Connect): local
        return "file:///"
