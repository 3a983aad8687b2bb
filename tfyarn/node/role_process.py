"""The role process: one fresh Python process per role, started by its barrier task.

Why a separate process rather than running TensorFlow inside Spark's Python worker:
TensorFlow's servers cannot be shut down in-process, Spark reuses Python workers across
tasks, and a parameter server never returns on its own. A child process can always be
stopped, and it dies with its task: a watchdog thread notices when the parent (the Spark
Python worker) or the executor's JVM above it is gone, for whatever reason (task killed,
job cancelled, executor lost), removes the role's workspace and exits at once.

A role that fails leaves its Python traceback in ``error.txt`` (its task reports that,
not the role's last output, which holds unrelated log lines too), at start-up as well as
in ``train_fn``; ``train_fn`` comes pickled by :mod:`tfyarn.node.code_pickle`, so the
traceback names the user's file and line.

Usage (by :mod:`tfyarn.node.task` only)::

    python -m tfyarn.node.role_process WORKDIR CONTROL_IN CONTROL_OUT TF_PORT_FD PARENT_PID
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import select
import signal
import sys
import threading
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn, TypeVar

import cloudpickle

from tfyarn.cluster.plan import RoleSpec
from tfyarn.errors import TFYarnError, TransportError
from tfyarn.exchange.stats import process_stats
from tfyarn.node.context import NodeContext, set_current_context
from tfyarn.node.control import ControlPipe
from tfyarn.node.failure import EXIT_ORPHANED
from tfyarn.node.heartbeat import HeartbeatClient
from tfyarn.node.job import JobSpec
from tfyarn.node.messages import Cluster, Hello, Member, Message, MessageError, Setup
from tfyarn.node.ports import ReservedPort
from tfyarn.node.tensorboard import ExchangeSummaries, TensorBoardServer
from tfyarn.node.workspace import remove_workspace

if TYPE_CHECKING:
    from tfyarn.transport.base import Listener

M = TypeVar("M", bound=Message)

#: Exit status of a role whose code raised.
EXIT_FAILED = 1


#: Taken, and never given back, by the one path that ends the process: the watchdog and a
#: signal handler may both set out to remove the workspace and end it, and the main thread
#: to end it (:func:`_exit`); the one that ended the process first would cut another's
#: removal short.
_ENDING = threading.Lock()


def _remove_workspace(workdir: Path, *, wait: bool) -> bool:
    """Remove the role's workspace (and the job's folder once empty) unless another path
    of this process is already at it; whether this call did."""
    if not _ENDING.acquire(blocking=wait):
        return False
    remove_workspace(workdir)
    return True


def _exit(status: int) -> NoReturn:
    """End the process with ``status``, the task left to remove the workspace.

    Unless another path (the watchdog, SIGTERM) is already removing it, which ends the
    process itself once done: then this waits for it. An ``os._exit`` from the main thread
    in the middle of that removal left the renamed workspace behind: a role whose task was
    cancelled as it started found its job spec gone (renamed away) and exited.
    """
    _ENDING.acquire()
    os._exit(status)


def _orphaned_exit(workdir: Path) -> NoReturn:
    """The task that started us is gone: remove the workspace and end at once.

    Should another path be ending the process, this waits for it to.
    """
    _remove_workspace(workdir, wait=True)
    os._exit(EXIT_ORPHANED)


@dataclass(frozen=True)
class _Ancestor:
    """A process above this one, named by pid and start time (pids are reused)."""

    pid: int
    started: int  # clock ticks after boot: field 22 of /proc/<pid>/stat

    def alive(self) -> bool:
        stat = _proc_stat(self.pid)
        return stat is not None and stat[2] == self.started


def _proc_stat(pid: int) -> tuple[str, int, int] | None:
    """``(command name, parent pid, start time)`` of ``pid`` from /proc; None if gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name sits in parentheses and may itself hold spaces or parentheses.
    name = text[text.index("(") + 1 : text.rindex(")")]
    fields = text[text.rindex(")") + 2 :].split()
    return name, int(fields[1]), int(fields[19])


def _task_ancestors(parent: int, depth: int = 4) -> list[_Ancestor]:
    """``parent`` and the processes above it up to the executor's JVM.

    Under Spark that is the Python worker, the Python daemon and the executor JVM. The
    JVM can die while the worker lives on: killed by ``killExecutor``, by its Spark
    worker or by YARN, the JVM goes first and the worker, reparented to init, keeps
    waiting on this process. Without a JVM within ``depth`` (not under Spark) only
    ``parent`` is watched.
    """
    chain: list[_Ancestor] = []
    pid = parent
    for _ in range(depth):
        stat = _proc_stat(pid)
        if pid <= 1 or stat is None:
            break
        name, above, started = stat
        chain.append(_Ancestor(pid, started))
        if name == "java":
            return chain
        pid = above
    return chain[:1]


