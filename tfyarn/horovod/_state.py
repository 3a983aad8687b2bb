"""The per-process Horovod state: which tfyarn role ``init()`` found, and its topology.

One rank per process: :func:`init` attaches to the process's tfyarn role (or to the one
:func:`bind_context` binds, as ``tfyarn.horovod.spark.run`` does) and
:func:`require_state` hands its strategy and :class:`~tfyarn.horovod._topology.Topology`
to the collectives; ``size``, ``rank``, ``local_rank``, ... read that topology.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from tfyarn.errors import ConfigError
from tfyarn.horovod._checks import LAUNCH_HINT, check_unsupported
from tfyarn.horovod._topology import Topology, topology

if TYPE_CHECKING:
    from tfyarn.exchange.strategy import ExchangeStrategy

__all__ = [
    "bind_context",
    "cross_rank",
    "cross_size",
    "hosts_of",
    "init",
    "is_initialized",
    "local_rank",
    "local_size",
    "rank",
    "require_state",
    "shutdown",
    "size",
]


class _State:
    """The role ``init()`` found: at most one per process (one rank per process)."""

    def __init__(self) -> None:
        # set by tfyarn.horovod.spark.run's train_fn: a NodeContext, or any exchange
        # context (run_local's LocalContext)
        self.bound: Any = None
        self.ctx: Any = None
        self.strategy: ExchangeStrategy | None = None
        self.topology: Topology | None = None


_STATE = _State()


@contextlib.contextmanager
def bind_context(ctx: Any) -> Iterator[None]:
    """Make ``ctx`` the role ``init()`` finds while the block runs (``spark.run`` uses it)."""
    _STATE.bound = ctx
    try:
        yield
    finally:
        _STATE.bound = None
        shutdown()


def _find_context() -> Any:
    if _STATE.bound is not None:
        return _STATE.bound
    from tfyarn.node.context import current_context

    ctx = current_context()
    if ctx is None:
        raise ConfigError(f"hvd.init() found no tfyarn training role: {LAUNCH_HINT}")
    return ctx


def hosts_of(ctx: Any, members: Sequence[str]) -> list[str]:
    """The host of each training role, in rank order.

    A context without member records (``tfyarn.exchange.local.run_local``'s) runs every
    role on this machine.
    """
    records = getattr(ctx, "members", None)
    if not isinstance(records, Mapping):
        return ["localhost"] * len(members)
    return [records[task].host for task in members]


def init(comm: Any = None, process_sets: Any = None) -> None:
    """``hvd.init()``: attach to this process's tfyarn role (a no-op when attached).

    Raises
    ------
    ConfigError
        Outside a tfyarn role, under a strategy other than ``"allreduce"``, in a role
        that does not train, or with ``comm``/``process_sets``.
    """
    check_unsupported("hvd.init", comm=comm, process_sets=process_sets)
    if _STATE.strategy is not None:
        return
    ctx = _find_context()
    if ctx.strategy_name != "allreduce":
        raise ConfigError(
            f"hvd.init() needs a job run with strategy='allreduce', not "
            f"{ctx.strategy_name!r}: {LAUNCH_HINT}"
        )
    strategy = ctx.strategy()
    _STATE.ctx, _STATE.strategy = ctx, strategy
    _STATE.topology = topology(hosts_of(ctx, strategy.members), strategy.rank)


def is_initialized() -> bool:
    """Whether :func:`init` ran (and :func:`shutdown` did not since)."""
    return _STATE.strategy is not None


def shutdown() -> None:
    """Detach; the connections stay with the role, which closes them when it ends."""
    _STATE.ctx = _STATE.strategy = _STATE.topology = None


def require_state() -> tuple[ExchangeStrategy, Topology]:
    """The strategy and topology :func:`init` found.

    Raises
    ------
    ConfigError
        :func:`init` was not called.
    """
    if _STATE.strategy is None or _STATE.topology is None:
        raise ConfigError("Horovod has not been initialized: call hvd.init() first")
    return _STATE.strategy, _STATE.topology


def size() -> int:
    """Number of ranks (training roles)."""
    return require_state()[1].size


def rank() -> int:
    """This process's rank (worker index: ``tfyarn.horovod.spark.run`` runs no chief)."""
    return require_state()[1].rank


def local_rank() -> int:
    """Rank among the ranks on this host."""
    return require_state()[1].local_rank


def local_size() -> int:
    """Number of ranks on this host."""
    return require_state()[1].local_size


def cross_rank() -> int:
    """Rank among the ranks with this ``local_rank`` (the host's index when homogeneous)."""
    return require_state()[1].cross_rank


def cross_size() -> int:
    """Number of ranks with this ``local_rank`` (the number of hosts when homogeneous)."""
    return require_state()[1].cross_size
