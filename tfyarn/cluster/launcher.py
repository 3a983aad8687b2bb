"""``tfyarn.run``: launch one TensorFlow role per executor and wait for the outcome.

The whole cluster is one Spark barrier stage (``mapInArrow(..., barrier=True)``), so Spark
starts every role at once or none, and a failing role fails the stage, which kills the
others. The driver runs the stage in a thread and watches heartbeats meanwhile: a role
reporting an error ends the job within seconds, with the role's traceback.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import TYPE_CHECKING, Any

import cloudpickle

from tfyarn import storage
from tfyarn.cluster import partitioning, validate
from tfyarn.cluster.attempts import Attempt
from tfyarn.cluster.cluster_fs import default_model_dir, role_storage_env, spark_hadoop_conf
from tfyarn.cluster.observe import RunObservers
from tfyarn.cluster.options import DEFAULT_SILENT_FAIL_AFTER, LaunchOptions, launch_options
from tfyarn.cluster.plan import RoleSpec, data_roles, describe, plan_job
from tfyarn.cluster.progress import (
    AttemptNumber,
    ProgressDisplay,
    ProgressServer,
    RoleState,
    timeout_message,
)
from tfyarn.cluster.restarts import (
    AttemptProgress,
    LivenessWatch,
    RestartPolicy,
    least_executors,
    pick_cause,
    run_attempts,
)
from tfyarn.cluster.spark_errors import lost_role, parse_stage_failure
from tfyarn.cluster.tensorboard_link import job_description
from tfyarn.errors import RoleFailedError, RoleLostError, TFYarnError
from tfyarn.node import code_pickle
from tfyarn.node.failure import RoleFailure, likeliest_cause
from tfyarn.node.job import InputMode, JobSpec
from tfyarn.transport.auth import new_job_secret
from tfyarn.transport.options import TransportOptions
from tfyarn.transport.tls import new_job_certificate

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

    from tfyarn.exchange.checkpoint import CheckpointPolicy
    from tfyarn.node.context import NodeContext
    from tfyarn.service.attach import ServiceAttachment

__all__ = ["RunResult", "run"]

log = logging.getLogger("tfyarn")


@dataclass
class RunResult:
    """The outcome of :func:`run`.

    Attributes
    ----------
    value : Any
        What the chief's ``train_fn`` returned.
    metrics : dict
        Last metrics each role reported, by task id.
    model_dir : str
        Where the chief was told to save the model.
    roles : dict
        Per role: host, TF port, transport, and timings (``started``, ``wired``,
        ``finished``, seconds since the epoch).
    transport : str or None
        The transport actually used (as the roles reported it).
    wall_time : float
        Seconds from :func:`run` being called to its return.
    startup_time : float or None
        Seconds from the barrier stage's start to every role being ready.
    job_id : str
        The run's id (the same for every attempt).
    attempts : list of Attempt
        Every attempt of the run, the successful last one included: when each started
        and ended, what ended the failed ones (kind, role, host, executor), where each
        restart resumed and the steps it redid.
    tensorboard_url : str or None
        The job's TensorBoard link (``tensorboard=True``); it served while the job ran.
    log_dir : str or None
        The job's TensorBoard folder, on the chief's host.
    history_path : str or None
        The job's history file (``tfyarn history show JOB_ID``).
    """

    value: Any
    metrics: dict[str, dict[str, Any]]
    model_dir: str
    roles: dict[str, dict[str, Any]]
    transport: str | None
    wall_time: float
    startup_time: float | None
    job_id: str
    status: str = "succeeded"
    extra: dict[str, Any] = field(default_factory=dict)
    attempts: list[Attempt] = field(default_factory=list)
    tensorboard_url: str | None = None
    log_dir: str | None = None
    history_path: str | None = None

    def to_json(self) -> dict[str, Any]:
        """A JSON-able summary (the chief's value as its ``repr`` when not JSON-able)."""
        out = asdict(self)
        try:
            json.dumps(out["value"])
        except TypeError:
            out["value"] = repr(self.value)
        return out


def _conf(spark: SparkSession, key: str) -> str | None:
    return spark.sparkContext.getConf().get(f"spark.tfyarn.{key}", None)


def _stage_input(
    spark: SparkSession,
    job_plan: Sequence[Any],
    trainers: Sequence[Any],
    mode: InputMode,
    data: DataFrame | tuple[str, ...] | None,
) -> tuple[DataFrame, tuple[int, ...]]:
    """The DataFrame the barrier stage maps over: one partition per role."""
    n = len(job_plan)
    if mode is InputMode.SPARK:
        from pyspark.sql import DataFrame

        assert isinstance(data, DataFrame)  # LaunchOptions checked it
        keys = partitioning.routing_keys(spark, n)
        targets = [r.partition for r in trainers]
        return partitioning.spread(data, n, targets, keys), tuple(keys)
    return spark.range(0, n, 1, n), ()


def run(
    spark: SparkSession,
    train_fn: Callable[[NodeContext], Any],
    *,
    workers: int | None = None,
    ps: int | None = None,
    chief: bool | None = None,
    evaluator: bool = False,
    data: DataFrame | Sequence[str] | None = None,
    input_mode: InputMode | str | None = None,
    strategy: str | None = None,
    strategy_options: dict[str, Any] | None = None,
    transport: str | None = None,
    interface: str | None = None,
    model_dir: str | None = None,
    timeout: float | None = None,
    allocation_timeout: float = 120.0,
    startup_timeout: float = 300.0,
    heartbeat_interval: float = 2.0,
    silent_warning_after: float = 60.0,
    env: dict[str, str] | None = None,
    progress: bool = True,
    service: str | ServiceAttachment | None = None,
    transport_options: TransportOptions | None = None,
    max_restarts: int | None = None,
    checkpoint_dir: str | None = None,
    checkpoint_every: int | float | str | None = None,
    retry_on_errors: bool = False,
    silent_fail_after: float | None = DEFAULT_SILENT_FAIL_AFTER,
    stall_fail_after: float | None = None,
    min_workers: int | None = None,
    tls: bool | None = None,
    tensorboard: bool | None = None,
    log_dir: str | None = None,
    metrics_port: int | None = None,
    history_dir: str | None = None,
    history_interval: float | None = None,
) -> RunResult:
    """Run ``train_fn`` as a TensorFlow cluster, one role per Spark executor.

    Parameters
    ----------
    spark : SparkSession
        A classic (not Spark Connect) session on local-cluster, standalone or YARN.
    train_fn : callable
        ``train_fn(ctx)``, run by the chief and the workers (and by ps/evaluator roles when
        they have no built-in job); the chief's return value becomes ``RunResult.value``.
    workers : int, optional
        Workers; default ``spark.tfyarn.workers``.
    ps : int, optional
        Parameter servers; default ``spark.tfyarn.ps``, else 0.
    chief : bool, optional
        Run a dedicated chief (partition 0); default ``spark.tfyarn.chief`` (the layout
        ``tfyarn submit`` sized the cluster for), else a chief for ``"ps"`` and no strategy
        only (see :func:`tfyarn.cluster.plan.plan_job`).
    evaluator : bool
        Run an evaluator (outside the training cluster).
    data : DataFrame or list of str, optional
        Training data: a DataFrame (spread over the trainers) or files (sharded).
    input_mode : InputMode or str, optional
        Default: SPARK for a DataFrame, FILES for a list, NONE otherwise.
    strategy : str, optional
        ``"ps"`` (ParameterServerStrategy + ClusterCoordinator on the chief), ``"mwms"``
        (MultiWorkerMirroredStrategy), an exchange strategy (``"allreduce"``,
        ``"sync_ps"``, ``"downpour"``, ``"easgd"``, ``"model_averaging"``, ``"adag"``: see
        :mod:`tfyarn.exchange`), or None.
    strategy_options : dict, optional
        Options of the strategy (see :mod:`tfyarn.exchange`).
    transport : str, optional
        tfyarn transport for the exchange: ``"auto"``, ``"tcp"``, ``"grpc"``, ``"ucx"``,
        ``"shm"`` or ``"rdma"`` (never replaced silently by another); default
        ``spark.tfyarn.transport``, else ``"auto"`` for exchange strategies and none
        otherwise.
    interface : str, optional
        Network interface (``"ib0"``), network (``"10.20.0.0/16"``: each host's address in
        it) or address the roles bind to; default: Spark's executor address.
    model_dir : str, optional
        Where the chief saves the model; default a fresh temp dir on the chief's host. Use
        shared storage on a real cluster.
    timeout : float, optional
        Seconds the whole job may take; the job is cancelled after that.
    allocation_timeout : float
        Seconds to wait for enough executors.
    startup_timeout : float
        Seconds each role may take to start and be wired.
    heartbeat_interval : float
        Seconds between role heartbeats.
    silent_warning_after : float
        Seconds of heartbeat silence after which a role is named in a warning.
    env : dict, optional
        Extra environment variables for the role processes.
    progress : bool
        Show the live progress display.
    service : str or ServiceAttachment, optional
        Attach to the parameter servers of a long-running tfyarn service (``tfyarn
        service launch``) instead of starting ps roles: the service's name (default
        ``spark.tfyarn.service``, which ``tfyarn submit --service`` sets; found through
        the ResourceManager of ``$HADOOP_CONF_DIR`` or ``$TFYARN_RM_URL``) or
        :func:`tfyarn.service.attach.attach`'s result. Needs ``ps=0`` and an asynchronous
        ps strategy (``"downpour"``, ``"easgd"``, ``"adag"``). The model continues from
        what the service holds; trainers reconnect when YARN restarts a ps.
    transport_options : TransportOptions, optional
        Settings of the roles' transport listeners and connections.
    max_restarts : int, optional
        Fresh attempts allowed after a role is lost to the infrastructure (killed by a
        signal, executor, container or node lost, silent or stuck past the limits); each
        resumes from the newest checkpoint. Default ``spark.tfyarn.maxRestarts`` (3 in
        the YARN profiles), else 0: the first failure fails the job.
    checkpoint_dir : str, optional
        Folder of the trainers' checkpoints (shared storage on a real cluster); default
        ``spark.tfyarn.checkpoint.dir``, else ``<model_dir>/checkpoints`` when restarts
        are on.
    checkpoint_every : int or str, optional
        Checkpoint every this many steps (``100``) or this long (``"60s"``, ``"5m"``);
        default ``spark.tfyarn.checkpoint.every``, else ``"60s"``.
    retry_on_errors : bool
        Restart on exceptions raised by ``train_fn`` too (by default they fail the job at
        once, with their traceback).
    silent_fail_after : float or None
        Seconds without a heartbeat after which a running role is taken for lost (it
        ends the attempt, which restarts if restarts are on); None: only warn.
    stall_fail_after : float or None
        Seconds without step progress (``ctx.report(step=...)``, the Keras progress
        callback) while heartbeats arrive after which a trainer is taken for stuck;
        None (the default): never.
    min_workers : int, optional
        Elastic restarts: a restart that gets fewer executors back than the run has
        roles within ``allocation_timeout`` goes on with as few as this many workers
        (the data spread over them, the shard position carried over as examples trained)
        instead of failing; each restart asks for the full size again. Default
        ``spark.tfyarn.minWorkers``, else none: every restart needs every worker.
        ``RunResult.attempts`` records the workers each attempt ran with.
    tls : bool, optional
        Encrypt the tfyarn transport's traffic with TLS (tcp or grpc; ``auto`` then picks
        tcp): each attempt makes its own certificate and key, handed to the roles with
        the job secret (:mod:`tfyarn.transport.tls`). Frames are authenticated either
        way. Default ``spark.tfyarn.tls``, else off. For the site's own certificates give
        ``transport_options=TransportOptions(tls_...)`` instead.
    tensorboard : bool, optional
        Serve TensorBoard over the job's log folder from the chief's host for as long as
        the job runs; its address (a link on the driver that follows the chief across
        restarts) is printed at the start, put in the Spark UI's job description and
        returned as ``RunResult.tensorboard_url``. Default ``spark.tfyarn.tensorboard``,
        else off.
    log_dir : str, optional
        The job's TensorBoard folder, a local path on the roles' hosts (each role writes
        under ``<log_dir>/<role>_<index>``: ``ctx.log_dir``, ``ctx.tensorboard_callback()``;
        the exchange adds its scalars). Default ``spark.tfyarn.logDir``; with
        ``tensorboard=True`` else ``<model_dir>/logs`` (a temp folder on the chief's host
        when ``model_dir`` is on HDFS); otherwise no log folder.
    metrics_port : int, optional
        Serve Prometheus metrics of the roles and the job at
        ``http://<driver>:<port>/metrics`` (:mod:`tfyarn.cluster.metrics`). Default
        ``spark.tfyarn.metrics.port``, else 0: off.
    history_dir : str, optional
        Folder of the job histories ``tfyarn history`` reads (:mod:`tfyarn.cluster.history`);
        ``""``: keep none. Default ``spark.tfyarn.history.dir``, else
        ``~/.cache/tfyarn/history``.
    history_interval : float, optional
        Seconds between two samples of the roles in the history. Default
        ``spark.tfyarn.history.interval``, else 5.

    Returns
    -------
    RunResult

    Raises
    ------
    ConfigError
        Bad arguments or Spark settings (before anything starts).
    AllocationError
        Not enough executors within ``allocation_timeout``.
    RoleFailedError
        A role failed and no restart could help: names the role, its host and its
        traceback.
    RestartsExhaustedError
        Every allowed restart was used; lists each attempt's cause.
    TFYarnError
        The job failed or timed out otherwise.
    """
    output_json = _conf(spark, "outputJson")
    begun = time.monotonic()
    try:
        options = launch_options(
            lambda key: _conf(spark, key),
            workers=workers,
            ps=ps,
            chief=chief,
            evaluator=evaluator,
            data=data,
            input_mode=input_mode,
            strategy=strategy,
            strategy_options=strategy_options,
            transport=transport,
            transport_options=transport_options,
            interface=interface,
            model_dir=model_dir,
            timeout=timeout,
            allocation_timeout=allocation_timeout,
            startup_timeout=startup_timeout,
            heartbeat_interval=heartbeat_interval,
            silent_warning_after=silent_warning_after,
            env=env,
            progress=progress,
            service=service,
            max_restarts=max_restarts,
            checkpoint_dir=checkpoint_dir,
            checkpoint_every=checkpoint_every,
            retry_on_errors=retry_on_errors,
            silent_fail_after=silent_fail_after,
            stall_fail_after=stall_fail_after,
            min_workers=min_workers,
            tls=tls,
            tensorboard=tensorboard,
            log_dir=log_dir,
            metrics_port=metrics_port,
            history_dir=history_dir,
            history_interval=history_interval,
        )
        result = _launch_attempts(spark, train_fn, options, begun)
    except BaseException as exc:
        if output_json:
            _write_json(
                output_json,
                {
                    "status": "failed",
                    "error": str(exc)[-8000:],
                    "error_type": type(exc).__name__,
                    "wall_time": time.monotonic() - begun,
                },
            )
        raise
    if output_json:
        _write_json(output_json, result.to_json())
    return result


def _write_json(path: str, payload: dict[str, Any]) -> None:
    """Write the run's outcome for ``tfyarn submit --output-json``."""
    with open(path, "w") as out:
        json.dump(payload, out, indent=2, default=str)


@dataclass(frozen=True)
class _Attempt:
    """What one attempt of a run is launched with (the same run id and folders each time)."""

    job_id: str
    model_dir: str
    number: int
    checkpoint: CheckpointPolicy | None
    log_dir: str = ""


def _launch_attempts(
    spark: SparkSession,
    train_fn: Callable[[NodeContext], Any],
    options: LaunchOptions,
    begun: float,
) -> RunResult:
    """The body of :func:`run` (which adds the ``--output-json`` report): the attempts."""
    job_id = f"{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:8]}"
    hadoop = spark_hadoop_conf(spark)
    model_dir = options.model_dir or default_model_dir(
        job_id, hadoop("fs.defaultFS"), spark.sparkContext.sparkUser(), tempfile.gettempdir()
    )
    policy = options.checkpoint_policy(model_dir)
    paths = [model_dir, policy.directory if policy else "", *options.files]
    options = replace(options, env={**role_storage_env(paths, hadoop), **options.env})
    log_dir = job_log_dir(options, model_dir, job_id, tempfile.gettempdir())
    observers = RunObservers(
        job_id,
        spark.sparkContext.getConf().get("spark.driver.host", "127.0.0.1"),
        _settings(spark, options, model_dir, log_dir),
        history_dir=options.history_dir,
        history_interval=options.history_interval,
        metrics_port=options.metrics_port,
        tensorboard=options.tensorboard,
    )

    def launch(number: int, progress: AttemptProgress) -> RunResult:
        attempt = _Attempt(job_id, model_dir, number, policy, log_dir)
        return _launch(spark, train_fn, options, begun, attempt, progress, observers)

    def resume_step(number: int) -> int | None:
        # What the driver can see of the checkpoint folder; the trainers report theirs.
        if policy is None or number == 1:
            return None
        from tfyarn.exchange.checkpoint import resume_point

        found = resume_point(policy.directory, number)[0]
        return None if found is None else found.global_step

    restart = RestartPolicy(options.max_restarts, options.retry_on_errors)
    try:
        result, attempts = run_attempts(
            launch, restart, resume_step=resume_step, record=observers.attempt_ended
        )
        result.attempts = attempts
        result.wall_time = time.monotonic() - begun
        result.tensorboard_url = observers.tensorboard_url
        result.log_dir = log_dir or None
        result.history_path = observers.history_path
        observers.finished(_ended_well(result))
        return result
    except BaseException as exc:
        observers.finished(_ended_badly(exc, time.monotonic() - begun))
        raise
    finally:
        observers.close()


def job_log_dir(options: LaunchOptions, model_dir: str, job_id: str, temp_dir: str) -> str:
    """The job's TensorBoard folder: given, else with ``tensorboard`` a default, else none.

    The default is ``<model_dir>/logs`` when ``model_dir`` is local, and a folder of the
    chief host's temp dir when it is on HDFS (TensorFlow writes summaries locally only).
    """
    if options.log_dir:
        return options.log_dir.removeprefix("file://")
    if not options.tensorboard:
        return ""
    if storage.is_local(model_dir):
        return os.path.join(model_dir.removeprefix("file://"), "logs")
    return os.path.join(temp_dir, "tfyarn-logs", job_id)


def _settings(
    spark: SparkSession, options: LaunchOptions, model_dir: str, log_dir: str
) -> dict[str, Any]:
    """What the history records of the run's settings (no data, secrets or code)."""
    sc = spark.sparkContext
    return {
        "user": sc.sparkUser(),
        "application_id": sc.applicationId,
        "master": sc.master,
        "workers": options.workers,
        "ps": options.ps,
        "chief": options.chief,
        "evaluator": options.evaluator,
        "strategy": options.strategy,
        "strategy_options": {k: repr(v) for k, v in options.strategy_options.items()},
        "transport": options.transport,
        "tls": options.tls,
        "input_mode": options.input_mode.value,
        "model_dir": model_dir,
        "log_dir": log_dir or None,
        "max_restarts": options.max_restarts,
        "min_workers": options.min_workers,
        "timeout": options.timeout,
    }


def _ended_well(result: RunResult) -> dict[str, Any]:
    return {
        "status": result.status,
        "transport": result.transport,
        "wall_time": result.wall_time,
        "startup_time": result.startup_time,
        "model_dir": result.model_dir,
        "roles": result.roles,
        "metrics": result.metrics,
    }


def _ended_badly(exc: BaseException, wall_time: float) -> dict[str, Any]:
    return {
        "status": "failed",
        "error": str(exc)[-8000:],
        "error_type": type(exc).__name__,
        "wall_time": wall_time,
    }


def _launch(
    spark: SparkSession,
    train_fn: Callable[[NodeContext], Any],
    options: LaunchOptions,
    begun: float,
    attempt: _Attempt,
    progress: AttemptProgress,
    observers: RunObservers,
) -> RunResult:
    """One attempt: one barrier stage of every role."""
    sc = spark.sparkContext
    plan = _attempt_plan(spark, options, attempt.number, progress)
    trainers = data_roles(plan, options.strategy)
    validate.check_transport(sc, options.transport)  # rdma: probed here if executors are local

    job_id = attempt.job_id
    # A secret per attempt: a straggler of an earlier attempt cannot join this one.
    secret = new_job_secret()
    transport_options = options.transport_options
    if options.tls:  # a certificate per attempt too, for the same reason
        transport_options = new_job_certificate().apply(transport_options or TransportOptions())
    driver_host = sc.getConf().get("spark.driver.host", "127.0.0.1")
    server = ProgressServer(
        driver_host,
        secret,
        [r.task_id for r in plan],
        tls=transport_options if options.tls else None,
    )
    frame = options.data if options.input_mode is InputMode.SPARK else None
    stage_df, keys = _stage_input(spark, plan, trainers, options.input_mode, frame)
    job = JobSpec(
        job_id=job_id,
        plan=plan,
        trainers=trainers,
        train_fn=code_pickle.dumps(train_fn),  # its tracebacks name the user's file
        secret=secret,
        driver_address=server.address,
        strategy=options.strategy,
        strategy_options=dict(options.strategy_options),
        transport=options.transport,
        transport_options=transport_options,
        interface=options.interface,
        input_mode=options.input_mode,
        files=options.files,
        key_column=partitioning.KEY_COLUMN if options.input_mode is InputMode.SPARK else None,
        routing_keys=keys,
        model_dir=attempt.model_dir,
        heartbeat_interval=options.heartbeat_interval,
        startup_timeout=options.startup_timeout,
        env=dict(options.env),
        service=options.service,
        attempt=attempt.number,
        checkpoint=attempt.checkpoint,
        progress_tls=options.tls,
        log_dir=attempt.log_dir,
        tensorboard=options.tensorboard,
    )
    shown = AttemptNumber(attempt.number, options.max_restarts + 1)
    observers.attempt_started(attempt.number, options.max_restarts + 1, server)
    display = ProgressDisplay(
        server, options.silent_warning_after, enabled=options.progress, attempt=shown
    )
    watch = _Watch(
        LivenessWatch(options.silent_fail_after, options.stall_fail_after),
        progress,
        [r.task_id for r in trainers],
        options.allocation_timeout,
    )
    try:
        rows, stage_started = _run_stage(
            spark, stage_df, job, server, display, options.timeout, begun, watch, observers
        )
    finally:
        watch.observe(server)
        display.close()
        server.close()
    return _result(job, rows, server, stage_started, begun)


def _attempt_plan(
    spark: SparkSession, options: LaunchOptions, number: int, progress: AttemptProgress
) -> tuple[RoleSpec, ...]:
    """The roles of attempt ``number``, once the executors for them registered.

    Every attempt asks for the run's full size first, so a run that scaled down grows
    back at its next restart when the executors returned. With ``min_workers``, a restart
    that got fewer executors within ``allocation_timeout`` goes on with fewer workers
    (the data is spread over those) instead of failing.
    """
    sc = spark.sparkContext

    def plan_for(workers: int) -> tuple[RoleSpec, ...]:
        return plan_job(
            workers=workers,
            ps=options.ps,
            chief=options.chief,
            evaluator=options.evaluator,
            strategy=options.strategy,
            submitted_chief=_conf(spark, "chief"),
        )

    plan = plan_for(options.workers)
    if number == 1:
        print(describe(plan, options.strategy), flush=True)  # the role plan, at every job's start
    validate.check_spark_conf(sc)
    wanted = sum(r.name == "worker" for r in plan)
    least = least_executors(number, len(plan), wanted, options.min_workers)
    got = validate.wait_for_slots(sc, len(plan), options.allocation_timeout, least)
    progress.workers = progress.wanted_workers = wanted
    if got >= len(plan):
        return plan
    progress.workers = wanted - (len(plan) - got)
    log.warning(
        "tfyarn: attempt %d runs with %d of %d workers: %d executors registered within "
        "allocation_timeout=%g s, not %d (min_workers=%d); the data is spread over the "
        "workers left, and the next restart asks for all %d again",
        number, progress.workers, wanted, got, options.allocation_timeout, len(plan),
        options.min_workers, wanted,
    )  # fmt: skip
    return plan_for(progress.workers)


@dataclass
class _Watch:
    """The attempt's liveness check and progress record, fed by the stage's poll loop."""

    liveness: LivenessWatch
    progress: AttemptProgress
    trainers: list[str]
    start_within: float
    idle_since: float | None = None  # since when no role started and no stage ran

    def not_started(self, sc: Any, group: str, server: ProgressServer) -> RoleLostError | None:
        """An error once the job group ran no Spark stage for ``start_within`` seconds.

        Spark holds a barrier stage back, without failing it, while the cluster has fewer
        free task slots than the stage has tasks, and checks again every 15 s for 10
        minutes. That happens when an executor counted for the attempt's plan was lost
        meanwhile (its removal not yet known when the attempt counted); the next attempt
        counts again.
        """
        if any(s.state != "starting" for s in server.snapshot()) or _stage_running(sc, group):
            self.idle_since = None
            return None
        now = time.monotonic()
        self.idle_since = now if self.idle_since is None else self.idle_since
        idle = now - self.idle_since
        if idle <= self.start_within:
            return None
        return RoleLostError(
            "?",
            "?",
            "(no traceback: no role started)",
            f"the barrier stage of the roles did not start within {idle:.0f} s "
            f"(allocation_timeout={self.start_within:g} s): Spark has fewer free task slots "
            "than the attempt has roles, e.g. an executor was lost after it was counted; "
            "a restart counts the executors again",
        )

    def observe(self, server: ProgressServer) -> None:
        self.progress.observe(server.snapshot(), self.trainers)

    def lost(self, server: ProgressServer, job: JobSpec) -> RoleLostError | None:
        """The error for a role that went silent or stuck, if one did."""
        snapshot = server.snapshot()
        self.progress.observe(snapshot, self.trainers)
        stalled = self.liveness.check(snapshot)
        if stalled is None:
            return None
        error = stalled.error()
        error.job_id = job.job_id
        error.ports = [p for s in snapshot if (p := s.metrics.get("tf_port"))]
        return error


def _not_stopped(
    roles: Sequence[RoleState],
    serving: Sequence[str],
    told: dict[str, float],
    finish_since: float,
    now: float,
    grace: float,
    startup_timeout: float,
) -> list[str]:
    """The serving roles still running ``grace`` seconds after they could stop.

    The grace of a role counts from when it was told to finish and had started its
    ``train_fn``, whichever came later: a ps still importing TensorFlow when the trainers
    end cannot act on the message yet. A role that gets neither far is given its start-up
    timeout on top, counted from the end of training.
    """
    stuck = []
    for state in roles:
        if state.task_id not in serving or state.state in ("done", "failed"):
            continue
        told_at = told.get(state.task_id)
        if told_at is not None and state.ready_at is not None:
            since = max(told_at, state.ready_at)
        else:
            since = finish_since + startup_timeout
        if now - since > grace:
            stuck.append(state.task_id)
    return stuck


#: Seconds the driver waits, once a role reported its failure, for the stage to fail
#: too: a lost role's peers fail right after it, and the loss is the cause to act on.
_SETTLE_SECONDS = 3.0


def _group_stage_ids(tracker: Any, group: str) -> list[int]:
    """The stage ids of every Spark job of the job group ``group``."""
    ids: list[int] = []
    for job_id in tracker.getJobIdsForGroup(group):
        info = tracker.getJobInfo(job_id)
        ids += info.stageIds if info is not None else ()
    return ids


def _stage_running(sc: Any, group: str) -> bool:
    """Whether a Spark stage of the job group ``group`` is running now."""
    tracker = sc.statusTracker()
    return not set(tracker.getActiveStageIds()).isdisjoint(_group_stage_ids(tracker, group))


def _spark_retried(sc: Any, group: str) -> bool:
    """Whether Spark started the barrier stage of ``group`` again after a task failed.

    A tfyarn attempt is exactly one run of its barrier stage. Spark does not run a failed
    barrier *result* stage (tfyarn's: ``mapInArrow(barrier=True).collect()``) again,
    whatever ``spark.task.maxFailures`` says: its DAGScheduler aborts it ("Could not
    recover from a failed barrier ResultStage"), and tfyarn restarts from the checkpoint
    itself (tests/yarn/test_restarts_yarn.py runs with maxFailures=4). This check guards
    against a Spark that starts a second stage attempt anyway (it does for a barrier
    shuffle-map stage): its tasks would start the attempt's roles a second time, so the
    driver ends the attempt at its next poll (0.5 s), before those roles can have wired
    (a role process takes seconds to import TensorFlow).
    """
    tracker = sc.statusTracker()
    for stage_id in _group_stage_ids(tracker, group):
        stage = tracker.getStageInfo(stage_id)
        if stage is not None and stage.currentAttemptId > 0:
            return True
    return False


def _run_stage(
    spark: SparkSession,
    stage_df: DataFrame,
    job: JobSpec,
    server: ProgressServer,
    display: ProgressDisplay,
    timeout: float | None,
    begun: float,
    watch: _Watch,
    observers: RunObservers,
) -> tuple[list[Any], float]:
    """Run the barrier stage in a thread; fail fast on role errors, timeout or Ctrl-C.

    A role reporting an error, going silent or stuck (``watch``), or Spark starting the
    stage a second time, ends the stage (the job group is cancelled) with a
    :class:`RoleFailedError` naming the role.
    """
    from tfyarn.node.task import RESULT_DDL, run_barrier_task

    sc = spark.sparkContext
    group = f"tfyarn-{job.job_id}"
    box: dict[str, Any] = {}

    def body(batches: Any) -> Any:
        return run_barrier_task(job, batches)

    def collect() -> None:
        try:
            description = job_description(job.job_id, observers.tensorboard_url)
            sc.setJobGroup(group, description, interruptOnCancel=True)
            box["rows"] = stage_df.mapInArrow(body, RESULT_DDL, barrier=True).collect()
        except BaseException as exc:
            box["error"] = exc

    trainers = [r.task_id for r in job.plan if job.finishes_by_itself(r)]
    serving = [r.task_id for r in job.plan if not job.finishes_by_itself(r)]
    finish_since: float | None = None  # when every trainer had reported done
    told: dict[str, float] = {}  # serving role -> when it was told to finish
    thread = threading.Thread(target=collect, name="tfyarn-stage", daemon=True)
    stage_started = time.monotonic()
    thread.start()
    try:
        while thread.is_alive():
            thread.join(timeout=0.5)
            display.refresh()
            observers.poll()
            failed = server.failed_role()
            if failed is not None:
                raise _settled(_role_error(failed, job, server), thread, box, job, server)
            lost = watch.lost(server, job) or watch.not_started(sc, group, server)
            if lost is not None:
                raise _with_job(lost, job, server)
            if _spark_retried(sc, group):
                raise _retried_error(job, sc)
            if serving and finish_since is None and server.all_done(trainers):
                finish_since = time.monotonic()
            if finish_since is not None:
                # A role not yet connected misses the message: tell it once it is.
                untold = [t for t in serving if t not in told]
                if untold:
                    missed = set(server.tell(untold, {"kind": "finish"}))
                    told.update((t, time.monotonic()) for t in untold if t not in missed)
                stuck = _not_stopped(
                    server.snapshot(), serving, told, finish_since, time.monotonic(),
                    job.shutdown_grace, job.startup_timeout,
                )  # fmt: skip
                if stuck:
                    raise TFYarnError(
                        f"training finished but {', '.join(stuck)} did not stop within "
                        f"{job.shutdown_grace:.0f} s of being told to; the job was "
                        "cancelled. A ps/evaluator train_fn must return once "
                        "ctx.wait_training_finished() does"
                    )
            if timeout is not None and time.monotonic() - begun > timeout:
                raise TFYarnError(
                    timeout_message(timeout, server.snapshot(), job.heartbeat_interval)
                )
    except BaseException:
        sc.cancelJobGroup(group)
        thread.join(timeout=60)
        raise
    if "error" in box:
        # Not chained: Spark's text (JVM stack) is on the error's spark_error instead.
        raise _stage_error(box["error"], job, server)
    return box["rows"], stage_started


def _settled(
    error: RoleFailedError,
    thread: threading.Thread,
    box: dict[str, Any],
    job: JobSpec,
    server: ProgressServer,
) -> RoleFailedError:
    """The attempt's cause, once the stage had a moment to fail with its own error.

    The first role to fail in time (not in plan order: its peers fail because it did),
    unless a role was lost meanwhile (:func:`~tfyarn.cluster.restarts.pick_cause`).
    """
    thread.join(timeout=_SETTLE_SECONDS)
    failed = sorted((s for s in server.snapshot() if s.state == "failed"), key=_failed_at)
    reported = [_role_error(s, job, server) for s in failed] or [error]
    others: list[BaseException] = list(reported[1:])
    if "error" in box:
        others.append(_stage_error(box["error"], job, server))
    cause = pick_cause(reported[0], others)
    if cause.restartable or not failed or not all(_peer_lost(s) for s in failed):
        return cause
    # Every role that failed lost a connection to a peer, and no peer said why: the
    # peer went away without a word (its executor killed by the cluster manager, its
    # host gone), which is the infrastructure's doing.
    return _with_job(
        RoleLostError(
            cause.role,
            cause.host,
            cause.remote_traceback,
            f"{str(cause).splitlines()[0]}; no role reported an error of its own, so a "
            "peer was lost (killed, its executor or host gone); a restart can help "
            "(max_restarts=)",
        ),
        job,
        server,
    )


def _peer_lost(state: RoleState) -> bool:
    return state.failure is not None and state.failure.peer_lost


def _failed_at(state: RoleState) -> tuple[bool, float]:
    # When the role failed (its task's later report does not count), a lost connection to
    # a peer after the others: it follows from the peer's failure.
    return _peer_lost(state), state.failed_at if state.failed_at is not None else state.last_seen


def _retried_error(job: JobSpec, sc: Any) -> RoleLostError:
    """The error for a barrier stage that Spark started again after a task failed."""
    tries = sc.getConf().get("spark.task.maxFailures", "?")
    error = RoleLostError(
        "?",
        "?",
        "(see the executors' logs for the task that failed first)",
        f"a task of the barrier stage failed and Spark started the stage again "
        f"(spark.task.maxFailures={tries}); tfyarn ended it, since each attempt runs its "
        "roles once. Set spark.task.maxFailures=1 (the tfyarn profiles do) to have the "
        "failing role named here",
    )
    error.job_id = job.job_id
    return error


def _with_job(error: RoleFailedError, job: JobSpec, server: ProgressServer) -> RoleFailedError:
    """``error`` with the job's id and the roles' TensorFlow ports (for cleanup checks)."""
    error.job_id = job.job_id
    error.ports = [p for s in server.snapshot() if (p := s.metrics.get("tf_port"))]
    return error


def _role_error(failed: RoleState, job: JobSpec, server: ProgressServer) -> RoleFailedError:
    """The error for a role whose failure was reported over the heartbeat channel.

    By the role (its own exception: :class:`RoleFailedError`) or by its task (a role
    process killed or exited: :class:`~tfyarn.errors.RoleLostError` when lost).
    """
    host = failed.host or "?"
    failure = failed.failure or RoleFailure(
        failed.task_id,
        host,
        f"role {failed.task_id} on host {host} failed: {failed.error}",
        failed.traceback or failed.error or "",
    )
    return _with_job(failure.error(), job, server)


def _stage_error(exc: BaseException, job: JobSpec, server: ProgressServer) -> TFYarnError:
    """Turn Spark's stage failure into the failed role's error; Spark's text kept apart.

    What failed, from the likeliest cause first (:func:`~tfyarn.node.failure.likeliest_cause`):
    the roles' reports over the heartbeat channel, the record the failed task left in
    Spark's text, or the role whose executor or Python worker Spark says was lost. The
    error's message is ours; Spark's whole text (JVM stack, SQLSTATE) is its
    ``spark_error``. A failure none of these explain keeps Spark's error as its cause.
    """
    text = str(exc)
    stage = parse_stage_failure(text)
    blamed = stage.record
    if blamed is None and stage.partition is not None and stage.partition < len(job.plan):
        task_id = job.plan[stage.partition].task_id
        hosts = {s.task_id: s.host for s in server.snapshot()}
        blamed = lost_role(stage, task_id, hosts.get(task_id) or "?")
    reported = server.failed_role()
    known = [f for f in (reported.failure if reported else None, blamed) if f is not None]
    cause = likeliest_cause(known)
    if cause is None:
        error = TFYarnError(f"the tfyarn barrier stage failed: {stage.reason[-8000:]}")
        error.__cause__ = exc  # nothing of ours explains it: Spark's error is all there is
        return error
    return _with_job(cause.error(spark_error=text), job, server)


def _result(
    job: JobSpec, rows: list[Any], server: ProgressServer, stage_started: float, begun: float
) -> RunResult:
    value: Any = None
    roles: dict[str, dict[str, Any]] = {}
    transports = set()
    for row in rows:
        info = json.loads(row.info)
        roles[row.task] = {"host": row.host, **info}
        if info.get("transport"):
            transports.add(info["transport"])
        if row.result:
            value = cloudpickle.loads(row.result)
    ready = server.all_ready_at()
    metrics = {s.task_id: dict(s.metrics, step=s.step, loss=s.loss) for s in server.snapshot()}
    transport = None
    if transports:
        transport = transports.pop() if len(transports) == 1 else ", ".join(sorted(transports))
    with contextlib.suppress(Exception):
        log.info("tfyarn job %s finished", job.job_id)
    return RunResult(
        value=value,
        metrics=metrics,
        model_dir=job.model_dir,
        roles=roles,
        transport=transport,
        wall_time=time.monotonic() - begun,
        startup_time=None if ready is None else ready - stage_started,
        job_id=job.job_id,
    )
