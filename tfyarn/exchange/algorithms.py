"""The distributed training algorithms, as hooks around a local training loop.

Each algorithm says what happens to gradients inside the optimizer step
(:attr:`Algorithm.gradient_mode`) and what happens at the start, after every step, at
every epoch end and at the end of training. The same hooks serve Keras ``model.fit``
(through :mod:`tfyarn.exchange.keras` callbacks) and custom ``tf.GradientTape`` loops
(through :class:`~tfyarn.exchange.strategy.ExchangeStrategy`'s ``begin``/``step_end``/
``end``).

=================  ===============  ==================================================
name               gradients        synchronisation
=================  ===============  ==================================================
allreduce          ring-averaged    initial weights broadcast from rank 0
sync_ps            pushed to ps     ps averages all trainers, updates, all pull
downpour           pushed to ps     ps applies each push at once (Dean et al. 2012)
easgd              local            every ``tau`` steps elastic move towards the ps
                                    center (Zhang, Choromanska & LeCun 2015)
model_averaging    local            weights averaged every ``every`` steps or epoch
adag               local            every ``window`` steps the normalised accumulated
                                    update goes to the ps center (Hermans 2017)
=================  ===============  ==================================================
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import numpy as np

from tfyarn.errors import ConfigError
from tfyarn.exchange import tensors
from tfyarn.exchange.collectives import (
    Collectives,
    allreduce_arrays,
    average_variables,
    broadcast_variables,
    fused,
)
from tfyarn.exchange.compression import TOPK, wire_dtype
from tfyarn.exchange.fusion import check_cycle_time
from tfyarn.exchange.hierarchy import check_mode
from tfyarn.exchange.ps import OptimizerConfig, PSClient
from tfyarn.exchange.ps_access import ParameterServers
from tfyarn.exchange.tensors import Variable
from tfyarn.exchange.topk import DEFAULT_DENSITY, TopK

__all__ = [
    "ALGORITHMS",
    "SERVICE_STRATEGIES",
    "Algorithm",
    "make_algorithm",
    "option_problems",
    "period_crossed",
]

#: Options every strategy accepts (see :func:`make_algorithm`).
COMMON_OPTIONS: dict[str, Any] = {
    "timeout": 180.0,
    "chunk_bytes": 1 << 20,
    "bucket_bytes": 4 << 20,
    # shared memory inside a host, a ring across hosts (tfyarn.exchange.hierarchy)
    "hierarchical": "auto",
}


def period_crossed(total: int, last: int, period: int) -> bool:
    """Whether going from ``total - last`` to ``total`` steps crossed a multiple of ``period``.

    With ``last == 1`` this is ``total % period == 0``; with Keras'
    ``steps_per_execution > 1`` the callbacks see several steps at once.
    """
    return total // period > (total - last) // period


def _no_ps(name: str) -> ConfigError:
    return ConfigError(f"strategy {name!r} keeps its state on parameter servers: run with ps >= 1")


class Algorithm:
    """Base: no gradient exchange, initial weights broadcast from rank 0.

    Parameters
    ----------
    collectives : Collectives
        The training ranks (rank, size, all-reduce, broadcast).
    options : mapping
        This algorithm's own options (:attr:`OPTIONS`, defaults filled in).
    servers : ParameterServers, optional
        The parameter servers, for the algorithms that use them (:attr:`uses_ps`).
    """

    name: ClassVar[str] = ""
    #: ``"reduce"``: the optimizer applies ring-averaged gradients; ``"replace"``: gradients
    #: go to the ps and the variables take the values it returns; None: local optimizer.
    gradient_mode: ClassVar[str | None] = None
    uses_ps: ClassVar[bool] = False
    #: Whether :meth:`step_end` does more than count (EASGD, ADAG, averaging every k).
    has_step_schedule: bool = False
    #: Seconds of the fusion cycle of a ``"reduce"`` exchange; None: buckets planned by size.
    cycle_time: float | None = None
    #: Options with defaults; ``None`` defaults are filled in by :meth:`__init__`.
    OPTIONS: ClassVar[dict[str, Any]] = {}

    def __init__(
        self,
        collectives: Collectives,
        options: Mapping[str, Any],
        servers: ParameterServers | None = None,
    ) -> None:
        self.collectives = collectives
        self.servers = servers
        self.options = dict(options)
        self.steps = 0
        self._last_steps = 0
        self.client: PSClient | None = None
        self.optimizer_config: OptimizerConfig | None = None
        self._setup()

    def _setup(self) -> None:
        """Check the options, set up per-algorithm state (a hook for subclasses)."""

    # -- helpers -----------------------------------------------------------------------
    def _client(self, trainable: Sequence[Variable]) -> PSClient:
        if self.client is None:
            if self.servers is None:
                raise _no_ps(self.name)
            self.client = self.servers.open_client(tensors.specs(trainable))
        return self.client

    def _init_center(self, trainable: Sequence[Variable]) -> None:
        """Rank 0 stores the weights on the ps; everyone then starts from them."""
        client = self._client(trainable)
        if self.collectives.rank == 0:
            client.init(tensors.read(trainable), self.optimizer_config)
        tensors.assign(trainable, client.pull())

    # -- hooks -------------------------------------------------------------------------
    def begin(
        self, weights: Sequence[Variable], trainable: Sequence[Variable], extra: Sequence[Variable]
    ) -> None:
        """Before the first step: make every trainer start from rank 0's state."""
        broadcast_variables(self.collectives, [*weights, *extra])

    def step_end(
        self, weights: Sequence[Variable], trainable: Sequence[Variable], steps: int = 1
    ) -> None:
        """After every optimizer step (or every ``steps`` steps, for ``steps_per_execution``)."""
        self.steps += steps
        self._last_steps = steps

    def _due(self, period: int) -> bool:
        """Whether the last :meth:`step_end` crossed a multiple of ``period`` steps."""
        return period_crossed(self.steps, self._last_steps, period)

    def epoch_end(self, weights: Sequence[Variable], trainable: Sequence[Variable]) -> None:
        """After every epoch (``model.fit`` only, or when a loop calls it)."""

    def end(self, weights: Sequence[Variable], trainable: Sequence[Variable]) -> None:
        """After the last step: leave the final model in the variables."""

    def exchange_gradients(self, grads: Sequence[np.ndarray], bucket: int = 0) -> list[np.ndarray]:
        """Gradient hook of the distributed optimizer (for ``gradient_mode`` algorithms).

        ``bucket``: which of a step's exchanges this is (the same every step), for state
        kept per buffer across steps (top-k's residuals).
        """
        raise NotImplementedError(f"{self.name} does not exchange gradients")

    def _goodbye(self) -> None:
        """End this training run on the parameter servers (a later run reconnects)."""
        if self.client is not None:
            self.client.close()
            self.client = None

    def close(self) -> None:
        """Say goodbye to the parameter servers."""
        self._goodbye()


