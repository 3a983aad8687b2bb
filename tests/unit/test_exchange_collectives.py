"""The ring and the fused collectives in-process: every rank a thread of this process.

The ranks talk through real tcp listeners on 127.0.0.1 (``run_local(..., threads=True)``),
so the ring, the mesh and the fused pack/reduce/unpack run exactly as between
processes; every result is compared with the same computation in NumPy.
"""

from __future__ import annotations

import secrets
from typing import Any

import ml_dtypes
import numpy as np
import pytest

from tfyarn import transport
from tfyarn.errors import ConfigError, RoleFailedError
from tfyarn.exchange.buckets import chunk_ranges
from tfyarn.exchange.collectives import (
    Collectives,
    LazyRing,
    average_variables,
    broadcast_variables,
)
from tfyarn.exchange.compression import wire_dtype
from tfyarn.exchange.context import ExchangeContext
from tfyarn.exchange.local import LocalContext, run_local
from tfyarn.exchange.mesh import Mesh
from tfyarn.exchange.ring import Ring
from tfyarn.exchange.stats import process_stats
from tfyarn.exchange.tensors import ArrayVariable

#: Small pipeline chunks: many chunks per segment even for small arrays. The flat ring
#: even though every rank is on 127.0.0.1 (test_exchange_hierarchy.py covers the other).
OPTIONS = {"timeout": 20, "chunk_bytes": 256, "hierarchical": False}
#: Fewer elements than ranks, odd splits, several chunks per segment.
SIZES = (1, 2, 7, 1000)
#: Half types are reduced in float32 and rounded once per hop: looser tolerances.
DTYPES = {"float32": 1e-5, "float64": 1e-12, "float16": 1e-2, "bfloat16": 5e-2}


def _dtype(name: str) -> np.dtype:
    return np.dtype(ml_dtypes.bfloat16) if name == "bfloat16" else np.dtype(name)


def _values(rank: int, size: int, dtype: str) -> np.ndarray:
    return np.random.default_rng(97 * rank + size).standard_normal(size).astype(_dtype(dtype))


def _ring_job(ctx: LocalContext) -> dict[str, Any]:
    ring = ctx.strategy().ring
    out: dict[tuple[Any, ...], np.ndarray] = {}
    for dtype in DTYPES:
        for size in SIZES:
            out[dtype, size, "sum"] = ring.allreduce_(_values(ring.rank, size, dtype))
            out[dtype, size, "mean"] = ring.allreduce_(
                _values(ring.rank, size, dtype), average=True
            )
    for root in range(ring.size):
        out["broadcast", root] = ring.broadcast_(np.full(301, float(ring.rank), np.float32), root)
    ring.barrier()
    return {"rank": ring.rank, "size": ring.size, "transport": ring.transport, "out": out}


@pytest.mark.parametrize("workers", [2, 3])
def test_ring_allreduce_and_broadcast_match_numpy(workers: int) -> None:
    results = run_local(
        _ring_job, threads=True, workers=workers, strategy="allreduce", strategy_options=OPTIONS
    )
    assert sorted(r["rank"] for r in results.values()) == list(range(workers))
    for res in results.values():
        assert (res["size"], res["transport"]) == (workers, "tcp")
        for dtype, tol in DTYPES.items():
            for size in SIZES:
                want = sum(_values(k, size, dtype).astype(np.float64) for k in range(workers))
                for op, expected in (("sum", want), ("mean", want / workers)):
                    got = res["out"][dtype, size, op]
                    assert got.dtype == _dtype(dtype)
                    np.testing.assert_allclose(
                        got.astype(np.float64), expected, rtol=tol, atol=tol,
                        err_msg=f"{op} of {size} {dtype} on rank {res['rank']}",
                    )  # fmt: skip
        for root in range(workers):
            np.testing.assert_array_equal(res["out"]["broadcast", root], np.full(301, root))
    # every rank ends with the very same bits, whatever the order of its additions
    first = results["worker:0"]["out"]
    for res in results.values():
        for key, got in res["out"].items():
            np.testing.assert_array_equal(got, first[key], err_msg=str(key))


def _arrays(rank: int) -> list[np.ndarray]:
    rng = np.random.default_rng(rank)
    return [
        rng.standard_normal((3, 4)).astype(np.float32),
        np.array(rng.standard_normal(), np.float64),  # 0-d
        np.zeros((0, 5), np.float32),  # empty: no slot in any bucket
        rng.standard_normal(9).astype(np.float16),
        rng.standard_normal((2, 2)).astype(np.float32),
    ]


