"""Every exchange algorithm's hooks on NumPy variables, and what NumPy says they must do.

Shared by tests/unit/test_exchange_algorithm_hooks.py (the ranks are threads of the test
process: ``run_local(..., threads=True)``) and tests/integration/test_exchange_references.py
(the same jobs through :func:`tfyarn.run` on the local Spark cluster: role processes on
executors, the mesh and the parameter servers as in a real job). Two trainers (and one
parameter server for the ps algorithms); the variables are NumPy-backed
(:class:`ArrayVariable`), so no TensorFlow is needed. Where the order of two trainers'
requests to the ps matters (EASGD, ADAG), the ring's barrier orders them. Each check
would fail if no exchange happened (every rank starts from its own weights and gradients).
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import cloudpickle
import numpy as np

from tfyarn.exchange.ps import optimizer_config
from tfyarn.exchange.strategy import ExchangeStrategy
from tfyarn.exchange.tensors import ArrayVariable

# The jobs travel by value to role processes, which cannot import this module.
cloudpickle.register_pickle_by_value(sys.modules[__name__])

#: Each rank's result, by task id (``worker:0``, ``worker:1``).
Results = dict[str, Any]

TIMEOUT = {"timeout": 20}
LR = 0.5


def _start(rank: int) -> list[np.ndarray]:
    """Rank ``rank``'s initial kernel, bias and (non-trainable) moving mean."""
    rng = np.random.default_rng(rank)
    return [
        rng.standard_normal((3, 2)).astype(np.float32),
        rng.standard_normal(2).astype(np.float32),
        rng.standard_normal(2).astype(np.float32),
    ]


def _grads(rank: int) -> list[np.ndarray]:
    rng = np.random.default_rng(100 + rank)
    return [
        rng.standard_normal((3, 2)).astype(np.float32),
        rng.standard_normal(2).astype(np.float32),
    ]


class Model:
    """Weights as the hooks take them: all weights, the trainable ones, optimizer state."""

    def __init__(self, rank: int) -> None:
        kernel, bias, mean = _start(rank)
        self.trainable = [ArrayVariable("kernel", kernel), ArrayVariable("bias", bias)]
        self.weights = [*self.trainable, ArrayVariable("moving_mean", mean)]
        self.extra = [ArrayVariable("iterations", np.int64(7 * (rank + 1)))]

    def values(self) -> list[np.ndarray]:
        return [v.numpy() for v in self.weights]

    def shift(self, by: float) -> None:
        """A local training step's effect on the trainable weights."""
        for v in self.trainable:
            v.assign(v.numpy() + np.float32(by))


def _step_in_turn(s: ExchangeStrategy, m: Model) -> list[np.ndarray]:
    """``step_end`` on rank 0, then on rank 1 (ordered by the ring's barrier).

    Returns this rank's trainable weights right after its own ``step_end``.
    """
    after: list[np.ndarray] = []
    for turn in range(s.size):
        if turn == s.rank:
            s.algorithm.step_end(m.weights, m.trainable)
            after = [v.numpy() for v in m.trainable]
        s.barrier()
    return after


def _close(got: list[np.ndarray], want: list[np.ndarray], what: str) -> None:
    assert len(got) == len(want), what
    for g, w in zip(got, want, strict=True):
        np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-5, err_msg=what)


# -- allreduce -------------------------------------------------------------------------
def _allreduce_job(s: ExchangeStrategy, m: Model) -> dict[str, Any]:
    s.algorithm.begin(m.weights, m.trainable, m.extra)
    return {"begin": m.values(), "extra": m.extra[0].numpy(),
            "grads": s.algorithm.exchange_gradients(_grads(s.rank))}  # fmt: skip


def check_allreduce(res: Results) -> None:
    """allreduce: every rank starts from rank 0's weights and applies the mean gradient."""
    mean = [(a + b) / 2 for a, b in zip(_grads(0), _grads(1), strict=True)]
    for task, r in res.items():
        _close(r["begin"], _start(0), f"{task} begins from rank 0's weights")
        assert r["extra"] == 7  # optimizer state (an integer) is rank 0's too
        _close(r["grads"], mean, f"{task} applies the mean gradient")