class AllReduce(Algorithm):
    """Synchronous data-parallel SGD: gradients averaged by ring all-reduce every step."""

    name = "allreduce"
    gradient_mode = "reduce"
    #: ``compression``: ``"none"``; ``"fp16"`` / ``"bf16"`` for float32 gradients that
    #: travel as a half type (:mod:`tfyarn.exchange.compression`); ``"topk"``: each rank
    #: sends the ``density`` share of largest magnitude, the rest kept for later steps
    #: (:mod:`tfyarn.exchange.topk`).
    #: ``cycle_time_ms``: fuse the gradients that are ready within that time (up to
    #: ``bucket_bytes``) instead of buckets planned by size (:mod:`tfyarn.exchange.fusion`).
    OPTIONS: ClassVar[dict[str, Any]] = {
        "compression": "none",
        "density": DEFAULT_DENSITY,
        "cycle_time_ms": None,
    }

    def _setup(self) -> None:
        """Check ``compression`` (and ``density`` for top-k) and ``cycle_time_ms``."""
        self.wire = wire_dtype(self.options["compression"])
        sparse = self.options["compression"] == TOPK
        self.topk = TopK(self.options["density"]) if sparse else None
        #: Seconds of the fusion cycle; None: buckets planned by size.
        self.cycle_time = check_cycle_time(self.options["cycle_time_ms"])
        if sparse and self.cycle_time is not None:
            raise ConfigError(
                f"compression={TOPK!r} keeps a residual per planned bucket: it cannot take "
                "cycle_time_ms (groups that change from step to step); drop one of them"
            )

    def exchange_gradients(self, grads: Sequence[np.ndarray], bucket: int = 0) -> list[np.ndarray]:
        """Average ``grads`` over all trainers; fused into one flat buffer per dtype."""
        topk = self.topk
        if topk is None:
            return allreduce_arrays(self.collectives, grads, average=True, wire=self.wire)

        def reduce(flat: np.ndarray) -> object:
            if flat.dtype == np.float32:  # top-k's residual: one per bucket and dtype
                return topk.allreduce_(self.collectives, flat, (bucket, flat.dtype.name), True)
            return self.collectives.allreduce_(flat, average=True)

        return fused(grads, reduce)


