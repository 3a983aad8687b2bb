"""The barrier task: runs inside a Spark executor's Python worker, one per role.

It never imports TensorFlow. It caches the partition's data, reserves the role's port,
starts the role process (:mod:`tfyarn.node.role_process`), wires the cluster with Spark's
``allGather``, then supervises: a role that fails fails the task (so Spark fails the
stage and kills every other task); when the trainers are done, the final ``barrier``
releases the serving roles (ps, evaluator), which are told to finish and then stopped.
Whatever happens, the role process is stopped and the workspace removed on the way out.
"""

from __future__ import annotations

import collections
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa

from tfyarn.cluster.plan import RoleSpec
from tfyarn.errors import RoleFailedError, TFYarnError
from tfyarn.node import feed
from tfyarn.node.address import resolve_address
from tfyarn.node.control import ControlPipe
from tfyarn.node.job import InputMode, JobSpec
from tfyarn.node.ports import reserve_port

__all__ = [
    "RESULT_SCHEMA",
    "gpu_env",
    "run_barrier_task",
    "sweep_stale_workspaces",
    "workspace_root",
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


def workspace_root(job: JobSpec) -> Path:
    """Parent of this job's role workspaces on this host.

    ``job.tmp_root`` if set; in a YARN container its working directory (YARN deletes it
    with the container, even when the container is killed outright); else the temp dir.
    """
    if job.tmp_root:
        parent = Path(job.tmp_root)
    elif os.environ.get("CONTAINER_ID"):
        parent = Path.cwd()
    else:
        parent = Path(tempfile.gettempdir())
    return parent / f"tfyarn-{job.job_id}"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


#: An empty job directory younger than this may belong to a job whose roles are still
#: creating their workspaces on this host; the sweep leaves it alone.
_EMPTY_JOB_DIR_GRACE = 120.0


def sweep_stale_workspaces(parent: Path, *, keep: Path | None = None) -> list[Path]:
    """Remove role workspaces whose owning processes are all gone; return what was removed.

    A role process removes its workspace itself when its task dies, but a host crash or a
    SIGKILL of both can still leave one behind; the next job on the host cleans it up.
    Empty job directories go too, once they are old enough that no role of theirs can
    still be starting; ``keep`` (the current job's directory) is never touched.
    """
    removed = []
    for owner in parent.glob("tfyarn-*/*/owner.pid"):
        if keep is not None and owner.parent.parent == keep:
            continue
        with contextlib.suppress(OSError, ValueError):
            pids = [int(p) for p in owner.read_text().split()]
            if not any(_pid_alive(p) for p in pids):
                shutil.rmtree(owner.parent, ignore_errors=True)
                removed.append(owner.parent)
    now = time.time()
    for job_dir in parent.glob("tfyarn-*"):
        if job_dir == keep:
            continue
        with contextlib.suppress(OSError):
            if now - job_dir.stat().st_mtime > _EMPTY_JOB_DIR_GRACE:
                job_dir.rmdir()  # only succeeds when empty
    return removed


def _make_workspace(workdir: Path, attempts: int = 5) -> None:
    """Create the role's workspace; retry if its job directory vanishes meanwhile.

    Another role of the same job on this host may remove the (then empty) job directory
    as it exits (:mod:`tfyarn.node.role_process`), between our creating it and our
    subdirectory.
    """
    for attempt in range(attempts):
        try:
            workdir.mkdir(parents=True, exist_ok=True)
            return
        except FileNotFoundError:
            if attempt == attempts - 1:
                raise
            time.sleep(0.05)


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


def _role_failure(role: RoleSpec, host: str, workdir: Path, proc: _RoleProcess) -> RoleFailedError:
    """The error for a role process that exited non-zero, with its traceback."""
    error_file = workdir / "error.txt"
    text = error_file.read_text() if error_file.exists() else proc.output_tail()
    return RoleFailedError(
        role.task_id,
        host,
        text.strip()[-8000:] or "(no output)",
        f"role {role.task_id} on host {host} failed (exit status {proc.proc.returncode})",
    )


def run_barrier_task(job: JobSpec, batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
    """The body of the barrier stage's ``mapInArrow`` function.

    Yields one record batch (see :data:`RESULT_SCHEMA`) describing the role's outcome.
    """
    from pyspark import BarrierTaskContext

    started = time.time()
    bctx = BarrierTaskContext.get()
    partition = bctx.partitionId()
    infos = bctx.getTaskInfos()
    if len(infos) != len(job.plan):
        raise TFYarnError(
            f"the barrier stage has {len(infos)} tasks but the job plans {len(job.plan)} roles; "
            "adaptive query execution or a custom partitioning changed the partition count"
        )
    role = job.role(partition)
    executor = infos[partition].address
    host = resolve_address(job.interface, executor.rsplit(":", 1)[0])
    root = workspace_root(job)
    sweep_stale_workspaces(root.parent, keep=root)
    workdir = root / role.task_id.replace(":", "-")
    _make_workspace(workdir)
    proc: _RoleProcess | None = None
    tf_port = reserve_port(host)
    try:
        job.save(workdir / "job.pkl")
        proc = _RoleProcess(job, workdir, tf_port.fileno(), gpu_env(bctx.resources()))
        (workdir / "owner.pid").write_text(f"{os.getpid()} {proc.proc.pid}\n")

        data_path, rows, spec = None, 0, None
        if job.input_mode is InputMode.SPARK:
            key = job.routing_keys[partition] if job.routing_keys else None
            info = feed.write_cache(
                batches, workdir / "data.arrow", key_column=job.key_column, expected_key=key
            )
            if job.is_trainer(role):
                data_path, rows = info.path, info.rows
        elif job.input_mode is InputMode.FILES and job.is_trainer(role):
            rank = job.trainers.index(role)
            files = feed.shard_files(job.files, rank, len(job.trainers))
            info = feed.write_cache(feed.read_files(files), workdir / "data.arrow")
            data_path, rows = info.path, info.rows
        else:
            for _ in batches:  # Spark expects the input consumed
                pass
        if data_path is not None:
            spec = feed.data_spec(feed.load_columns(data_path))
        cached = time.time()

        me = {
            "task_id": role.task_id,
            "host": host,
            "tf_port": tf_port.port,
            "rows": rows,
            "executor": executor,
            "data_spec": spec,
        }
        members = [json.loads(m) for m in bctx.allGather(json.dumps(me))]
        executors = [m["executor"] for m in members]
        if len(set(executors)) != len(executors):
            raise TFYarnError(
                "two roles landed in the same executor; tfyarn needs one task per executor: "
                "set spark.task.cpus equal to spark.executor.cores"
            )
        proc.control.send(
            {
                "type": "setup",
                "partition": partition,
                "host": host,
                "peer_hosts": [m["host"] for m in members],
                "data_path": data_path,
            }
        )
        hello = proc.control.receive(timeout=job.startup_timeout)
        if hello is None:  # the role process ended before it was wired
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.proc.wait(timeout=10)
            raise _role_failure(role, host, workdir, proc)
        exchange = {"exchange_address": hello.get("exchange_address")}
        if job.transport is not None:
            gathered = [
                json.loads(m)
                for m in bctx.allGather(json.dumps({"task_id": role.task_id, **exchange}))
            ]
            by_task = {g["task_id"]: g["exchange_address"] for g in gathered}
        else:
            by_task = {m["task_id"]: None for m in members}
        for m in members:
            m["exchange_address"] = by_task[m["task_id"]]
        proc.control.send({"type": "cluster", "members": members})
        tf_port.release()  # the role process holds its own copy until TensorFlow binds
        wired = time.time()

        # No Spark barrier() while the role runs: killing a task blocked in barrier() makes
        # Spark's Python barrier server thread die with TaskKilledException, which takes the
        # whole executor JVM down. Serving roles (ps, evaluator) are told to finish by the
        # driver over the heartbeat channel instead, once every trainer reported done.
        proc.proc.wait()
        if proc.proc.returncode != 0:
            raise _role_failure(role, host, workdir, proc)
        result_file = workdir / "result.pkl"
        result = result_file.read_bytes() if result_file.exists() else b""
        info_json = json.dumps(
            {
                "started": started,
                "cached": cached,
                "wired": wired,
                "finished": time.time(),
                "rows": rows,
                "transport": hello.get("transport"),
                "tf_port": me["tf_port"],
            }
        )
        yield pa.RecordBatch.from_pylist(
            [
                {
                    "partition": partition,
                    "task": role.task_id,
                    "host": host,
                    "result": result,
                    "info": info_json,
                }
            ],
            schema=RESULT_SCHEMA,
        )
    finally:
        tf_port.release()
        if proc is not None:
            proc.stop(grace=5)
        shutil.rmtree(workdir, ignore_errors=True)
        with contextlib.suppress(OSError):
            root.rmdir()