# -- parameter-server gradients --------------------------------------------------------
def _sync_ps_job(s: ExchangeStrategy, m: Model) -> dict[str, Any]:
    s.algorithm.optimizer_config = optimizer_config("sgd", learning_rate=LR)
    s.algorithm.begin(m.weights, m.trainable, m.extra)
    begin = m.values()
    new = s.algorithm.exchange_gradients(_grads(s.rank))
    s.algorithm.end(m.weights, m.trainable)
    return {"begin": begin, "new": new, "end": m.values()}


def check_sync_ps(res: Results) -> None:
    """sync_ps: the ps applies the mean gradient once."""
    start = _start(0)
    want = [w - LR * (a + b) / 2 for w, a, b in zip(start[:2], _grads(0), _grads(1), strict=True)]
    for task, r in res.items():
        _close(r["begin"], start, f"{task} begins from rank 0's weights (moving mean too)")
        _close(r["new"], want, f"{task} gets the weights after one averaged SGD step")
        _close(r["end"], [*want, start[2]], f"{task} ends with the servers' weights")


def _downpour_job(s: ExchangeStrategy, m: Model) -> dict[str, Any]:
    s.algorithm.optimizer_config = optimizer_config("sgd", learning_rate=LR)
    s.algorithm.begin(m.weights, m.trainable, m.extra)
    new = s.algorithm.exchange_gradients(_grads(s.rank))
    s.barrier()  # both pushes arrived before anyone pulls the final weights
    s.algorithm.end(m.weights, m.trainable)
    return {"new": new, "end": m.values()[:2]}


def check_downpour(res: Results) -> None:
    """downpour: the ps applies each gradient on arrival (the first sees only its own)."""
    w0, g0, g1 = _start(0)[:2], _grads(0), _grads(1)
    both = [w - LR * (a + b) for w, a, b in zip(w0, g0, g1, strict=True)]
    for task, r in res.items():
        rank = int(task.split(":")[1])
        alone = [w - LR * g for w, g in zip(w0, (g0, g1)[rank], strict=True)]
        # first to arrive sees only its own update; second sees both
        first = all(np.allclose(a, b, atol=1e-6) for a, b in zip(r["new"], alone, strict=True))
        if not first:
            _close(r["new"], both, f"{task} arrived second")
        _close(r["end"], both, f"{task} ends with both updates applied")


# -- elastic averaging -----------------------------------------------------------------
ALPHA = 0.25


def _easgd_job(s: ExchangeStrategy, m: Model) -> dict[str, Any]:
    s.algorithm.begin(m.weights, m.trainable, m.extra)
    s.barrier()  # everyone pulled the start before rank 0 moves the center
    m.shift(s.rank + 1.0)
    s.algorithm.step_end(m.weights, m.trainable)  # step 1 of tau=2: nothing moves
    before = [v.numpy() for v in m.trainable]
    after = _step_in_turn(s, m)
    s.algorithm.end(m.weights, m.trainable)
    return {"before": before, "after": after, "end": [v.numpy() for v in m.trainable]}


def check_easgd(res: Results) -> None:
    """easgd: every tau steps trainer and center move towards each other by alpha."""
    center = _start(0)[:2]
    for rank in (0, 1):  # in the order the barrier gave them
        x = [w + (rank + 1.0) for w in _start(0)[:2]]
        r = res[f"worker:{rank}"]
        _close(r["before"], x, f"rank {rank} trained locally before tau steps")
        d = [ALPHA * (a - c) for a, c in zip(x, center, strict=True)]
        _close(r["after"], [a - b for a, b in zip(x, d, strict=True)], f"rank {rank} moved")
        center = [c + b for c, b in zip(center, d, strict=True)]
    for task, r in res.items():
        _close(r["end"], center, f"{task} ends with the center")


# -- model averaging -------------------------------------------------------------------
def _averaging_job(s: ExchangeStrategy, m: Model) -> dict[str, Any]:
    s.algorithm.begin(m.weights, m.trainable, m.extra)
    out: dict[str, Any] = {}
    m.shift(s.rank + 1.0)
    s.algorithm.step_end(m.weights, m.trainable)
    out["step1"] = m.values()
    s.algorithm.step_end(m.weights, m.trainable)
    out["step2"] = m.values()
    s.algorithm.epoch_end(m.weights, m.trainable)
    m.shift(10.0 * (s.rank + 1))
    s.algorithm.step_end(m.weights, m.trainable)
    s.algorithm.end(m.weights, m.trainable)
    out["end"] = m.values()
    return out


