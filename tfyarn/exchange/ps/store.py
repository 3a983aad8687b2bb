"""The buckets a parameter server holds: values, optimizer state, update counters.

A :class:`ShardStore` is what a ps serves: one :class:`Shard` per bucket index, created
by INIT according to an :class:`InitPolicy` (a job's ps stores what rank 0 sends; a
long-lived ps keeps what it holds, so a new job continues the model). Its state can be
taken out and put back as :class:`BucketState` (see :mod:`tfyarn.exchange.ps.snapshot`),
which is how a ps survives a restart. Nothing here knows about connections or the wire.
"""

from __future__ import annotations

import enum
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from tfyarn.errors import ConfigError, TransportError
from tfyarn.exchange import kernels
from tfyarn.exchange.ps.wire import OptimizerConfig

__all__ = ["BucketState", "InitOutcome", "InitPolicy", "Shard", "ShardStore"]


@dataclass(frozen=True)
class BucketState:
    """One bucket as saved: values, optimizer slots, counters and the optimizer.

    Parameters
    ----------
    values : ndarray
        The bucket's flat values.
    slots : sequence of ndarray
        The optimizer's slot arrays, each shaped and typed like ``values``.
    step : int
        Optimizer steps taken (Adam's bias correction needs it).
    updates : int
        Update requests applied (GRAD, ELASTIC, ADD), from every trainer.
    optimizer : OptimizerConfig
        The optimizer the ps runs on this bucket.

    Raises
    ------
    ConfigError
        Slots that do not match the values or the optimizer, or negative counters.
    """

    values: np.ndarray
    slots: Sequence[np.ndarray]
    step: int
    updates: int
    optimizer: OptimizerConfig

    def __post_init__(self) -> None:
        if len(self.slots) != self.optimizer.slots:
            raise ConfigError(
                f"optimizer {self.optimizer.name} keeps {self.optimizer.slots} slot(s) per "
                f"bucket, this state has {len(self.slots)}"
            )
        for s in self.slots:
            if s.shape != self.values.shape or s.dtype != self.values.dtype:
                raise ConfigError(
                    f"slot {s.shape} {s.dtype} does not match the values "
                    f"{self.values.shape} {self.values.dtype}"
                )
        if self.step < 0 or self.updates < 0:
            raise ConfigError(f"negative counters: step {self.step}, updates {self.updates}")


class Shard:
    """One bucket held by a ps: values, optimizer slots and counters, under one lock.

    Parameters
    ----------
    values : ndarray
        The flat values (kept, not copied: pass a native buffer).
    optimizer : OptimizerConfig
        The optimizer run by :meth:`apply`.
    slots : sequence of ndarray, optional
        The optimizer's slot arrays (kept, not copied); default its initial ones.
    """

    def __init__(
        self,
        values: np.ndarray,
        optimizer: OptimizerConfig,
        slots: Sequence[np.ndarray] | None = None,
    ) -> None:
        self.values = values
        self.optimizer = optimizer
        #: Guards everything here; a Condition so that callers may wait on the bucket.
        #: Re-entrant (the default RLock), so a caller holding it can call the methods.
        self.lock = threading.Condition()
        self.step = 0
        #: Updates applied (GRAD, ELASTIC, ADD); kept across snapshots.
        self.updates = 0
        if slots is None:
            fill = 0.0
            if optimizer.name == "adagrad":
                fill = optimizer.number("initial_accumulator_value")
            slots = [np.full(values.size, fill, values.dtype) for _ in range(optimizer.slots)]
        self.slots = list(slots)

    @classmethod
    def from_state(cls, state: BucketState) -> Shard:
        """A shard holding ``state`` (its arrays are taken over, not copied)."""
        shard = cls(state.values, state.optimizer, state.slots)
        shard.step = state.step
        shard.updates = state.updates
        return shard

    def state(self) -> BucketState:
        """A consistent copy of this bucket (taken under its lock)."""
        with self.lock:
            return BucketState(
                self.values.copy(),
                [s.copy() for s in self.slots],
                self.step,
                self.updates,
                self.optimizer,
            )

    def read(self) -> np.ndarray:
        """A copy of the values."""
        with self.lock:
            return self.values.copy()

    def apply(self, grad: np.ndarray) -> None:
        """Run one optimizer step on the values with ``grad`` (counts a step, not an update)."""
        o, name = self.optimizer, self.optimizer.name
        with self.lock:
            self.step += 1
            lr = o.number("learning_rate")
            if name == "sgd":
                kernels.sgd_(self.values, grad, lr)
            elif name == "momentum":
                nesterov = bool(o.options["nesterov"])
                kernels.momentum_(
                    self.values, grad, self.slots[0], lr, o.number("momentum"), nesterov
                )
            elif name == "adam":
                kernels.adam_(
                    self.values, grad, self.slots[0], self.slots[1], lr, o.number("beta_1"),
                    o.number("beta_2"), o.number("epsilon"), self.step,
                )  # fmt: skip
            else:
                kernels.adagrad_(self.values, grad, self.slots[0], lr, o.number("epsilon"))

    def push_gradient(self, grad: np.ndarray) -> np.ndarray:
        """Apply ``grad`` at once (asynchronous training); return the new values."""
        with self.lock:
            self.updates += 1
            self.apply(grad)
            return self.values.copy()

    def elastic(self, x: np.ndarray, alpha: float) -> np.ndarray:
        """EASGD: turn ``x`` into ``d = alpha (x - c)`` in place, move ``c += d``; return d."""
        with self.lock:
            self.updates += 1
            np.subtract(x, self.values, out=x)
            kernels.scale_(x, alpha)
            kernels.add_(self.values, x)
            return x

    def add(self, delta: np.ndarray) -> np.ndarray:
        """``values += delta``; return the new values."""
        with self.lock:
            self.updates += 1
            kernels.add_(self.values, delta)
            return self.values.copy()


