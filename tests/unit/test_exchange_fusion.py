"""Fusion by readiness (``cycle_time_ms``): the group planner, and the cycle between ranks.

The ranks are threads of this process talking through real tcp listeners
(``run_local(threads=True)``); each rank submits its gradients with its own delays, as
backpropagation would, and the groups must still be the same on every rank.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import pytest

from tfyarn.errors import ConfigError
from tfyarn.exchange.algorithms import option_problems
from tfyarn.exchange.collectives import allreduce_arrays
from tfyarn.exchange.fusion import FusionCycle, check_cycle_time, fuse_count
from tfyarn.exchange.local import LocalContext, run_local

#: Bytes of the gradients in submission order: small ones, then a large one.
NBYTES = [40, 40, 40, 400, 40, 40]


def test_a_group_takes_the_longest_ready_run_within_the_threshold() -> None:
    assert fuse_count(NBYTES, 0, 6, 120) == 3  # 40 + 40 + 40
    assert fuse_count(NBYTES, 0, 2, 120) == 2  # only two are ready
    assert fuse_count(NBYTES, 3, 6, 120) == 4  # a large gradient goes alone
    assert fuse_count(NBYTES, 4, 6, 1 << 20) == 6
    with pytest.raises(ConfigError, match="no ready gradient"):
        fuse_count(NBYTES, 2, 2, 120)


def test_bad_cycle_times_are_refused_naming_the_option() -> None:
    assert check_cycle_time(None) is None
    assert check_cycle_time(5) == pytest.approx(0.005)
    for bad in (-1, "5", True):
        with pytest.raises(ConfigError, match="cycle_time_ms"):
            check_cycle_time(bad)
    assert option_problems("allreduce", {"cycle_time_ms": 2.5}) == []
    assert option_problems("allreduce", {"cycle_time_ms": -2})
    assert option_problems("allreduce", {"compression": "topk", "cycle_time_ms": 1})


def _gradients(rank: int, step: int) -> list[np.ndarray]:
    rng = np.random.default_rng(100 * rank + step)
    return [rng.standard_normal(n // 4).astype(np.float32) for n in NBYTES]


def _job(ctx: LocalContext, cycle_ms: float, threshold: int) -> dict[str, Any]:
    strategy = ctx.strategy()
    coll = strategy.collectives
    fusion = FusionCycle(
        lambda group: allreduce_arrays(coll, group, average=True),
        coll, NBYTES, cycle_ms / 1000, threshold, timeout=30,
    )  # fmt: skip
    out: dict[str, Any] = {"groups": [], "results": []}
    try:
        for step in range(3):
            for pos, g in enumerate(_gradients(strategy.rank, step)):
                # the ranks' backward passes run at different speeds
                time.sleep(0.002 * (pos % 2) * (strategy.rank + 1))
                fusion.submit(pos, g)
            out["results"].append(fusion.collect())
            strategy.barrier()  # a collective between steps, as a callback would run
            out["groups"].append(fusion.last_groups)
    finally:
        fusion.close()
    return out


@pytest.mark.parametrize(
    ("cycle_ms", "threshold", "groups"),
    [
        (200.0, 120, [3, 1, 2]),  # a long cycle: everything ready, cut by the threshold
        (200.0, 1 << 20, [6]),  # and one group when the threshold allows
        (0.0, 1 << 20, None),  # no wait: whatever is ready, the same on every rank
    ],
)
def test_every_rank_fuses_the_same_groups_and_gets_the_average(
    cycle_ms: float, threshold: int, groups: list[int] | None
) -> None:
    results = run_local(
        lambda ctx: _job(ctx, cycle_ms, threshold), threads=True, workers=3,
        strategy="allreduce", strategy_options={"timeout": 30},
    )  # fmt: skip
    outs = list(results.values())
    for out in outs:
        assert out["groups"] == outs[0]["groups"]
        for step, reduced in enumerate(out["results"]):
            want = [np.mean([_gradients(r, step)[i] for r in range(3)], axis=0) for i in range(6)]
            for got, w in zip(reduced, want, strict=True):
                np.testing.assert_allclose(got, w, rtol=1e-6, atol=1e-7)
    for step_groups in outs[0]["groups"]:
        assert sum(step_groups) == len(NBYTES)
        if groups is not None:
            assert step_groups == groups


def test_a_rank_that_never_submits_fails_the_collect_with_advice() -> None:
    def job(ctx: LocalContext) -> None:
        strategy = ctx.strategy()
        coll = strategy.collectives
        fusion = FusionCycle(
            lambda group: allreduce_arrays(coll, group, average=True),
            coll, [4, 4], 0.0, 1 << 20, timeout=1.0,
        )  # fmt: skip
        try:
            fusion.submit(0, np.ones(1, np.float32))
            if strategy.rank == 0:
                fusion.submit(1, np.ones(1, np.float32))
            fusion.collect()
        finally:
            fusion.close()

    with pytest.raises(Exception, match="strategy_options\\['timeout'\\]"):
        run_local(job, threads=True, workers=2, strategy="allreduce", timeout=60)