def _libc() -> ctypes.CDLL:
    """The C library this process runs on, for the calls Python does not wrap."""
    return ctypes.CDLL(None, use_errno=True)


def _terminated(workdir: Path) -> None:
    """SIGTERM came (the task stopping this role, an operator): clean up, then die of it.

    Dying of the signal, not exiting, keeps what the task reports: killed by SIGTERM.
    Returns at once where another path is already ending the process (a signal handler
    must not wait: it may have interrupted that very path).
    """
    if not _remove_workspace(workdir, wait=False):
        return
    # Back to the default action, from whichever thread runs this: Python's own
    # signal.signal() works in the main thread only, and the watchdog runs this too.
    _libc().signal(int(signal.SIGTERM), 0)  # 0: SIG_DFL
    os.kill(os.getpid(), signal.SIGTERM)
    os._exit(128 + signal.SIGTERM)  # not reached


def _sigterm_pipe(workdir: Path) -> int:
    """Have SIGTERM reach the watchdog at once; the pipe's read end it selects on.

    A Python signal handler runs only when the main thread is back in the interpreter,
    which under TensorFlow can be many seconds away; a stopped role (SIGSTOP, resumed by
    its task's death) would otherwise die of a pending SIGTERM without cleaning up. The
    interpreter's C-level handler writes the signal's number to the wakeup fd at once.
    """
    read, write = os.pipe()
    os.set_blocking(read, False)
    os.set_blocking(write, False)
    signal.signal(signal.SIGTERM, lambda *_: _terminated(workdir))
    signal.set_wakeup_fd(write)
    return read


def _watch_parent(workdir: Path, parent: int, interval: float = 0.25) -> None:
    """End this process as soon as ``parent`` (its barrier task) or its executor is gone.

    ``parent`` comes from the command line rather than ``os.getppid()`` at start-up: the
    task may already have been killed while this process was still importing. SIGTERM
    ends it too, cleaning up (:func:`_sigterm_pipe`).
    """
    ancestors = _task_ancestors(parent)
    signals = _sigterm_pipe(workdir)

    def watch() -> None:
        while True:
            if os.getppid() != parent or not all(a.alive() for a in ancestors):
                _orphaned_exit(workdir)
            ready, _, _ = select.select([signals], [], [], interval)
            if ready:
                with contextlib.suppress(BlockingIOError):
                    if signal.SIGTERM in os.read(signals, 512):
                        _terminated(workdir)

    threading.Thread(target=watch, name="tfyarn-parent-watchdog", daemon=True).start()


def _continue_when_orphaned() -> None:
    """Have Linux send this process SIGCONT when its parent task dies (PR_SET_PDEATHSIG).

    A stopped role (SIGSTOP: the driver's silence limit ends its attempt) cannot run its
    watchdog; resumed when the task is killed, it sees the lost parent and cleans up.
    """
    with contextlib.suppress(OSError, AttributeError):
        _libc().prctl(1, signal.SIGCONT)  # 1: PR_SET_PDEATHSIG


def _open_listener(job: JobSpec, host: str, peer_hosts: list[str]) -> tuple[Listener, str]:
    """Bind this role's transport listener, on the transport chosen for this cluster."""
    from tfyarn import transport
    from tfyarn.transport.select import choose_transport
    from tfyarn.transport.tls import uses_tls

    tls = job.transport_options is not None and uses_tls(job.transport_options)
    choice = choose_transport(
        job.transport or "auto", peer_hosts=peer_hosts, local_host=host, tls=tls
    )
    listener = transport.listen(
        f"{choice.scheme}://{host}:0",
        secret=job.secret,
        options=choice.transport_options(job.transport_options),
    )
    print(f"tfyarn {job.job_id}: transport {choice.transport}: {choice.reason}", file=sys.stderr)
    return listener, choice.transport


def _serve_tf(ctx: NodeContext, finished: threading.Event) -> None:
    """Run a TensorFlow server (ps, or worker under ParameterServerStrategy) until finished."""
    import tensorflow as tf

    if ctx.trainer_rank is not None and ctx._data_path is not None:
        from tfyarn.node.ps_data import save_shard

        save_shard(ctx.columns(), Path(ctx.workdir))
    ctx.release_tf_port()  # TensorFlow's gRPC server binds without SO_REUSEPORT
    server = tf.distribute.Server(
        tf.train.ClusterSpec(ctx.cluster_spec),
        job_name=ctx.role,
        task_index=ctx.index,
        protocol="grpc",
        start=True,
    )
    ctx.report(state="serving")
    finished.wait()
    del server  # cannot be stopped in-process; the process exits right after