def _averaging_epoch_job(s: ExchangeStrategy, m: Model) -> dict[str, Any]:
    s.algorithm.begin(m.weights, m.trainable, m.extra)
    m.shift(s.rank + 1.0)
    s.algorithm.step_end(m.weights, m.trainable, steps=5)
    out = {"steps": m.values()}
    s.algorithm.epoch_end(m.weights, m.trainable)
    out["epoch"] = m.values()
    m.shift(10.0 * (s.rank + 1))
    s.algorithm.step_end(m.weights, m.trainable)
    s.algorithm.end(m.weights, m.trainable)  # steps since the last average: one more
    out["end"] = m.values()
    return out


def _shifted(by: float) -> list[np.ndarray]:
    kernel, bias, mean = _start(0)
    return [kernel + by, bias + by, mean]


def check_averaging_every_k(res: Results) -> None:
    """model_averaging every 2 steps."""
    for task, r in res.items():
        rank = int(task.split(":")[1])
        _close(r["step1"], _shifted(rank + 1.0), f"{task}: no average after 1 of 2 steps")
        _close(r["step2"], _shifted(1.5), f"{task}: the mean of both after 2 steps")
        # the epoch end does not average (every=2); step 3 is no multiple of 2 either,
        # so end() averages the local step taken since the last average
        _close(r["end"], _shifted(1.5 + 15.0), f"{task}: end averages the last steps")


def check_averaging_every_epoch(res: Results) -> None:
    """model_averaging every epoch."""
    for task, r in res.items():
        rank = int(task.split(":")[1])
        _close(r["steps"], _shifted(rank + 1.0), f"{task}: steps alone do not average")
        _close(r["epoch"], _shifted(1.5), f"{task}: the epoch end averages")
        _close(r["end"], _shifted(1.5 + 15.0), f"{task}: end averages what followed")


# -- ADAG ------------------------------------------------------------------------------
def _adag_job(s: ExchangeStrategy, m: Model) -> dict[str, Any]:
    s.algorithm.begin(m.weights, m.trainable, m.extra)
    s.barrier()  # everyone pulled the start before rank 0 moves the center
    m.shift(s.rank + 1.0)
    s.algorithm.step_end(m.weights, m.trainable)  # 1 of window=2
    m.shift(s.rank + 1.0)
    after = _step_in_turn(s, m)
    s.algorithm.end(m.weights, m.trainable)
    return {"after": after, "end": [v.numpy() for v in m.trainable]}


def check_adag(res: Results) -> None:
    """adag: each commit adds the normalised accumulated update to the center."""
    center = _start(0)[:2]
    for rank in (0, 1):
        # two local steps of +(rank+1) each, normalised by the window of 2
        center = [c + 2 * (rank + 1.0) / 2 for c in center]
        _close(res[f"worker:{rank}"]["after"], center, f"rank {rank} restarts from the center")
    for task, r in res.items():
        _close(r["end"], center, f"{task} ends with the center")


@dataclass(frozen=True)
class Case:
    """One algorithm's job and its check."""

    strategy: str
    ps: int
    job: Callable[[ExchangeStrategy, Model], Any]
    check: Callable[[Results], None]
    options: dict[str, Any] = field(default_factory=dict)


#: Every case, by test id.
CASES: dict[str, Case] = {
    "allreduce": Case("allreduce", 0, _allreduce_job, check_allreduce),
    "sync_ps": Case("sync_ps", 1, _sync_ps_job, check_sync_ps),
    "downpour": Case("downpour", 1, _downpour_job, check_downpour),
    "easgd": Case("easgd", 1, _easgd_job, check_easgd, {"tau": 2, "alpha": ALPHA}),
    "model_averaging-every=2": Case(
        "model_averaging", 0, _averaging_job, check_averaging_every_k, {"every": 2}
    ),
    "model_averaging-every=epoch": Case(
        "model_averaging", 0, _averaging_epoch_job, check_averaging_every_epoch, {"every": "epoch"}
    ),
    "adag": Case("adag", 1, _adag_job, check_adag, {"window": 2}),
}