def _fused_job(ctx: LocalContext) -> dict[str, Any]:
    strategy = ctx.strategy()
    mine = _arrays(strategy.rank)
    kept = [a.copy() for a in mine]
    mean = strategy.allreduce_arrays(mine, average=True)
    total = strategy.allreduce_arrays(mine, average=False)
    return {"inputs_untouched": all(np.array_equal(a, b) for a, b in zip(mine, kept, strict=True)),
            "mean": mean, "sum": total}  # fmt: skip


def test_fused_allreduce_of_mixed_shapes_and_dtypes_matches_numpy() -> None:
    results = run_local(
        _fused_job, threads=True, workers=3, strategy="allreduce", strategy_options=OPTIONS
    )
    inputs = [_arrays(r) for r in range(3)]
    for res in results.values():
        assert res["inputs_untouched"]
        for i, (mean, total) in enumerate(zip(res["mean"], res["sum"], strict=True)):
            want = sum(x[i].astype(np.float64) for x in inputs)
            assert (mean.shape, mean.dtype) == (inputs[0][i].shape, inputs[0][i].dtype)
            tol = 1e-2 if mean.dtype == np.float16 else 1e-5
            np.testing.assert_allclose(mean.astype(np.float64), want / 3, rtol=tol, atol=tol)
            # the second call's results are fresh buffers: the first's are not overwritten
            np.testing.assert_allclose(total.astype(np.float64), want, rtol=tol, atol=tol)


#: The compressions and their wire types.
WIRES = {"fp16": np.dtype(np.float16), "bf16": np.dtype(ml_dtypes.bfloat16)}


def _replayed_ring(inputs: list[np.ndarray], wire: np.dtype, average: bool) -> np.ndarray:
    """NumPy replay of the compressed ring: what every rank must end with, bit for bit.

    Segment ``s`` starts at rank ``s`` (narrowed), and each next rank adds the widened
    partial sum to its own float32 values; the last of them (the owner, rank ``s - 1``)
    averages and narrows once more, and that is what everyone gets.
    """
    n = len(inputs)
    out = np.empty_like(inputs[0])
    for s, (lo, hi) in enumerate(chunk_ranges(inputs[0].size, n)):
        acc = inputs[s][lo:hi].astype(wire).astype(np.float32)
        for k in range(1, n):
            acc = inputs[(s + k) % n][lo:hi] + acc
            if k < n - 1:
                acc = acc.astype(wire).astype(np.float32)
        if average:
            acc = acc * np.float32(1.0 / n)
        out[lo:hi] = acc.astype(wire).astype(np.float32)
    return out


def _compressed_job(ctx: LocalContext) -> dict[tuple[str, int, bool], np.ndarray]:
    ring = ctx.strategy().ring
    out = {}
    for name, wire in WIRES.items():
        for size in SIZES:
            for average in (False, True):
                x = _values(ring.rank, size, "float32") * 100
                out[name, size, average] = ring.allreduce_(x, average=average, wire=wire)
    return out


@pytest.mark.parametrize("workers", [2, 3])
def test_compressed_ring_sums_in_float32_and_agrees_with_a_numpy_replay(workers: int) -> None:
    """fp16/bf16 on the wire: only what travels is rounded, every rank gets the same bits.

    Adding in half precision instead (rounding each partial sum in the accumulator too)
    or a rank keeping its unrounded own segment would differ from the replay.
    """
    results = run_local(
        _compressed_job, threads=True, workers=workers, strategy="allreduce",
        strategy_options=OPTIONS,
    )  # fmt: skip
    inputs = {size: [_values(r, size, "float32") * 100 for r in range(workers)] for size in SIZES}
    for name, wire in WIRES.items():
        for size in SIZES:
            for average in (False, True):
                want = _replayed_ring(inputs[size], wire, average)
                for task, res in results.items():
                    np.testing.assert_array_equal(
                        res[name, size, average], want, err_msg=f"{name} {size} on {task}"
                    )


def _bytes_job(ctx: LocalContext) -> dict[str, int]:
    strategy = ctx.strategy()
    sent = {}
    for compression in ("none", "fp16", "bf16"):
        strategy.barrier()
        before = process_stats().figures().bytes_sent
        strategy.collectives.allreduce_(
            np.ones(1 << 16, np.float32), average=True, wire=wire_dtype(compression)
        )
        sent[compression] = process_stats().figures().bytes_sent - before
    return sent


def test_compression_halves_the_bytes_on_the_wire() -> None:
    # one process per rank: each counts its own bytes
    results = run_local(
        _bytes_job,
        workers=2,
        strategy="allreduce",
        strategy_options={"timeout": 60, "hierarchical": False},
    )
    for sent in results.values():
        # each of 2 ranks sends half the buffer twice (reduce-scatter, all-gather)
        assert sent == {"none": 4 << 16, "fp16": 2 << 16, "bf16": 2 << 16}, sent


