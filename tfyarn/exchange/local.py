"""Run an exchange job as N local processes, without Spark.

The launcher (``tfyarn.run``) hands each role a context with a listener, the peers'
addresses and the job secret. :func:`run_local` builds exactly those pieces for
processes on this machine (listeners on 127.0.0.1), which is how the exchange is
tested between real processes and how ``tfyarn bench exchange`` measures it;
``run_local(..., threads=True)`` runs the same roles as threads of one process.
"""

from __future__ import annotations

import contextlib
import multiprocessing as mp
import os
import secrets
import threading
import time
import traceback
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from multiprocessing.connection import Connection, wait
from typing import TYPE_CHECKING, Any

from tfyarn.errors import ConfigError, RoleFailedError, TFYarnError
from tfyarn.exchange.checkpoint import Checkpoint, CheckpointPolicy, load_resume_point
from tfyarn.transport.base import Listener

if TYPE_CHECKING:
    from tfyarn.exchange.strategy import ExchangeStrategy
    from tfyarn.service.attach import ServiceAttachment
    from tfyarn.transport.options import TransportOptions

__all__ = ["LocalContext", "run_local"]


@dataclass
class LocalContext:
    """A local process's :class:`~tfyarn.exchange.context.ExchangeContext`.

    Implements the same Protocol as the launcher's ``tfyarn.node.context.NodeContext``
    (``role``, ``index``, ``task_id``, ``is_chief``, ``secret``, ``transport``,
    ``listener``, ``transport_options``, ``peers``, ``strategy_name``,
    ``strategy_options``, ``model_dir``, ``service``, ``attempt``, ``checkpoint``,
    ``resume``, ``report``); :meth:`report` keeps the metrics in :attr:`reports`.
    """

    role: str
    index: int
    secret: bytes
    transport: str
    listener: Listener
    peers: dict[str, str]
    strategy_name: str | None = None
    strategy_options: dict[str, Any] = field(default_factory=dict)
    model_dir: str = ""
    #: A long-lived service's parameter servers to use instead of ps roles.
    service: ServiceAttachment | None = None
    #: The job's own transport settings (the listener holds them, merged with defaults).
    transport_options: TransportOptions | None = None
    #: Which attempt of the job this is (a test plays a restart by running attempt 2).
    attempt: int = 1
    #: Where and how often trainers checkpoint; None: no checkpoints.
    checkpoint: CheckpointPolicy | None = None
    reports: list[dict[str, Any]] = field(default_factory=list)
    _strategy: ExchangeStrategy | None = None
    _resume: tuple[Checkpoint | None] | None = None

    @property
    def resume(self) -> Checkpoint | None:
        """The checkpoint this attempt resumes from (computed once, see the Protocol)."""
        if self._resume is None:
            self._resume = (load_resume_point(self.checkpoint, self.attempt, self.task_id),)
        return self._resume[0]

    @property
    def task_id(self) -> str:
        """``"role:index"``."""
        return f"{self.role}:{self.index}"

    @property
    def is_chief(self) -> bool:
        """The chief, or ``worker:0`` when there is no chief."""
        if self.role == "chief":
            return True
        return self.task_id == "worker:0" and not any(t.startswith("chief") for t in self.peers)

    def report(self, **metrics: Any) -> None:
        """Record progress metrics (the launcher sends them to the driver instead)."""
        self.reports.append(metrics)

    def strategy(self) -> ExchangeStrategy:
        """The exchange strategy of this job (:func:`tfyarn.exchange.for_context`)."""
        if self._strategy is None:
            from tfyarn.exchange import for_context

            self._strategy = for_context(self)
        return self._strategy

    def close(self) -> None:
        """Release what the strategy holds (goodbye to the ps, connections); idempotent."""
        strategy, self._strategy = self._strategy, None
        if strategy is not None:
            strategy.close()


