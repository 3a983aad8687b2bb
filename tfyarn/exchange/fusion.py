"""Tensor fusion by readiness: a cycle time and a threshold, as Horovod's fusion buffer.

The default exchange plans its buckets at trace time, by size
(:func:`~tfyarn.exchange.buckets.backward_buckets`): a bucket starts when its last
gradient exists. With ``strategy_options={"cycle_time_ms": T}`` the grouping follows
time instead. Each gradient is *submitted* as soon as backpropagation produced it (a
cheap op that copies it and returns); a background thread per trainer fuses whatever
has been submitted within ``T`` ms of the oldest waiting gradient, up to
``bucket_bytes`` (the fusion threshold), and all-reduces it while backpropagation goes
on; one *collect* op at the end of the step waits for the last group. Many small
gradients that appear close together in time travel as one message; a gradient that
appears alone does not wait for others that will come much later.

Every trainer must fuse the same gradients into each group, although each sees its own
timing: rank 0 decides. It waits for the cycle, picks how many of the step's gradients
(a prefix of the submission order, which is the same on every rank) the next group
takes, and broadcasts that count; every rank then waits for its own copies of those
gradients and joins the all-reduce. The cost is one small broadcast per group.

Only the background thread runs collectives during a step, and it joins a step's first
collective only after its own trainer submitted a gradient of that step, so it never
interleaves with the collectives the trainer runs between steps.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence

import numpy as np

from tfyarn.errors import ConfigError, TFYarnError
from tfyarn.exchange.collectives import Collectives

__all__ = ["FusionCycle", "check_cycle_time", "fuse_count"]

#: A group's members, all-reduced together: arrays in, reduced arrays out.
Reduce = Callable[[list[np.ndarray]], list[np.ndarray]]


def check_cycle_time(value: object) -> float | None:
    """The ``cycle_time_ms`` option in seconds; None (planned buckets) when unset.

    Raises
    ------
    ConfigError
        Not a non-negative number.
    """
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
        raise ConfigError(
            f"cycle_time_ms={value!r}: give the milliseconds (>= 0) to gather ready "
            "gradients before a fused all-reduce, or None for buckets planned by size"
        )
    return float(value) / 1000.0


def fuse_count(nbytes: Sequence[int], start: int, ready: int, threshold: int) -> int:
    """Where the group that begins at ``start`` ends: the longest run of the ready
    gradients ``start..ready-1`` within ``threshold`` bytes, and at least one.

    Pure (rank 0 calls it; tests check it).
    """
    if not start < ready <= len(nbytes):
        raise ConfigError(f"no ready gradient to fuse (start={start}, ready={ready})")
    end, total = start + 1, nbytes[start]
    while end < ready and total + nbytes[end] <= threshold:
        total += nbytes[end]
        end += 1
    return end


class FusionCycle:
    """One step's gradients, submitted one by one, reduced in groups in the background.

    Parameters
    ----------
    reduce : callable
        All-reduces one group (a list of arrays) and returns the results; the same
        collective on every rank.
    collectives : Collectives
        The trainers' collectives; carries rank 0's group decisions.
    nbytes : sequence of int
        Bytes of each gradient, in submission order (the same every step).
    cycle_time : float
        Seconds rank 0 waits, from the oldest waiting gradient, for more to fuse.
    threshold : int
        The most bytes one group takes (unless one gradient alone is larger).
    timeout : float
        Seconds to wait for a gradient of a step that has begun, or for the step's end.
    """

    def __init__(
        self,
        reduce: Reduce,
        collectives: Collectives,
        nbytes: Sequence[int],
        cycle_time: float,
        threshold: int,
        timeout: float,
    ) -> None:
        if not nbytes:
            raise ConfigError("a fusion cycle needs at least one gradient")
        self._reduce = reduce
        self._collectives = collectives
        self.nbytes = list(nbytes)
        self.count = len(self.nbytes)
        self.cycle_time = cycle_time
        self.threshold = threshold
        self.timeout = timeout
        self._cond = threading.Condition()
        self._arrays: list[np.ndarray | None] = [None] * self.count
        self._stamps = [0.0] * self.count
        self._results: list[np.ndarray | None] = [None] * self.count
        self._submitted = 0
        self._done = 0
        self._generation = 0
        self._error: BaseException | None = None
        self._closed = False
        self._thread: threading.Thread | None = None
        #: Sizes (number of gradients) of the groups of the last completed step.
        self.last_groups: list[int] = []
        self._groups: list[int] = []

    # -- the training step's side ------------------------------------------------------
    def submit(self, position: int, array: np.ndarray) -> np.int64:
        """Hand over the gradient at ``position`` of the submission order (copied)."""
        copy = np.array(array, copy=True)
        with self._cond:
            self._raise_if_failed()
            if position != self._submitted:
                raise ConfigError(
                    f"gradient {position} submitted out of order (expected {self._submitted})"
                )
            self._arrays[position] = copy
            self._stamps[position] = time.monotonic()
            self._submitted += 1
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="tfyarn-fusion-cycle", daemon=True
                )
                self._thread.start()
            self._cond.notify_all()
        return np.int64(position)

    def collect(self) -> list[np.ndarray]:
        """The step's reduced gradients, in submission order, once every group is done."""
        with self._cond:
            if not self._cond.wait_for(
                lambda: self._done == self.count or self._error is not None, self.timeout
            ):
                raise TFYarnError(
                    f"the fused exchange did not finish within {self.timeout:.0f}s "
                    f"({self._done} of {self.count} gradients reduced): a trainer is stuck "
                    "or gone; raise strategy_options['timeout'] if steps are that slow"
                )
            self._raise_if_failed()
            results = [r for r in self._results if r is not None]
            self._results = [None] * self.count
            self._submitted = self._done = 0
            self._generation += 1
            self._cond.notify_all()
            return results

    def close(self) -> None:
        """Stop the background thread (it is a daemon: also fine to leave at exit)."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    def _raise_if_failed(self) -> None:
        if self._error is not None:
            if isinstance(self._error, TFYarnError):
                raise self._error
            raise TFYarnError(f"the fused exchange failed: {self._error!r}") from self._error

    # -- the background thread ---------------------------------------------------------
    def _run(self) -> None:
        try:
            while self._step():
                pass
        except BaseException as exc:  # reported by the next submit or collect
            with self._cond:
                self._error = exc
                self._cond.notify_all()

    def _wait_submitted(self, count: int, timeout: float | None) -> bool:
        """Wait (holding the lock) until ``count`` gradients of the step are in."""
        return self._wait(lambda: self._submitted >= count, timeout, f"gradient {count - 1}")

    def _wait(self, predicate: Callable[[], bool], timeout: float | None, what: str) -> bool:
        """Wait (holding the lock) for ``predicate`` or close; False once closed."""
        ok = self._cond.wait_for(lambda: self._closed or predicate(), timeout)
        if self._closed:
            return False
        if not ok:
            raise TFYarnError(
                f"the fused exchange waited {timeout:.0f}s for {what}: a trainer is stuck; "
                "raise strategy_options['timeout'] if steps are that slow"
            )
        return True

    def _step(self) -> bool:
        """Reduce one step's gradients group by group; False once closed."""
        generation = self._generation
        done = 0
        while done < self.count:
            with self._cond:
                # before a step's first gradient the trainer may be anywhere (idle)
                wait = None if done == 0 else self.timeout
                if not self._wait_submitted(done + 1, wait):
                    return False
            end = self._decide(done)
            with self._cond:
                if not self._wait_submitted(end, self.timeout):
                    return False
                group = [a for a in self._arrays[done:end] if a is not None]
                self._arrays[done:end] = [None] * (end - done)
            reduced = self._reduce(group)
            with self._cond:
                self._results[done:end] = reduced
                self._groups.append(end - done)
                if end == self.count:  # before collect() can return this step
                    self.last_groups, self._groups = self._groups, []
                self._done = end
                self._cond.notify_all()
            done = end
        with self._cond:  # until collect() has taken this step's results
            return self._wait(lambda: self._generation != generation, None, "collect")

    def _decide(self, done: int) -> int:
        """Where the next group ends: rank 0's choice, broadcast to every rank."""
        decision = np.zeros(1, np.int64)
        if self._collectives.rank == 0:
            with self._cond:
                deadline = self._stamps[done] + self.cycle_time
                while True:
                    ready = self._submitted
                    waiting = sum(self.nbytes[done:ready])
                    left = deadline - time.monotonic()
                    if ready == self.count or waiting >= self.threshold or left <= 0:
                        break
                    self._cond.wait(left)
                decision[0] = fuse_count(self.nbytes, done, ready, self.threshold)
        if self._collectives.size > 1:
            self._collectives.broadcast_(decision, 0)
        return int(decision[0])
