"""The object ``ctx.strategy()`` returns under an exchange strategy.

:class:`ExchangeStrategy` ties one role's mesh, ring and algorithm together and is the
user's handle: ``distributed_optimizer`` and ``callbacks`` for ``model.fit``;
``begin``/``step_end``/``end`` for a ``tf.GradientTape`` loop; ``allreduce``,
``broadcast`` and ``barrier`` for anything else.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from tfyarn.errors import ConfigError
from tfyarn.exchange import tensors
from tfyarn.exchange.algorithms import COMMON_OPTIONS, Algorithm, make_algorithm
from tfyarn.exchange.buckets import pack, plan_buckets, unpack
from tfyarn.exchange.mesh import Mesh, ps_tasks, training_tasks
from tfyarn.exchange.ring import Ring

__all__ = ["ExchangeStrategy", "for_context", "serve_ps"]


def _need(ctx: Any, *names: str) -> None:
    missing = [n for n in names if getattr(ctx, n, None) is None]
    if missing:
        raise ConfigError(
            f"the node context lacks {', '.join(missing)}: exchange strategies need a transport "
            "listener and the peers' addresses (tfyarn.run(..., strategy=NAME) provides them)"
        )


class ExchangeStrategy:
    """One training role's handle on the exchange.

    Parameters
    ----------
    ctx : object
        A node context (``tfyarn.node.context.NodeContext`` or
        :class:`~tfyarn.exchange.local.LocalContext`) of a chief or worker.
    name : str, optional
        Algorithm name; defaults to ``ctx.strategy_name``.
    options : mapping, optional
        Algorithm options; default ``ctx.strategy_options``.

    Attributes
    ----------
    rank, size : int
        Position among the training roles (chief first, then workers) and their number.
    """

    def __init__(
        self, ctx: Any, name: str | None = None, options: Mapping[str, Any] | None = None
    ) -> None:
        _need(ctx, "task_id", "listener", "peers", "secret")
        name = name or getattr(ctx, "strategy_name", None) or "allreduce"
        opts = dict(
            options if options is not None else (getattr(ctx, "strategy_options", None) or {})
        )
        self.name = name
        self.task_id: str = ctx.task_id
        self.members = training_tasks(ctx.peers)
        if self.task_id not in self.members:
            raise ConfigError(f"{self.task_id} is not a training role; only chief/workers train")
        self.rank = self.members.index(self.task_id)
        self.size = len(self.members)
        #: A long-lived service's parameter servers (``tfyarn.run(service=...)``), if any.
        self.service = opts.pop("service", None)
        self.ps = self.service.ps if self.service is not None else ps_tasks(ctx.peers)
        self.options = {**COMMON_OPTIONS, **{k: v for k, v in opts.items() if k in COMMON_OPTIONS}}
        self.mesh = Mesh(ctx.task_id, ctx.listener, ctx.peers, ctx.secret, self.options["timeout"])
        self._ring: Ring | None = None
        try:
            self.algorithm: Algorithm = make_algorithm(name, self, opts)
        except BaseException:
            self.mesh.close()
            raise

    # -- collectives -------------------------------------------------------------------
    @property
    def ring(self) -> Ring:
        """The ring of training roles, connected on first use (by every rank)."""
        if self._ring is None:
            self._ring = Ring.connect(self.mesh, self.members, self.options["chunk_bytes"])
        return self._ring

    def allreduce(self, value: Any, average: bool = True) -> np.ndarray:
        """Sum (or average) ``value`` (array-like, any shape) over all trainers; a new array."""
        a = np.array(value, copy=True)
        if a.dtype.kind not in "fi":
            raise ConfigError(f"allreduce needs a numeric array, got dtype {a.dtype}")
        flat = np.ascontiguousarray(a.reshape(-1))
        self.ring.allreduce_(flat, average=average and a.dtype.kind == "f")
        return flat.reshape(a.shape)

    def broadcast(self, value: Any, root: int = 0) -> np.ndarray:
        """Rank ``root``'s ``value`` on every rank (same shape and dtype everywhere)."""
        a = np.array(value, copy=True)
        flat = np.ascontiguousarray(a.reshape(-1))
        self.ring.broadcast_(flat, root)
        return flat.reshape(a.shape)

    def allreduce_tensors(self, tensors: Sequence[Any], average: bool = True) -> list[Any]:
        """All-reduce float TensorFlow tensors as graph ops (works inside ``tf.function``).

        See :func:`tfyarn.exchange.keras.allreduce_tensors`.
        """
        from tfyarn.exchange.keras import allreduce_tensors

        return allreduce_tensors(self, list(tensors), average=average)

    def barrier(self) -> None:
        """Wait until every trainer got here."""
        self.ring.barrier()

    def broadcast_variables(self, variables: Sequence[Any], root: int = 0) -> None:
        """Give every trainer rank ``root``'s values of ``variables`` (fused, one pass)."""
        if self.size == 1 or not variables:
            return
        values = tensors.read(variables)
        for b in plan_buckets(tensors.specs(variables), 1 << 62):
            flat = pack(b, values, np.empty(b.size, values[b.slots[0].tensor].dtype))
            self.ring.broadcast_(flat, root)
            unpack(b, flat, values)
        tensors.assign(variables, values)

    # -- Keras / training-loop integration ----------------------------------------------
    def distributed_optimizer(self, optimizer: Any) -> Any:
        """Make a Keras 3 optimizer exchange gradients as this strategy requires.

        See :func:`tfyarn.exchange.keras.distributed_optimizer`.
        """
        from tfyarn.exchange.keras import distributed_optimizer

        return distributed_optimizer(self, optimizer)

    def callbacks(self, average_metrics: bool = True) -> list[Any]:
        """Keras callbacks for ``model.fit``: initial state, schedules, metric averaging."""
        from tfyarn.exchange.keras import callbacks

        return callbacks(self, average_metrics=average_metrics)

    def begin(self, model: Any, optimizer: Any = None) -> None:
        """Before a custom loop's first step: synchronise the starting state."""
        opt = optimizer if optimizer is not None else getattr(model, "optimizer", None)
        extra = list(opt.variables) if opt is not None and getattr(opt, "built", False) else []
        self.algorithm.begin(list(model.weights), list(model.trainable_weights), extra)

    def step_end(self, model: Any, steps: int = 1) -> None:
        """After each optimizer step of a custom loop (or after ``steps`` of them)."""
        self.algorithm.step_end(list(model.weights), list(model.trainable_weights), steps)

    def epoch_end(self, model: Any) -> None:
        """After each epoch of a custom loop."""
        self.algorithm.epoch_end(list(model.weights), list(model.trainable_weights))

    def end(self, model: Any) -> None:
        """After a custom loop's last step: leave the final model in ``model``."""
        self.algorithm.end(list(model.weights), list(model.trainable_weights))

    def close(self) -> None:
        """Say goodbye to the parameter servers and close every connection; idempotent."""
        with contextlib.suppress(Exception):
            self.algorithm.close()
        if self._ring is not None:
            self._ring.close()
        self.mesh.close()


def for_context(ctx: Any) -> ExchangeStrategy:
    """The exchange strategy of a chief/worker context (``ctx.strategy()`` returns it)."""
    return ExchangeStrategy(ctx)


def serve_ps(ctx: Any) -> None:
    """Serve this parameter server's shards until every trainer said goodbye.

    Synchronous for ``sync_ps``, asynchronous otherwise (DOWNPOUR, and the center
    variable of EASGD/ADAG, which only sees ELASTIC/ADD requests).

    Raises
    ------
    TransportError
        A trainer disconnected without saying goodbye (it failed).
    """
    from tfyarn.exchange.ps import PSServer

    _need(ctx, "task_id", "listener", "peers", "secret")
    opts = dict(getattr(ctx, "strategy_options", None) or {})
    timeout = float(opts.get("timeout", COMMON_OPTIONS["timeout"]))
    mesh = Mesh(ctx.task_id, ctx.listener, ctx.peers, ctx.secret, timeout)
    try:
        sync = getattr(ctx, "strategy_name", None) == "sync_ps"
        PSServer(mesh, training_tasks(ctx.peers), synchronous=sync).serve()
    finally:
        mesh.close()
