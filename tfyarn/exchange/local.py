"""Run an exchange job as N local processes, without Spark.

The launcher (``tfyarn.run``) hands each role a context with a listener, the peers'
addresses and the job secret. :func:`run_local` builds exactly those pieces for
processes on this machine (listeners on 127.0.0.1), which is how the exchange is
tested between real processes and how ``tfyarn bench exchange`` measures it.
"""

from __future__ import annotations

import contextlib
import multiprocessing as mp
import os
import secrets
import time
import traceback
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from multiprocessing.connection import Connection, wait
from typing import Any

from tfyarn.errors import ConfigError, RoleFailedError, TFYarnError
from tfyarn.transport.base import Listener

__all__ = ["LocalContext", "run_local"]


@dataclass
class LocalContext:
    """The part of the launcher's node context that the exchange uses.

    Attributes mirror ``tfyarn.node.context.NodeContext``: ``role``, ``index``,
    ``task_id``, ``is_chief``, ``secret``, ``transport``, ``listener``, ``peers``,
    ``strategy_name``, ``strategy_options``, ``model_dir``; :meth:`report` keeps the
    metrics in :attr:`reports`.
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
    reports: list[dict[str, Any]] = field(default_factory=list)
    _strategy: Any = None

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

    def strategy(self) -> Any:
        """The exchange strategy of this job (:func:`tfyarn.exchange.for_context`)."""
        if self._strategy is None:
            from tfyarn.exchange import for_context

            self._strategy = for_context(self)
        return self._strategy


def _child(
    conn: Connection,
    role: str,
    index: int,
    secret: bytes,
    transport: str,
    strategy: str | None,
    options: dict[str, Any],
    env: dict[str, str],
    payload: bytes,
) -> None:
    os.environ.update(env)
    listener = None
    ctx: LocalContext | None = None
    try:
        import cloudpickle

        from tfyarn import transport as tr

        fn = cloudpickle.loads(payload)
        listener = tr.listen(f"{transport}://127.0.0.1:0", secret=secret)
        conn.send(("addr", listener.address))
        peers = conn.recv()
        ctx = LocalContext(role, index, secret, transport, listener, peers, strategy, options)
        if role == "ps":
            from tfyarn.exchange import serve_ps

            serve_ps(ctx)
            result = None
        else:
            result = fn(ctx)
        conn.send(("ok", result))
    except BaseException:
        with contextlib.suppress(Exception):
            conn.send(("err", traceback.format_exc()))
    finally:
        if ctx is not None and ctx._strategy is not None:
            with contextlib.suppress(Exception):
                ctx._strategy.close()
        if listener is not None:
            with contextlib.suppress(Exception):
                listener.close()
        conn.close()


def run_local(
    fn: Callable[[Any], Any],
    *,
    workers: int,
    ps: int = 0,
    chief: bool = False,
    strategy: str | None = None,
    strategy_options: Mapping[str, Any] | None = None,
    transport: str = "tcp",
    env: Mapping[str, str] | None = None,
    timeout: float = 300.0,
) -> dict[str, Any]:
    """Run ``fn(ctx)`` in one process per training role (and serve ps shards).

    Parameters
    ----------
    fn : callable
        ``fn(ctx) -> result`` run by the chief and every worker; pickled with cloudpickle.
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
        Environment variables set in every child before anything is imported.
    timeout : float
        Seconds for the whole job; then every process is killed.

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
    """
    import cloudpickle

    if workers < 1 and not chief:
        raise ConfigError("run_local needs at least one training role (workers >= 1 or chief)")
    roles = [("chief", 0)] if chief else []
    roles += [("worker", i) for i in range(workers)] + [("ps", i) for i in range(ps)]
    secret = secrets.token_bytes(32)
    payload = cloudpickle.dumps(fn)
    mpctx = mp.get_context("spawn")
    procs: dict[str, tuple[mp.process.BaseProcess, Connection]] = {}
    deadline = time.monotonic() + timeout
    results: dict[str, Any] = {}
    try:
        for role, index in roles:
            parent, child = mpctx.Pipe()
            p = mpctx.Process(
                target=_child,
                args=(
                    child,
                    role,
                    index,
                    secret,
                    transport,
                    strategy,
                    dict(strategy_options or {}),
                    dict(env or {}),
                    payload,
                ),
                name=f"tfyarn-{role}-{index}",
                daemon=True,
            )
            p.start()
            child.close()
            procs[f"{role}:{index}"] = (p, parent)
        peers: dict[str, str] = {}
        for task in procs:
            msg = _next(task, procs, deadline)
            if msg[0] != "addr":
                raise RoleFailedError(
                    task, "127.0.0.1", str(msg[1]), f"role {task} failed to start"
                )
            peers[task] = msg[1]
        for _p, conn in procs.values():
            conn.send(peers)
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
                p, conn = procs[task]
                if conn in ready or p.sentinel in ready:
                    msg = _next(task, procs, deadline)
                    if msg[0] == "err":
                        raise RoleFailedError(task, "127.0.0.1", msg[1])
                    if not task.startswith("ps"):
                        results[task] = msg[1]
                    pending.discard(task)
        return results
    finally:
        _stop_all(procs)


def _next(
    task: str, procs: dict[str, tuple[mp.process.BaseProcess, Connection]], deadline: float
) -> tuple[str, Any]:
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


def _stop_all(procs: dict[str, tuple[mp.process.BaseProcess, Connection]]) -> None:
    # a role blocked on a dead peer gets a transport error and exits by itself; give it
    # a moment, then make sure nothing outlives the job
    grace = time.monotonic() + 20
    for p, _conn in procs.values():
        p.join(max(0.0, grace - time.monotonic()))
    for p, conn in procs.values():
        if p.is_alive():
            p.terminate()
            p.join(5)
        if p.is_alive():
            p.kill()
            p.join(5)
        conn.close()