def _play(ctx: LocalContext, fn: Callable[[LocalContext], object]) -> object:
    """Run one role: serve the ps shards, or ``fn(ctx)`` for a trainer.

    The caller closes ``ctx`` afterwards, once it has reported the outcome: the goodbye
    to the ps and the closed connections make the other roles finish, or fail.
    """
    if ctx.role == "ps":
        from tfyarn.exchange import serve_ps

        serve_ps(ctx)
        return None
    return fn(ctx)


def _roles(workers: int, ps: int, chief: bool) -> list[tuple[str, int]]:
    """``(role, index)`` of every role of a local job, trainers first."""
    if workers < 1 and not chief:
        raise ConfigError("a local job needs at least one training role (workers >= 1 or chief)")
    roles = [("chief", 0)] if chief else []
    return roles + [("worker", i) for i in range(workers)] + [("ps", i) for i in range(ps)]


#: Task id -> (process, parent end of its pipe).
_Procs = dict[str, tuple[mp.process.BaseProcess, Connection]]


@dataclass(frozen=True)
class _Launch:
    """What one role's process is started with (pickled to the child)."""

    role: str
    index: int
    secret: bytes
    transport: str
    strategy: str | None
    options: dict[str, Any]
    env: dict[str, str]
    payload: bytes  # fn, by cloudpickle
    attempt: int = 1
    checkpoint: CheckpointPolicy | None = None
    host: str = "127.0.0.1"


def _child(conn: Connection, launch: _Launch) -> None:
    os.environ.update(launch.env)
    listener = None
    ctx: LocalContext | None = None
    try:
        import cloudpickle

        from tfyarn import transport as tr

        fn = cloudpickle.loads(launch.payload)
        listener = tr.listen(f"{launch.transport}://{launch.host}:0", secret=launch.secret)
        conn.send(("addr", listener.address))
        peers = conn.recv()
        ctx = LocalContext(
            launch.role, launch.index, launch.secret, launch.transport, listener, peers,
            launch.strategy, launch.options, attempt=launch.attempt,
            checkpoint=launch.checkpoint,
        )  # fmt: skip
        conn.send(("ok", _play(ctx, fn)))
    except BaseException:
        with contextlib.suppress(Exception):
            conn.send(("err", traceback.format_exc()))
    finally:
        if ctx is not None:
            with contextlib.suppress(Exception):
                ctx.close()
        if listener is not None:
            with contextlib.suppress(Exception):
                listener.close()
        conn.close()


