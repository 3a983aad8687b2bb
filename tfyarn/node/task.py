"""The barrier task: runs inside a Spark executor's Python worker, one per role.

It never imports TensorFlow. It caches the partition's data, reserves the role's port,
starts the role process (:mod:`tfyarn.node.role_process`), wires the cluster with Spark's
``allGather``, then supervises: a role that fails fails the task (so Spark fails the
stage and kills every other task); when the trainers are done, the final ``barrier``
releases the serving roles (ps, evaluator), which are told to finish and then stopped.
Whatever happens, the role process is stopped and the workspace removed on the way out.

A failure leaves as a :class:`~tfyarn.node.failure.RoleFailure`: sent to the driver over
the heartbeat channel and carried, as a note, in the exception the task raises (which
Spark reports), so that the driver raises the same error either way.
"""

from __future__ import annotations

import collections
import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
import traceback
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyarrow as pa

from tfyarn.cluster.plan import RoleSpec
from tfyarn.errors import RoleFailedError, TFYarnError
from tfyarn.node import feed
from tfyarn.node.address import resolve_address
from tfyarn.node.control import ControlPipe
from tfyarn.node.failure import RoleFailure, exit_failure
from tfyarn.node.heartbeat import HeartbeatClient
from tfyarn.node.job import InputMode, JobSpec
from tfyarn.node.messages import Cluster, Endpoint, Hello, Member, MessageError, Setup
from tfyarn.node.ports import reserve_port
from tfyarn.node.workspace import (
    make_workspace,
    remove_workspace,
    sweep_stale_workspaces,
    workspace_root,
)

if TYPE_CHECKING:
    from pyspark import BarrierTaskContext

__all__ = [
    "RESULT_SCHEMA",
    "gpu_env",
    "run_barrier_task",
]

#: One row per task comes back to the driver.
RESULT_SCHEMA = pa.schema(
    [
        ("partition", pa.int64()),
        ("task", pa.string()),
        ("host", pa.string()),
        ("result", pa.binary()),
        ("info", pa.string()),
    ]
)
RESULT_DDL = "partition long, task string, host string, result binary, info string"

#: Lines of a role's output kept for error messages.
_TAIL_LINES = 60


def gpu_env(resources: dict[str, Any]) -> dict[str, str]:
    """CUDA_VISIBLE_DEVICES from the GPUs Spark assigned to the task (never from probing).

    Parameters
    ----------
    resources : dict
        ``BarrierTaskContext.resources()``: name -> ResourceInformation.
    """
    gpu = resources.get("gpu")
    if gpu is None:
        return {}
    return {"CUDA_VISIBLE_DEVICES": ",".join(str(a) for a in gpu.addresses)}


class _RoleProcess:
    """The child process running one role, with its control pipe and output tail."""

    def __init__(self, job: JobSpec, workdir: Path, tf_fd: int, extra_env: dict[str, str]) -> None:
        to_child_r, to_child_w = os.pipe()
        from_child_r, from_child_w = os.pipe()
        env = dict(os.environ)
        env.update(extra_env)
        env["TFYARN_JOB"] = job.job_id
        env.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "tfyarn.node.role_process",
                str(workdir),
                str(to_child_r),
                str(from_child_w),
                str(tf_fd),
                str(os.getpid()),
            ],
            pass_fds=(to_child_r, from_child_w, tf_fd),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=workdir,
        )
        os.close(to_child_r)
        os.close(from_child_w)
        self.control = ControlPipe(from_child_r, to_child_w)
        self.tail: collections.deque[str] = collections.deque(maxlen=_TAIL_LINES)
        self._pump = threading.Thread(target=self._pump_output, daemon=True)
        self._pump.start()

    def _pump_output(self) -> None:
        """Copy the role's output to the executor's log, keeping the last lines."""
        assert self.proc.stdout is not None
        for raw in self.proc.stdout:
            line = raw.decode(errors="replace")
            self.tail.append(line)
            sys.stderr.write(line)
        sys.stderr.flush()

    def output_tail(self) -> str:
        self._pump.join(timeout=2)
        return "".join(self.tail)

    def stop(self, grace: float) -> None:
        """Stop the process: SIGTERM, then SIGKILL after ``grace`` seconds."""
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    self.proc.kill()
                self.proc.wait(timeout=10)
        self.control.close()
        self._pump.join(timeout=2)


def _role_failure(
    role: RoleSpec, host: str, workdir: Path, proc: _RoleProcess, *, starting: bool
) -> RoleFailure:
    """How a role process that ended non-zero failed: its traceback, else its last output."""
    error_file, written = workdir / "error.txt", ""
    with contextlib.suppress(OSError, UnicodeDecodeError):
        # The role writes its traceback here; its output holds unrelated log lines too.
        written = error_file.read_text() if error_file.exists() else ""
    returncode = proc.proc.returncode
    assert returncode is not None  # the caller waited for the process
    return exit_failure(
        role.task_id, host, returncode, written, proc.output_tail(), starting=starting
    )