class _PSGradients(Algorithm):
    gradient_mode = "replace"
    uses_ps = True

    def begin(
        self, weights: Sequence[Variable], trainable: Sequence[Variable], extra: Sequence[Variable]
    ) -> None:
        """Rank 0 seeds the ps with its weights and the optimizer; all pull them."""
        if self.optimizer_config is None:
            raise ConfigError(
                f"strategy {self.name!r} runs the optimizer on the parameter servers: wrap it "
                "with strategy.distributed_optimizer(optimizer) before training"
            )
        self._init_center(trainable)
        others = [v for v in weights if not any(v is t for t in trainable)]
        broadcast_variables(self.collectives, others)

    def exchange_gradients(self, grads: Sequence[np.ndarray], bucket: int = 0) -> list[np.ndarray]:
        """Push the gradients, return the updated weights."""
        if self.client is None:
            raise ConfigError(
                f"strategy {self.name!r}: call strategy.begin(model) (or use "
                "strategy.callbacks() with model.fit) before the first step"
            )
        return self.client.push_gradients(grads)

    def end(self, weights: Sequence[Variable], trainable: Sequence[Variable]) -> None:
        """Every trainer ends with the servers' latest weights."""
        if self.client is not None:
            tensors.assign(trainable, self.client.pull())
        self._goodbye()


class SyncPS(_PSGradients):
    """Synchronous parameter servers: aggregate every trainer's gradient, then update."""

    name = "sync_ps"


class Downpour(_PSGradients):
    """DOWNPOUR: asynchronous parameter servers, each gradient applied on arrival."""

    name = "downpour"


class EASGD(Algorithm):
    """Asynchronous elastic averaging SGD with the center variable on the ps.

    Every ``tau`` local steps: ``d = alpha (x - center)``; ``x -= d``; ``center += d``
    (one atomic exchange per bucket on the ps). ``alpha`` defaults to ``0.9 / trainers``
    (the paper's ``beta = 0.9``). The final model is the center.
    """

    name = "easgd"
    uses_ps = True
    has_step_schedule = True
    OPTIONS: ClassVar[dict[str, Any]] = {"tau": 4, "alpha": None}

    def begin(
        self, weights: Sequence[Variable], trainable: Sequence[Variable], extra: Sequence[Variable]
    ) -> None:
        """Everyone starts from the center (rank 0's weights)."""
        self._init_center(trainable)

    def step_end(
        self, weights: Sequence[Variable], trainable: Sequence[Variable], steps: int = 1
    ) -> None:
        """The elastic move every ``tau`` steps."""
        super().step_end(weights, trainable, steps)
        if self._due(int(self.options["tau"])):
            alpha = self.options["alpha"] or 0.9 / self.collectives.size
            x = tensors.read(trainable)
            d = self._client(trainable).elastic(x, alpha)
            tensors.assign(trainable, [a - b for a, b in zip(x, d, strict=True)])

    def end(self, weights: Sequence[Variable], trainable: Sequence[Variable]) -> None:
        """The final model is the center variable."""
        tensors.assign(trainable, self._client(trainable).pull())
        self._goodbye()


class ModelAveraging(Algorithm):
    """Local SGD with the weights averaged every ``every`` steps (or each ``"epoch"``)."""

    name = "model_averaging"
    OPTIONS: ClassVar[dict[str, Any]] = {"every": "epoch"}

    def _setup(self) -> None:
        """Check ``every``; only averaging every k steps has a step schedule."""
        every = self.options["every"]
        if every != "epoch" and not (isinstance(every, int) and every >= 1):
            raise ConfigError(
                f"model_averaging: every must be a positive int or 'epoch', not {every!r}"
            )
        self._since = 0
        self.has_step_schedule = every != "epoch"

    def step_end(
        self, weights: Sequence[Variable], trainable: Sequence[Variable], steps: int = 1
    ) -> None:
        """Average every ``every`` steps."""
        super().step_end(weights, trainable, steps)
        self._since += steps
        if self.options["every"] != "epoch" and self._due(self.options["every"]):
            average_variables(self.collectives, weights)
            self._since = 0

    def epoch_end(self, weights: Sequence[Variable], trainable: Sequence[Variable]) -> None:
        """Average once per epoch."""
        if self.options["every"] == "epoch":
            average_variables(self.collectives, weights)
            self._since = 0

    def end(self, weights: Sequence[Variable], trainable: Sequence[Variable]) -> None:
        """Leave every trainer with the same (averaged) model."""
        if self._since:
            average_variables(self.collectives, weights)
            self._since = 0


