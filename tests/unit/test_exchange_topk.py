"""Top-k sparsification with error feedback (``compression="topk"``), against NumPy.

The ranks are threads of this process talking over real tcp listeners
(``run_local(..., threads=True)``); every rank's result over several steps is compared,
bit for bit, with a NumPy replay of the rule: send the k largest of gradient plus
residual, keep the rest, average what all sent.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tfyarn.errors import ConfigError
from tfyarn.exchange.algorithms import option_problems
from tfyarn.exchange.local import LocalContext, run_local
from tfyarn.exchange.stats import process_stats
from tfyarn.exchange.topk import TopK, densify, select

OPTIONS = {"timeout": 20, "chunk_bytes": 256, "compression": "topk", "density": 0.05}
STEPS = 4


def _grads(rank: int, step: int) -> list[np.ndarray]:
    """A step's gradients: two float32 tensors and a float64 one (which travels dense)."""
    rng = np.random.default_rng(1000 * rank + step)
    return [
        rng.standard_normal((7, 9)).astype(np.float32),
        rng.standard_normal(50).astype(np.float32),
        rng.standard_normal(3),
    ]


def _job(ctx: LocalContext) -> list[list[np.ndarray]]:
    algorithm = ctx.strategy().algorithm
    rank = ctx.strategy().rank
    return [algorithm.exchange_gradients(_grads(rank, step)) for step in range(STEPS)]


def _replay(ranks: int, density: float) -> list[list[np.ndarray]]:
    """The rule in NumPy: the float32 tensors fused (in order) and sparsified per rank."""
    residual = [np.zeros(63 + 50, np.float32) for _ in range(ranks)]
    k = int(np.ceil(density * (63 + 50)))
    out = []
    for step in range(STEPS):
        sent_idx, sent_val = [], []
        for r in range(ranks):
            g = _grads(r, step)
            acc = np.concatenate([g[0].ravel(), g[1]]) + residual[r]
            order = np.argsort(-np.abs(acc), kind="stable")[:k]
            idx = np.sort(order)
            sent_idx.append(idx)
            sent_val.append(acc[idx].copy())
            acc[idx] = 0
            residual[r] = acc
        dense = np.zeros(63 + 50, np.float32)
        for idx, val in zip(sent_idx, sent_val, strict=True):
            dense[idx] += val
        dense /= np.float32(ranks)
        f64 = sum(_grads(r, step)[2] for r in range(ranks)) / ranks
        out.append([dense[:63].reshape(7, 9), dense[63:], f64])
    return out


@pytest.mark.parametrize("workers", [2, 3])
def test_topk_with_error_feedback_equals_a_numpy_replay_on_every_rank(workers: int) -> None:
    """Four steps: what a rank did not send comes back in its later steps (the replay's
    residual); a rank that forgot its residual, or sent another k, would differ."""
    results = run_local(
        _job, threads=True, workers=workers, strategy="allreduce", strategy_options=OPTIONS
    )
    want = _replay(workers, OPTIONS["density"])
    for task, steps in results.items():
        for step, (got, expected) in enumerate(zip(steps, want, strict=True)):
            for g, e in zip(got[:2], expected[:2], strict=True):
                np.testing.assert_array_equal(g, e, err_msg=f"{task} step {step}")
            np.testing.assert_allclose(got[2], expected[2], rtol=1e-12)


def _bytes_job(ctx: LocalContext) -> int:
    strategy = ctx.strategy()
    strategy.barrier()
    before = process_stats().figures().bytes_sent
    strategy.algorithm.exchange_gradients([np.ones(1 << 16, np.float32)])
    return process_stats().figures().bytes_sent - before


def test_topk_sends_its_share_of_the_bytes() -> None:
    # one process per rank: each counts its own bytes
    options = {"timeout": 60, "compression": "topk", "density": 0.01, "hierarchical": False}
    results = run_local(_bytes_job, workers=2, strategy="allreduce", strategy_options=options)
    k = int(np.ceil(0.01 * (1 << 16)))
    for sent in results.values():
        # the 2 x 2k words of the gathered pairs, half of them sent twice by each of 2 ranks
        assert sent == 2 * 2 * k * 4, (sent, 4 << 16)


@settings(max_examples=60, deadline=None)
@given(
    values=st.lists(st.floats(-1e6, 1e6, width=32), min_size=1, max_size=40),
    k=st.integers(1, 50),
)
def test_select_takes_the_largest_magnitudes(values: list[float], k: int) -> None:
    acc = np.array(values, np.float32)
    indices, chosen = select(acc, k)
    assert len(indices) == min(k, acc.size) and list(indices) == sorted(set(indices))
    np.testing.assert_array_equal(chosen, acc[indices])
    others = np.delete(np.abs(acc), indices)
    if others.size:
        assert np.abs(chosen).min() >= others.max()


@pytest.mark.parametrize("kind", ["normal", "heavy tail", "mostly zero"])
def test_select_on_a_large_buffer_is_the_exact_top_k(kind: str) -> None:
    """Large enough for the sampled threshold (and, mostly zero, for its fallback)."""
    rng = np.random.default_rng(5)
    acc = rng.standard_normal(300_000).astype(np.float32)
    if kind == "heavy tail":
        acc = acc**5
    elif kind == "mostly zero":
        acc[rng.random(acc.size) < 0.995] = 0
    indices, values = select(acc, 3000)
    exact = np.argsort(-np.abs(acc), kind="stable")[:3000]
    assert len(set(indices)) == 3000
    np.testing.assert_array_equal(np.sort(np.abs(values)), np.sort(np.abs(acc[exact])))


def test_densify_sums_every_ranks_pairs() -> None:
    out = np.full(5, 7.0, np.float32)  # overwritten
    densify(out, [np.array([0, 3]), np.array([3, 4])], [np.ones(2), np.full(2, 2.0)], True)
    np.testing.assert_array_equal(out, np.array([0.5, 0, 0, 1.5, 1.0], np.float32))


def test_one_rank_keeps_what_it_did_not_send() -> None:
    class One:
        rank, size = 0, 1

        def allreduce_(self, a: np.ndarray, average: bool = False, wire: Any = None) -> Any:
            return a

    topk = TopK(0.5)
    flat = np.array([4.0, -1.0, 0.5, 3.0], np.float32)
    np.testing.assert_array_equal(topk.allreduce_(One(), flat, "b", True), [4, 0, 0, 3])
    np.testing.assert_array_equal(topk.residuals["b"], [0, -1, 0.5, 0])
    # the next step sends the residual's largest with the new gradient
    again = topk.allreduce_(One(), np.zeros(4, np.float32), "b", True)
    np.testing.assert_array_equal(again, [0, -1, 0.5, 0])


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"compression": "topk", "density": 0}, r"density must be in \(0, 1\], got 0"),
        ({"compression": "topk", "density": "1%"}, "density must be a number"),
        ({"compression": "fp16", "density": 0.1}, "density applies to compression='topk' only"),
    ],
)
def test_bad_topk_options_are_refused_by_name(options: dict[str, Any], message: str) -> None:
    (problem,) = option_problems("allreduce", options)
    assert problem.startswith("strategy 'allreduce': ")
    with pytest.raises(ConfigError, match=message):
        raise ConfigError(problem)