def _dispatch(job: JobSpec, ctx: NodeContext, finished: threading.Event) -> Any:
    """Run what this role does under the job's strategy; return its result."""
    strategy = job.strategy
    if strategy == "ps" and ctx.role in ("ps", "worker"):
        _serve_tf(ctx, finished)
        return None
    if ctx.role == "ps" and strategy not in (None, "ps", "mwms"):
        from tfyarn import exchange

        return exchange.serve_ps(ctx)
    train_fn = cloudpickle.loads(job.train_fn)
    return train_fn(ctx)


def _next(control: ControlPipe, expected: type[M], job: JobSpec, workdir: Path) -> M:
    """The task's next control message, which must be an ``expected``.

    The task closing the pipe means it is gone: the role ends as an orphan would.
    """
    message = control.receive(expected, timeout=job.startup_timeout)
    if message is None:
        _orphaned_exit(workdir)
    return message


def _say(control: ControlPipe, message: Message, workdir: Path) -> None:
    """Send ``message`` to the task; a closed pipe means the task is gone.

    Without this the role would die of ``BrokenPipeError`` before its watchdog noticed
    the lost parent, and leave its workspace behind.
    """
    try:
        control.send(message)
    except BrokenPipeError:
        _orphaned_exit(workdir)


def _leave_traceback(workdir: Path, text: str) -> None:
    """Leave ``text`` (the role's traceback) for the task to report, and in the log."""
    with contextlib.suppress(OSError):
        (workdir / "error.txt").write_text(text)
    with contextlib.suppress(OSError):  # the log is a pipe to the task, which may be gone
        print(text, file=sys.stderr, flush=True)


def _refuse(workdir: Path, exc: MessageError) -> NoReturn:
    """End the role over a protocol error, leaving the report its task passes on."""
    text = (
        f"tfyarn role process: {type(exc).__name__}: {exc}\n"
        "The barrier task and its role process disagree on the control protocol: both "
        "come from the same tfyarn, so this is a bug (or a mixed installation); please "
        "report it with this message.\n"
    )
    _leave_traceback(workdir, text)
    _exit(EXIT_FAILED)


@dataclass(frozen=True)
class _Wired:
    """What the control protocol told the role: who it is, and the cluster around it."""

    me: RoleSpec
    setup: Setup
    members: tuple[Member, ...]
    listener: Listener | None
    transport: str | None


def _wire(control: ControlPipe, job: JobSpec, workdir: Path) -> _Wired:
    """Run the role's side of the control protocol: setup, hello, cluster."""
    setup = _next(control, Setup, job, workdir)
    if setup.partition >= len(job.plan):
        raise MessageError(
            f"bad 'setup' control message: partition {setup.partition} is not in the job's "
            f"plan of {len(job.plan)} roles"
        )
    os.environ.update({k: str(v) for k, v in job.env.items()})
    listener, transport_name = None, None
    if job.transport is not None:
        listener, transport_name = _open_listener(job, setup.host, list(setup.peer_hosts))
    try:
        address = listener.address if listener is not None else None
        _say(control, Hello(exchange_address=address, transport=transport_name), workdir)
        cluster = _next(control, Cluster, job, workdir)
    except BaseException:
        if listener is not None:
            with contextlib.suppress(Exception):
                listener.close()
        raise
    planned = sorted(r.task_id for r in job.plan)
    if sorted(m.task_id for m in cluster.members) != planned:
        raise MessageError(
            f"bad 'cluster' control message: its members "
            f"{', '.join(m.task_id for m in cluster.members)} are not the job's roles "
            f"{', '.join(planned)}"
        )
    return _Wired(job.role(setup.partition), setup, cluster.members, listener, transport_name)


class _Views:
    """What a role shows of itself besides heartbeats: TensorBoard (the chief's, with
    ``tensorboard=True``) and the exchange's scalars (every role, with a log folder)."""

    def __init__(self) -> None:
        self.server: TensorBoardServer | None = None
        self.summaries: ExchangeSummaries | None = None

    def start(self, job: JobSpec, ctx: NodeContext, heartbeat: HeartbeatClient, host: str) -> None:
        if ctx.log_dir and ctx.role != "evaluator":
            self.summaries = ExchangeSummaries(
                ctx.log_dir,
                process_stats(),
                lambda: heartbeat.latest("step"),
                job.heartbeat_interval,  # the driver's display has figures as fresh
            )
        if not (job.tensorboard and ctx.is_chief):
            return
        # From the main thread (its parent-death signal is tied to the starting thread).
        try:
            server = self.server = TensorBoardServer(job.log_dir, host)
        except OSError as exc:
            heartbeat.report(tensorboard_error=f"TensorBoard did not start: {exc}")
            return

        def announce() -> None:  # not waited for: training starts meanwhile
            try:
                heartbeat.report(tensorboard_url=server.wait_url(timeout=120))
            except TFYarnError as exc:
                heartbeat.report(tensorboard_error=str(exc)[-2000:])

        threading.Thread(target=announce, name="tfyarn-tensorboard-url", daemon=True).start()

    def close(self) -> None:
        for view in (self.summaries, self.server):
            if view is not None:
                with contextlib.suppress(Exception):
                    view.close()