def test_an_unknown_compression_is_refused_naming_the_known_ones() -> None:
    with pytest.raises(ConfigError, match="compression 'int8'; use one of none, fp16, bf16, topk"):
        wire_dtype("int8")


def _variables(rank: int) -> list[ArrayVariable]:
    return [
        ArrayVariable("dense/kernel", np.full((2, 3), rank + 1.0, np.float32)),
        ArrayVariable("dense/bias", np.arange(3, dtype=np.float64) * (rank + 1)),
        ArrayVariable("iterations", np.int64(10 * (rank + 1))),
    ]


def _variables_job(ctx: LocalContext) -> dict[str, list[np.ndarray]]:
    strategy = ctx.strategy()
    averaged = _variables(strategy.rank)
    average_variables(strategy.collectives, averaged)
    broadcast = _variables(strategy.rank)
    broadcast_variables(strategy.collectives, broadcast, root=1)
    return {"averaged": [v.numpy() for v in averaged], "broadcast": [v.numpy() for v in broadcast]}


def test_variables_are_averaged_and_broadcast() -> None:
    results = run_local(
        _variables_job, threads=True, workers=3, strategy="allreduce", strategy_options=OPTIONS
    )
    start = [[v.numpy() for v in _variables(r)] for r in range(3)]
    for task, res in results.items():
        rank = int(task.split(":")[1])
        # floats averaged; the integer counter is nobody's to average and stays
        np.testing.assert_array_equal(res["averaged"][0], np.full((2, 3), 2.0, np.float32))
        np.testing.assert_allclose(res["averaged"][1], np.arange(3) * 2.0)
        assert res["averaged"][2] == start[rank][2]
        # everything, integers included, is rank 1's after the broadcast
        for got, want in zip(res["broadcast"], start[1], strict=True):
            np.testing.assert_array_equal(got, want)
            assert got.dtype == want.dtype


def _lazy_job(ctx: LocalContext) -> tuple[bool, bool]:
    strategy = ctx.strategy()
    before = strategy.collectives.connected
    strategy.barrier()
    return before, strategy.collectives.connected


def test_the_ring_is_connected_on_first_use() -> None:
    results = run_local(
        _lazy_job, threads=True, workers=2, strategy="allreduce", strategy_options=OPTIONS
    )
    assert results == {"worker:0": (False, True), "worker:1": (False, True)}


def _solo_job(ctx: LocalContext) -> list[np.ndarray]:
    strategy = ctx.strategy()
    variables = _variables(0)
    broadcast_variables(strategy.collectives, variables)
    average_variables(strategy.collectives, variables)
    return strategy.allreduce_arrays(_arrays(5), average=True)


def test_one_rank_keeps_its_values() -> None:
    out = run_local(
        _solo_job, threads=True, workers=1, strategy="allreduce", strategy_options=OPTIONS
    )
    for got, want in zip(out["worker:0"], _arrays(5), strict=True):
        np.testing.assert_array_equal(got, want)


def _fails_after_one_step(ctx: LocalContext) -> None:
    strategy = ctx.strategy()
    strategy.allreduce(np.ones(100, np.float32))
    if strategy.rank == 1:
        raise RuntimeError("rank 1 gives up")
    strategy.allreduce(np.ones(100, np.float32))


@pytest.mark.parametrize("hierarchical", [False, True], ids=["flat-ring", "shared-memory"])
def test_a_failing_rank_fails_the_job_instead_of_hanging(hierarchical: bool) -> None:
    options = {**OPTIONS, "hierarchical": hierarchical}
    with pytest.raises(RoleFailedError) as info:
        run_local(
            _fails_after_one_step, workers=3, strategy="allreduce", strategy_options=options,
            timeout=30, threads=True,
        )  # fmt: skip
    assert info.value.role == "worker:1"
    assert "rank 1 gives up" in str(info.value)


def test_the_implementations_satisfy_the_protocols() -> None:
    secret = secrets.token_bytes(32)
    listener = transport.listen("tcp://127.0.0.1:0", secret=secret)
    peers = {"worker:0": listener.address}
    mesh = Mesh("worker:0", listener, peers, secret, timeout=5)
    try:
        ctx = LocalContext("worker", 0, secret, "tcp", listener, peers, "allreduce")
        assert isinstance(ctx, ExchangeContext)
        assert ctx.service is None
        assert isinstance(Ring(0, 1, None, None), Collectives)
        assert isinstance(LazyRing(mesh, ["worker:0"]), Collectives)
    finally:
        mesh.close()
        listener.close()