class ADAG(Algorithm):
    """Accumulated gradient normalisation (ADAG) with the center on the ps.

    Every ``window`` local steps a trainer commits ``(x - x_start) / window`` to the
    center and restarts from the new center.
    """

    name = "adag"
    uses_ps = True
    has_step_schedule = True
    OPTIONS: ClassVar[dict[str, Any]] = {"window": 8}

    def begin(
        self, weights: Sequence[Variable], trainable: Sequence[Variable], extra: Sequence[Variable]
    ) -> None:
        """Everyone starts from the center (rank 0's weights)."""
        self._init_center(trainable)
        self._anchor = tensors.read(trainable)
        self._local = 0

    def step_end(
        self, weights: Sequence[Variable], trainable: Sequence[Variable], steps: int = 1
    ) -> None:
        """Commit the normalised accumulated update every ``window`` steps."""
        super().step_end(weights, trainable, steps)
        self._local += steps
        if self._due(int(self.options["window"])):
            # normalised by the local steps actually taken since the last commit
            x = tensors.read(trainable)
            delta = [(a - b) / self._local for a, b in zip(x, self._anchor, strict=True)]
            self._local = 0
            center = self._client(trainable).add(delta)
            tensors.assign(trainable, center)
            self._anchor = center

    def end(self, weights: Sequence[Variable], trainable: Sequence[Variable]) -> None:
        """The final model is the center."""
        tensors.assign(trainable, self._client(trainable).pull())
        self._goodbye()


#: Algorithm classes by strategy name, in documentation order.
ALGORITHMS: dict[str, type[Algorithm]] = {
    a.name: a for a in (AllReduce, SyncPS, Downpour, EASGD, ModelAveraging, ADAG)
}

#: Strategies that can attach to a long-lived service's parameter servers: those that
#: keep state on a ps and never wait for a fixed set of trainers (not sync_ps).
SERVICE_STRATEGIES: tuple[str, ...] = tuple(
    n for n, a in ALGORITHMS.items() if a.uses_ps and a is not SyncPS
)


def option_problems(name: str, options: Mapping[str, Any]) -> list[str]:
    """What is wrong with strategy ``name``'s ``options`` (empty when nothing is).

    Checked by the driver before any Spark job, and again where the algorithm is built.
    """
    if name not in ALGORITHMS:
        return [f"unknown exchange strategy {name!r}; use one of {', '.join(ALGORITHMS)}"]
    cls = ALGORITHMS[name]
    unknown = set(options) - set(cls.OPTIONS) - set(COMMON_OPTIONS)
    if unknown:
        allowed = sorted(set(cls.OPTIONS) | set(COMMON_OPTIONS))
        return [f"unknown option(s) {sorted(unknown)} for strategy {name!r}; allowed: {allowed}"]
    try:
        if "hierarchical" in options:
            check_mode(options["hierarchical"])
        if "compression" in options:
            wire_dtype(options["compression"])
        if "cycle_time_ms" in options:
            check_cycle_time(options["cycle_time_ms"])
            if options.get("compression") == TOPK and options["cycle_time_ms"] is not None:
                return [f"strategy {name!r}: compression={TOPK!r} cannot take cycle_time_ms"]
        if "density" in options:
            if options.get("compression") != TOPK:
                return [f"strategy {name!r}: density applies to compression={TOPK!r} only"]
            TopK(options["density"])
    except ConfigError as exc:
        return [f"strategy {name!r}: {exc}"]
    return []


def make_algorithm(
    name: str,
    options: Mapping[str, Any],
    collectives: Collectives,
    servers: ParameterServers | None = None,
) -> Algorithm:
    """Build the algorithm ``name`` with its own options (common ones removed).

    Parameters
    ----------
    name : str
        One of :data:`ALGORITHMS`.
    options : mapping
        The strategy options; those of :data:`COMMON_OPTIONS` are the strategy's and
        are ignored here.
    collectives : Collectives
        The training ranks.
    servers : ParameterServers, optional
        The parameter servers (a job's ps roles or a service's); None without any.

    Raises
    ------
    ConfigError
        Unknown algorithm or option, a ps algorithm without parameter servers, or a
        service's parameter servers under a strategy that cannot use them.
    """
    problems = option_problems(name, options)
    if problems:
        raise ConfigError("; ".join(problems))
    cls = ALGORITHMS[name]
    own = {k: v for k, v in options.items() if k not in COMMON_OPTIONS}
    if cls.uses_ps and servers is None:
        raise _no_ps(name)
    if servers is not None and servers.service is not None and name not in SERVICE_STRATEGIES:
        raise ConfigError(
            f"strategy {name!r} cannot use the parameter servers of service "
            f"{servers.service}: attach with an asynchronous ps strategy "
            "(downpour, easgd or adag)"
        )
    return cls(collectives, {**cls.OPTIONS, **own}, servers)