def run_local(
    fn: Callable[[LocalContext], object],
    *,
    workers: int,
    ps: int = 0,
    chief: bool = False,
    strategy: str | None = None,
    strategy_options: Mapping[str, Any] | None = None,
    transport: str = "tcp",
    env: Mapping[str, str] | None = None,
    timeout: float = 300.0,
    threads: bool = False,
    attempt: int = 1,
    checkpoint: CheckpointPolicy | None = None,
    hosts: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """Run ``fn(ctx)`` in one process per training role (and serve ps shards).

    With ``threads=True`` every role is a thread of this process instead. The roles
    still talk through real listeners on 127.0.0.1, so the ring, the mesh and the
    parameter servers run exactly as between processes; only the process boundary is
    missing. Quick enough for unit tests and debugging.

    Parameters
    ----------
    fn : callable
        ``fn(ctx) -> result`` run by the chief and every worker; pickled with cloudpickle
        (unless ``threads``).
    workers, ps : int
        Number of worker and parameter-server processes.
    chief : bool
        Whether to add a chief (rank 0 of the training roles).
    strategy : str, optional
        Exchange strategy name (see :data:`tfyarn.exchange.STRATEGY_NAMES`).
    strategy_options : mapping, optional
        Options of the strategy.
    transport : str
        Transport scheme of the listeners (``"tcp"``, ``"grpc"``, ``"ucx"``).
    env : mapping, optional
        Environment variables set in every child before anything is imported (not with
        ``threads``: the threads share this process's environment).
    timeout : float
        Seconds for the whole job; then every process is killed (threads cannot be
        killed: their connections are closed, which makes them fail).
    threads : bool
        Run the roles as threads of this process.
    attempt : int
        The attempt every role is told it is (``ctx.attempt``): run attempt 1, then 2
        with the same ``checkpoint`` to play a restart.
    checkpoint : CheckpointPolicy, optional
        The job's checkpoints (``ctx.checkpoint``); every role reads its resume point
        from there.
    hosts : mapping of str to str, optional
        Task id -> loopback address its listener opens on (default ``127.0.0.1``):
        roles on different addresses of ``127.0.0.0/8`` look like roles on different
        hosts to the exchange (e.g. to plan a hierarchical all-reduce).

    Returns
    -------
    dict
        Task id -> ``fn``'s result for every training role.

    Raises
    ------
    RoleFailedError
        The first role that failed (with its traceback); the others are stopped.
    TFYarnError
        The job did not finish within ``timeout``.
    ConfigError
        No training role, ``env`` with ``threads``, or an attempt below 1.
    """
    import cloudpickle

    roles = _roles(workers, ps, chief)
    where = _hosts(roles, hosts)
    if attempt < 1:
        raise ConfigError(f"run_local(attempt={attempt}): attempts count from 1")
    if threads:
        if env:
            raise ConfigError(
                "run_local(threads=True) runs every role in this process: set the "
                "environment before calling it instead of passing env"
            )
        job = _ThreadJob(strategy, dict(strategy_options or {}), transport, attempt, checkpoint)
        return _run_threads(fn, roles, job, timeout, where)
    secret = secrets.token_bytes(32)
    common = (strategy, dict(strategy_options or {}), dict(env or {}), cloudpickle.dumps(fn),
              attempt, checkpoint)  # fmt: skip
    procs: _Procs = {}
    deadline = time.monotonic() + timeout
    try:
        for role, index in roles:
            task = f"{role}:{index}"
            procs[task] = _spawn(_Launch(role, index, secret, transport, *common, where[task]))
        peers: dict[str, str] = {}
        for task in procs:
            msg = _next(task, procs, deadline)
            if msg[0] != "addr":
                raise RoleFailedError(
                    task, "127.0.0.1", str(msg[1]), f"role {task} failed to start"
                )
            peers[task] = msg[1]
        for _proc, conn in procs.values():
            conn.send(peers)
        return _results(procs, deadline, timeout)
    finally:
        _stop_all(procs)


def _hosts(roles: list[tuple[str, int]], hosts: Mapping[str, str] | None) -> dict[str, str]:
    """Task id -> listening address of every role (see :func:`run_local`'s ``hosts``)."""
    tasks = [f"{r}:{i}" for r, i in roles]
    unknown = set(hosts or {}) - set(tasks)
    if unknown:
        raise ConfigError(f"run_local(hosts=...) names roles the job lacks: {sorted(unknown)}")
    return {t: (hosts or {}).get(t, "127.0.0.1") for t in tasks}


def _spawn(launch: _Launch) -> tuple[mp.process.BaseProcess, Connection]:
    """Start one role's process (spawned: no state inherited from the caller)."""
    mpctx = mp.get_context("spawn")
    parent, child = mpctx.Pipe()
    proc = mpctx.Process(
        target=_child,
        args=(child, launch),
        name=f"tfyarn-{launch.role}-{launch.index}",
        daemon=True,
    )
    proc.start()
    child.close()
    return proc, parent


def _results(procs: _Procs, deadline: float, timeout: float) -> dict[str, Any]:
    """Every training role's result, as they finish; the first failure is raised."""
    results: dict[str, Any] = {}
    pending = set(procs)
    while pending:
        ready = wait(
            [procs[t][1] for t in pending] + [procs[t][0].sentinel for t in pending],
            timeout=max(0.0, deadline - time.monotonic()),
        )
        if not ready:
            raise TFYarnError(
                f"local exchange job timed out after {timeout:.0f}s "
                f"waiting for {', '.join(sorted(pending))}"
            )
        for task in sorted(pending):
            proc, conn = procs[task]
            if conn in ready or proc.sentinel in ready:
                msg = _next(task, procs, deadline)
                if msg[0] == "err":
                    raise RoleFailedError(task, "127.0.0.1", msg[1])
                if not task.startswith("ps"):
                    results[task] = msg[1]
                pending.discard(task)
    return results


def _next(task: str, procs: _Procs, deadline: float) -> tuple[str, Any]:
    p, conn = procs[task]
    left = max(0.0, deadline - time.monotonic())
    if not conn.poll(left):
        raise TFYarnError(f"role {task} did not answer in time")
    try:
        return conn.recv()
    except EOFError:
        p.join(5)
        raise RoleFailedError(
            task, "127.0.0.1", f"process exited with code {p.exitcode} without a result"
        ) from None


def _stop_all(procs: _Procs) -> None:
    # a role blocked on a dead peer gets a transport error and exits by itself; give it
    # a moment, then make sure nothing outlives the job
    grace = time.monotonic() + 20
    for proc, _conn in procs.values():
        proc.join(max(0.0, grace - time.monotonic()))
    for proc, conn in procs.values():
        if proc.is_alive():
            proc.terminate()
            proc.join(5)
        if proc.is_alive():
            proc.kill()
            proc.join(5)
        conn.close()


@dataclass(frozen=True)
class _ThreadJob:
    """What every role of a threaded local job shares."""

    strategy: str | None
    options: dict[str, Any]
    transport: str
    attempt: int
    checkpoint: CheckpointPolicy | None


def _run_threads(
    fn: Callable[[LocalContext], object],
    roles: list[tuple[str, int]],
    job: _ThreadJob,
    timeout: float,
    where: Mapping[str, str],
) -> dict[str, Any]:
    """:func:`run_local` with ``threads=True``: listeners here, one thread per role."""
    from tfyarn import transport as tr

    secret = secrets.token_bytes(32)
    listeners: list[Listener] = []
    try:
        for r, i in roles:
            listeners.append(tr.listen(f"{job.transport}://{where[f'{r}:{i}']}:0", secret=secret))
        peers = {f"{r}:{i}": lst.address for (r, i), lst in zip(roles, listeners, strict=True)}
        contexts = [
            LocalContext(
                r,
                i,
                secret,
                job.transport,
                lst,
                peers,
                job.strategy,
                dict(job.options),
                attempt=job.attempt,
                checkpoint=job.checkpoint,
            )
            for (r, i), lst in zip(roles, listeners, strict=True)
        ]
        return _join_threads(contexts, fn, timeout)
    finally:
        for lst in listeners:
            with contextlib.suppress(Exception):
                lst.close()


def _join_threads(
    contexts: list[LocalContext], fn: Callable[[LocalContext], object], timeout: float
) -> dict[str, Any]:
    """Run every context's role in a thread; the results, or the first failure."""
    results: dict[str, Any] = {}
    failures: list[tuple[str, str]] = []  # in the order they happened

    def body(ctx: LocalContext) -> None:
        try:
            result = _play(ctx, fn)
            if ctx.role != "ps":
                results[ctx.task_id] = result
        except BaseException:
            failures.append((ctx.task_id, traceback.format_exc()))
        finally:
            with contextlib.suppress(Exception):
                ctx.close()

    threads = [
        threading.Thread(target=body, args=(c,), name=f"tfyarn-{c.task_id}", daemon=True)
        for c in contexts
    ]
    for t in threads:
        t.start()
    deadline = time.monotonic() + timeout
    for t in threads:
        t.join(max(0.0, deadline - time.monotonic()))
    if failures:
        raise RoleFailedError(failures[0][0], "127.0.0.1", failures[0][1])
    late = [c.task_id for c, t in zip(contexts, threads, strict=True) if t.is_alive()]
    if late:
        raise TFYarnError(f"local threaded job timed out after {timeout:.0f}s in {late}")
    return results