def _failed(job: JobSpec, failure: RoleFailure) -> RoleFailedError:
    """The exception that fails the task; the driver hears of ``failure`` at once too.

    The heartbeat report reaches the driver before Spark's own report of the failed
    task does (it decides between a lost role and its peers' errors); the note carries
    the same record inside the text Spark reports, should the heartbeat not get through.
    """
    with contextlib.suppress(Exception):  # best effort: Spark's report still follows
        client = HeartbeatClient(
            job.driver_address,
            job.secret,
            failure.role,
            interval=3600,
            tls=job.transport_options if job.progress_tls else None,
        )
        client.send(
            "error", error=failure.message, traceback=failure.traceback, failure=failure.to_json()
        )
        client.close()
    return failure.carrier()


def _setup_failure(
    task_id: str, host: str, exc: Exception, starting: bool = True
) -> RoleFailedError:
    """The error for a task that failed itself (while setting its role up, usually).

    Not reported over the heartbeat channel: a task whose peer failed fails here too
    (Spark stops the stage), and Spark reports the task that failed first.
    """
    first = (str(exc).strip().splitlines() or [""])[0]
    verb = "failed to start" if starting else "failed"
    failure = RoleFailure(
        task_id,
        host,
        f"role {task_id} on host {host} {verb}: {type(exc).__name__}: {first}",
        traceback.format_exc(),
    )
    return failure.carrier()


@dataclass(frozen=True)
class _Placement:
    """Where this barrier task runs and which role it plays."""

    partition: int
    role: RoleSpec
    executor: str
    host: str


def _place(job: JobSpec, bctx: BarrierTaskContext) -> _Placement:
    """This task's partition, role, executor and the address its role binds to."""
    partition = bctx.partitionId()
    infos = bctx.getTaskInfos()
    if len(infos) != len(job.plan):
        raise TFYarnError(
            f"the barrier stage has {len(infos)} tasks but the job plans {len(job.plan)} roles; "
            "adaptive query execution or a custom partitioning changed the partition count"
        )
    executor = infos[partition].address
    host = resolve_address(job.interface, executor.rsplit(":", 1)[0])
    return _Placement(partition, job.role(partition), executor, host)


@dataclass(frozen=True)
class _Cached:
    """The role's training data as cached on local disk (none for non-trainers)."""

    path: str | None = None
    rows: int = 0
    spec: dict[str, Any] | None = None


def _cache_input(
    job: JobSpec, place: _Placement, batches: Iterator[pa.RecordBatch], workdir: Path
) -> _Cached:
    """Write this task's data to the workspace; consume the input whatever the role."""
    role, target = place.role, workdir / "data.arrow"
    if job.input_mode is InputMode.SPARK:
        key = job.routing_keys[place.partition] if job.routing_keys else None
        info = feed.write_cache(batches, target, key_column=job.key_column, expected_key=key)
        if not job.is_trainer(role):
            return _Cached()
    elif job.input_mode is InputMode.FILES and job.is_trainer(role):
        rank = job.trainers.index(role)
        files = feed.shard_files(job.files, rank, len(job.trainers))
        # The job's environment carries the NameNodes' web addresses for hdfs:// files.
        info = feed.write_cache(feed.read_files(files, {**os.environ, **job.env}), target)
    else:
        for _ in batches:  # Spark expects the input consumed
            pass
        return _Cached()
    return _Cached(info.path, info.rows, feed.data_spec(feed.load_columns(info.path)))


def _gather_members(bctx: BarrierTaskContext, me: Member) -> tuple[Member, ...]:
    """Every role's :class:`Member` record, in partition order (Spark ``allGather``)."""
    members = tuple(
        Member.from_json(json.loads(m)) for m in bctx.allGather(json.dumps(me.to_json()))
    )
    executors = [m.executor for m in members]
    if len(set(executors)) != len(executors):
        raise TFYarnError(
            "two roles landed in the same executor; tfyarn needs one task per executor: "
            "set spark.task.cpus equal to spark.executor.cores"
        )
    return members


def _with_endpoints(
    bctx: BarrierTaskContext, job: JobSpec, members: tuple[Member, ...], mine: Endpoint
) -> tuple[Member, ...]:
    """``members`` with every role's transport address (a second ``allGather``, if needed)."""
    if job.transport is None:
        return members
    gathered = [
        Endpoint.from_json(json.loads(e)) for e in bctx.allGather(json.dumps(mine.to_json()))
    ]
    by_task = {e.task_id: e.exchange_address for e in gathered}
    return tuple(replace(m, exchange_address=by_task[m.task_id]) for m in members)