class InitPolicy(enum.Enum):
    """What INIT does to a bucket the store already holds."""

    #: Store the values sent (a job's ps: rank 0 seeds a fresh model).
    REPLACE = "replace"
    #: Keep the held values and optimizer state (a long-lived ps: a new job continues
    #: the model); a bucket of another size or dtype is refused.
    KEEP = "keep"


class InitOutcome(enum.Enum):
    """What INIT did."""

    STORED = "stored"
    KEPT = "kept"


class ShardStore:
    """Every bucket a ps holds, by index.

    Parameters
    ----------
    owner : str
        Who holds the store, as errors name it (``"parameter server ps:0"``).
    policy : InitPolicy
        What INIT of a held bucket does.
    mismatch_hint : str, optional
        Appended to the refusal of a bucket of another size or dtype (what to do).
    on_stored : callable, optional
        ``on_stored(bucket)`` after INIT stored a bucket (e.g. snapshot it soon); called
        without the store's lock held.
    """

    def __init__(
        self,
        owner: str,
        policy: InitPolicy,
        *,
        mismatch_hint: str = "",
        on_stored: Callable[[int], None] | None = None,
    ) -> None:
        self.owner = owner
        self.policy = policy
        self.mismatch_hint = mismatch_hint
        self.on_stored = on_stored
        self._shards: dict[int, Shard] = {}
        self._cond = threading.Condition()

    def init(self, bucket: int, values: np.ndarray, optimizer: OptimizerConfig) -> InitOutcome:
        """INIT of ``bucket`` with ``values``, by the policy.

        Raises
        ------
        ConfigError
            Policy KEEP, and the held bucket has another size or dtype.
        """
        with self._cond:
            held = self._shards.get(bucket)
            if held is not None and self.policy is InitPolicy.KEEP:
                if held.values.size != values.size or held.values.dtype != values.dtype:
                    raise ConfigError(
                        f"{self.owner} holds bucket {bucket} with {held.values.size} "
                        f"{held.values.dtype} values, this job's model has {values.size} "
                        f"{values.dtype}{': ' if self.mismatch_hint else ''}{self.mismatch_hint}"
                    )
                return InitOutcome.KEPT
            self._shards[bucket] = Shard(values, optimizer)
            self._cond.notify_all()
        if self.on_stored is not None:
            self.on_stored(bucket)
        return InitOutcome.STORED

    def wait_for(self, bucket: int, timeout: float, check: Callable[[], None]) -> Shard:
        """The shard of ``bucket``, waiting up to ``timeout`` s for its INIT.

        ``check()`` runs at every wake-up and may raise to end the wait (the server broke;
        :meth:`wake` wakes every waiter).

        Raises
        ------
        TransportError
            Nobody initialised the bucket in time.
        """
        with self._cond:
            while bucket not in self._shards:
                check()
                if not self._cond.wait(timeout=timeout):
                    raise TransportError(f"bucket {bucket} was never initialised by rank 0")
            return self._shards[bucket]

    def shards(self) -> dict[int, Shard]:
        """The shards held now, by bucket index."""
        with self._cond:
            return dict(self._shards)

    def wake(self) -> None:
        """Wake everyone waiting on the store or on one of its shards."""
        with self._cond:
            self._cond.notify_all()
            shards = list(self._shards.values())
        for s in shards:
            with s.lock:
                s.lock.notify_all()

    def updates(self) -> dict[int, int]:
        """Update counter of every bucket held now."""
        out = {}
        for b, shard in self.shards().items():
            with shard.lock:
                out[b] = shard.updates
        return out

    def states(self) -> dict[int, BucketState]:
        """A copy of every bucket, each consistent on its own (buckets are independent)."""
        return {b: shard.state() for b, shard in self.shards().items()}

    def load(self, states: Mapping[int, BucketState]) -> None:
        """Hold ``states`` (a restored snapshot), replacing the buckets they name."""
        with self._cond:
            for b, st in states.items():
                self._shards[b] = Shard.from_state(st)
            self._cond.notify_all()