def _run_role(job: JobSpec, wired: _Wired, workdir: Path, tf_port: ReservedPort) -> int:
    """Run the wired role to its end, reporting to the driver; return the exit status."""
    me = wired.me
    finished = threading.Event()  # set when the driver says training is over
    host, port = job.driver_address
    heartbeat = HeartbeatClient(
        (host, port),
        job.secret,
        me.task_id,
        job.heartbeat_interval,
        on_finish=finished.set,
        tls=job.transport_options if job.progress_tls else None,
        beat_fields=lambda: {"exchange": process_stats().figures().to_json()},
    )
    ctx = NodeContext(
        job,
        me,
        wired.members,
        workdir=str(workdir),
        data_path=wired.setup.data_path,
        heartbeat=heartbeat,
        tf_port=tf_port,
        listener=wired.listener,
        transport=wired.transport,
        finished=finished,
    )
    os.environ["TF_CONFIG"] = ctx.tf_config  # before train_fn imports TensorFlow
    set_current_context(ctx)  # for hvd.init() (tfyarn.horovod) inside train_fn
    status = 0
    views = _Views()
    try:
        heartbeat.send(
            "ready",
            host=wired.setup.host,
            pid=os.getpid(),
            tf_port=ctx.members[me.task_id].tf_port,
            transport=wired.transport,
        )
        views.start(job, ctx, heartbeat, wired.setup.host)
        result = _dispatch(job, ctx, finished)
        if ctx.is_chief:
            (workdir / "result.pkl").write_bytes(cloudpickle.dumps(result))
        heartbeat.send("done")
    except BaseException as exc:
        status = EXIT_FAILED
        text = traceback.format_exc()
        _leave_traceback(workdir, text)
        # A lost connection to a peer is most likely that peer's failure, not this role's:
        # the driver reports the peer's failure first when it has one.
        heartbeat.send(
            "error",
            error=f"{type(exc).__name__}: {exc}",
            traceback=text,
            peer_lost=lost_a_peer(exc),
        )
    finally:
        views.close()
        with contextlib.suppress(Exception):
            ctx.close()
        heartbeat.close()
        tf_port.release()
        if wired.listener is not None:
            with contextlib.suppress(Exception):
                wired.listener.close()
    return status


def lost_a_peer(exc: BaseException) -> bool:
    """Whether ``exc`` comes from a broken connection to a peer (a :class:`TransportError`).

    Raised by tfyarn's own code, or through its causes; TensorFlow re-raises an error of a
    ``tf.py_function`` (where the exchange runs inside ``model.fit``) as an ``OpError``
    that keeps only the text, ``TransportError: ...``.
    """
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        if isinstance(current, TransportError):
            return True
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return type(exc).__module__.startswith("tensorflow") and "TransportError: " in str(exc)


def main(argv: list[str]) -> int:
    """Entry point; see the module docstring for the arguments."""
    workdir = Path(argv[1])
    control = ControlPipe(int(argv[2]), int(argv[3]))
    tf_port = ReservedPort.from_fd(int(argv[4]))
    # Spark's Python daemon sends SIGHUP to its whole process group when the executor
    # stops; the watchdog below cleans up and exits instead of dying mid-way.
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    _continue_when_orphaned()
    _watch_parent(workdir, int(argv[5]))
    # Every way out goes through _exit: an exception escaping to the interpreter's exit
    # (a BrokenPipeError writing to the log of a task just killed) would end the process
    # with the watchdog's removal half done.
    try:
        # The watchdog may have renamed the workspace away already (its task was cancelled
        # as this process started): the spec is then missing, and _exit waits for it.
        os.chdir(workdir)  # relative paths (ps_data.SHARD_DIR) resolve per role
        job = JobSpec.load(workdir / "job.pkl")
        wired = _wire(control, job, workdir)
    except MessageError as exc:
        _refuse(workdir, exc)
    except Exception:  # e.g. the transport cannot listen here: the task reports why
        _leave_traceback(workdir, traceback.format_exc())
        _exit(EXIT_FAILED)
    try:
        status = _run_role(job, wired, workdir, tf_port)
    except BaseException:  # _run_role reports the role's errors; this is its clean-up's
        status = EXIT_FAILED
        with contextlib.suppress(OSError):
            traceback.print_exc()
    with contextlib.suppress(OSError):  # the log is a pipe to the task, which may be gone
        sys.stdout.flush()
        sys.stderr.flush()
    # TensorFlow's server threads can keep a normal interpreter exit waiting forever.
    _exit(status)


if __name__ == "__main__":
    sys.exit(main(sys.argv))