def _hello(job: JobSpec, place: _Placement, proc: _RoleProcess, workdir: Path) -> Hello:
    """The role's answer to its setup; a role that ends or misbehaves instead fails the task."""
    try:
        hello = proc.control.receive(Hello, timeout=job.startup_timeout)
    except MessageError as exc:
        task_id = place.role.task_id
        failure = RoleFailure(
            task_id,
            place.host,
            f"role {task_id} on host {place.host} broke the control protocol: {exc}",
            f"{type(exc).__name__}: {exc}",
        )
        raise _failed(job, failure) from None
    if hello is None:  # the role process ended before it was wired
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.proc.wait(timeout=10)
        if proc.proc.returncode is None:  # it closed its pipe yet lives on: a broken role
            proc.stop(grace=5)
            task_id = place.role.task_id
            failure = RoleFailure(
                task_id,
                place.host,
                f"role {task_id} on host {place.host} closed its control pipe while starting "
                "but did not exit; it was stopped",
                proc.output_tail(),
            )
            raise _failed(job, failure)
        raise _failed(job, _role_failure(place.role, place.host, workdir, proc, starting=True))
    return hello


def _wire(
    bctx: BarrierTaskContext,
    job: JobSpec,
    place: _Placement,
    proc: _RoleProcess,
    workdir: Path,
    me: Member,
    data_path: str | None,
) -> Hello:
    """Wire the cluster: gather the roles, set the role up, gather endpoints, tell it all."""
    members = _gather_members(bctx, me)
    peer_hosts = tuple(m.host for m in members)
    proc.control.send(Setup(place.partition, place.host, peer_hosts, data_path))
    hello = _hello(job, place, proc, workdir)
    mine = Endpoint(place.role.task_id, hello.exchange_address)
    proc.control.send(Cluster(_with_endpoints(bctx, job, members, mine)))
    return hello


def _outcome(job: JobSpec, place: _Placement, proc: _RoleProcess, workdir: Path) -> bytes:
    """Wait for the role to end; its pickled result (chief only), or a failure."""
    # No Spark barrier() while the role runs: killing a task blocked in barrier() makes
    # Spark's Python barrier server thread die with TaskKilledException, which takes the
    # whole executor JVM down. Serving roles (ps, evaluator) are told to finish by the
    # driver over the heartbeat channel instead, once every trainer reported done.
    proc.proc.wait()
    if proc.proc.returncode != 0:
        raise _failed(job, _role_failure(place.role, place.host, workdir, proc, starting=False))
    result_file = workdir / "result.pkl"
    return result_file.read_bytes() if result_file.exists() else b""


def _result_batch(place: _Placement, result: bytes, info: dict[str, Any]) -> pa.RecordBatch:
    """The one row (see :data:`RESULT_SCHEMA`) that tells the driver how the role went."""
    row = {
        "partition": place.partition,
        "task": place.role.task_id,
        "host": place.host,
        "result": result,
        "info": json.dumps(info),
    }
    return pa.RecordBatch.from_pylist([row], schema=RESULT_SCHEMA)


def run_barrier_task(job: JobSpec, batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
    """The body of the barrier stage's ``mapInArrow`` function.

    Yields one record batch (see :data:`RESULT_SCHEMA`) describing the role's outcome.
    """
    from pyspark import BarrierTaskContext

    started = time.time()
    bctx = BarrierTaskContext.get()
    partition = bctx.partitionId()
    try:
        place = _place(job, bctx)
        root = workspace_root(job)
        sweep_stale_workspaces(root.parent, keep=root)
        workdir = root / job.workspace_name(place.role)
        make_workspace(workdir)
        tf_port = reserve_port(place.host)
    except Exception as exc:
        spark_host = bctx.getTaskInfos()[partition].address.rsplit(":", 1)[0]
        known = partition < len(job.plan)  # not when _place found the plan's size wrong
        task_id = job.role(partition).task_id if known else f"partition:{partition}"
        raise _setup_failure(task_id, spark_host, exc) from None
    proc: _RoleProcess | None = None
    wired_at: float | None = None
    try:
        job.save(workdir / "job.pkl")
        proc = _RoleProcess(job, workdir, tf_port.fileno(), gpu_env(bctx.resources()))
        (workdir / "owner.pid").write_text(f"{os.getpid()} {proc.proc.pid}\n")
        cached = _cache_input(job, place, batches, workdir)
        cached_at = time.time()
        me = Member(
            task_id=place.role.task_id,
            host=place.host,
            tf_port=tf_port.port,
            exchange_address=None,
            rows=cached.rows,
            executor=place.executor,
            data_spec=cached.spec,
        )
        hello = _wire(bctx, job, place, proc, workdir, me, cached.path)
        tf_port.release()  # the role process holds its own copy until TensorFlow binds
        wired_at = time.time()
        result = _outcome(job, place, proc, workdir)
        info = {
            "started": started,
            "cached": cached_at,
            "wired": wired_at,
            "finished": time.time(),
            "rows": cached.rows,
            "transport": hello.transport,
            "tf_port": me.tf_port,
        }
        yield _result_batch(place, result, info)
    except RoleFailedError:
        raise
    except Exception as exc:
        raise _setup_failure(place.role.task_id, place.host, exc, wired_at is None) from None
    finally:
        tf_port.release()
        if proc is not None:
            proc.stop(grace=5)
        remove_workspace(workdir)
