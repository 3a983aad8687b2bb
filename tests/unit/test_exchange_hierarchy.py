"""The hierarchical exchange: the host plan, and the shared-memory collectives.

Different addresses of 127.0.0.0/8 stand for different hosts (``run_local(hosts=...)``):
trainers on 127.0.0.1 share one arena, those on 127.0.0.2 another, and the two hosts'
leaders run the ring between them. Every result is compared with the same sums done in
NumPy in the order the hierarchy does them (host sums in local rank order, then the sum
of the host sums), bit for bit.
"""

from __future__ import annotations

import glob
import os
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tfyarn.errors import ConfigError
from tfyarn.exchange import hierarchy, kernels
from tfyarn.exchange.algorithms import option_problems
from tfyarn.exchange.collectives import allgather_rows
from tfyarn.exchange.compression import wire_dtype
from tfyarn.exchange.hierarchy import DEFAULT_WINDOW_BYTES, plan_hosts
from tfyarn.exchange.local import LocalContext, run_local
from tfyarn.exchange.stats import ExchangeStats, process_stats

OPTIONS = {"timeout": 30, "chunk_bytes": 4096}
#: Fewer elements than trainers, odd splits, and more than one arena window.
SIZES = (1, 5, 1001, DEFAULT_WINDOW_BYTES // 4 + 3)
TWO_HOSTS = {"worker:0": "127.0.0.1", "worker:1": "127.0.0.1",
             "worker:2": "127.0.0.2", "worker:3": "127.0.0.2"}  # fmt: skip


def _peers(*hosts: str) -> dict[str, str]:
    return {f"worker:{i}": f"tcp://{h}:{5000 + i}" for i, h in enumerate(hosts)}


def test_trainers_are_grouped_by_the_host_of_their_address() -> None:
    peers = {**_peers("10.0.0.2", "10.0.0.1", "10.0.0.2", "10.0.0.1"), "ps:0": "tcp://h:1"}
    plan = plan_hosts([f"worker:{i}" for i in range(4)], peers)
    assert plan.hierarchical
    assert plan.hosts == ("10.0.0.2", "10.0.0.1")  # in the order of their lowest rank
    assert plan.groups == (("worker:0", "worker:2"), ("worker:1", "worker:3"))
    assert plan.leaders == ("worker:0", "worker:1")
    assert plan.host_index("worker:3") == 1
    assert "ring of 2 host leaders" in plan.describe()


def test_auto_stays_flat_when_no_host_holds_two_trainers() -> None:
    members = ["worker:0", "worker:1"]
    peers = _peers("10.0.0.1", "10.0.0.2")
    assert not plan_hosts(members, peers).hierarchical
    assert plan_hosts(members, peers, True).hierarchical
    assert not plan_hosts(members, _peers("h", "h"), False).hierarchical
    assert plan_hosts(members, peers).describe().startswith("flat ring of 2 trainers")
    assert "no network hop" in plan_hosts(members, _peers("h", "h")).describe()


def test_a_bad_mode_is_refused_before_any_job() -> None:
    with pytest.raises(ConfigError, match="hierarchical='yes'"):
        plan_hosts(["worker:0"], _peers("h"), "yes")
    assert option_problems("allreduce", {"hierarchical": "yes"})
    assert option_problems("allreduce", {"hierarchical": False}) == []
    with pytest.raises(ConfigError, match="no transport address"):
        plan_hosts(["worker:0", "worker:9"], _peers("h"))


def _values(rank: int, size: int, dtype: str = "float32") -> np.ndarray:
    return np.random.default_rng(31 * rank + size).standard_normal(size).astype(dtype)


def _expected(groups: list[list[int]], size: int, average: bool, dtype: str) -> np.ndarray:
    """What the hierarchy computes: each host's sum in local order, then across hosts."""
    host_sums = []
    for group in groups:
        acc = _values(group[0], size, dtype).copy()
        for r in group[1:]:
            kernels.add_(acc, _values(r, size, dtype))
        host_sums.append(acc)
    total = host_sums[0]
    for h in host_sums[1:]:  # a ring of two leaders adds the other's sum: commutative
        kernels.add_(total, h)
    if average:
        kernels.scale_(total, 1.0 / sum(len(g) for g in groups))
    return total


def _job(ctx: LocalContext) -> dict[str, Any]:
    strategy = ctx.strategy()
    coll = strategy.collectives
    r = strategy.rank
    out: dict[Any, Any] = {"kind": type(coll.ring).__name__, "transport": coll.ring.transport}
    for dtype in ("float32", "float64"):
        for size in SIZES:
            for average in (False, True):
                out[dtype, size, average] = coll.allreduce_(_values(r, size, dtype), average)
    for root in range(strategy.size):
        out["broadcast", root] = coll.broadcast_(np.full(SIZES[-1], float(r), np.float32), root)
    out["rows"] = allgather_rows(coll, np.arange(3, dtype=np.int64) + 10 * r)
    out["fp16"] = coll.allreduce_(_values(r, 4096) * 100, True, wire_dtype("fp16"))
    strategy.barrier()
    return out


def _check(results: dict[str, Any], groups: list[list[int]], kind: str) -> None:
    n = sum(len(g) for g in groups)
    for task, out in results.items():
        assert out["kind"] == kind, task
        for dtype in ("float32", "float64"):
            for size in SIZES:
                for average in (False, True):
                    np.testing.assert_array_equal(
                        out[dtype, size, average],
                        _expected(groups, size, average, dtype),
                        err_msg=f"{task} {dtype} {size} average={average}",
                    )
        for root in range(n):
            assert (out["broadcast", root] == root).all(), (task, root)
        np.testing.assert_array_equal(
            out["rows"], np.arange(3)[None, :] + 10 * np.arange(n)[:, None]
        )
    # fp16 rounds what crosses hosts only; every trainer still ends with the same values
    first = next(iter(results.values()))["fp16"]
    want = sum(_values(r, 4096).astype(np.float64) * 100 for r in range(n)) / n
    # the host sums travel as float16: 11 significant bits of the largest of them
    np.testing.assert_allclose(first, want, atol=1e-3 * np.abs(want).max() * n)
    for out in results.values():
        np.testing.assert_array_equal(out["fp16"], first)


def _arenas() -> set[str]:
    return set(glob.glob(os.path.join(hierarchy._arena_dir(), "tfyarn-exchange-*")))


def test_three_trainers_on_one_host_reduce_in_shared_memory_and_leave_no_file() -> None:
    before = _arenas()
    results = run_local(
        _job, threads=True, workers=3, strategy="allreduce", strategy_options=OPTIONS
    )
    _check(results, [[0, 1, 2]], "HostRing")
    assert {out["transport"] for out in results.values()} == {"shm"}
    assert _arenas() == before


def test_two_hosts_reduce_inside_each_and_ring_between_their_leaders() -> None:
    # threads, each mapping the arena on its own (the Spark tests map it from processes)
    before = _arenas()
    results = run_local(
        _job, threads=True, workers=4, strategy="allreduce", strategy_options=OPTIONS,
        hosts=TWO_HOSTS, timeout=120,
    )  # fmt: skip
    _check(results, [[0, 1], [2, 3]], "HostRing")
    assert {out["transport"] for out in results.values()} == {"shm+tcp"}
    assert _arenas() == before


def test_an_unmappable_arena_falls_back_to_the_flat_ring_everywhere(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # each thread (trainer) sees its own directory, as containers with private /dev/shm do
    def private_dir() -> str:
        path = tmp_path / str(threading.get_ident())
        path.mkdir(exist_ok=True)
        return str(path)

    monkeypatch.setattr(hierarchy, "_arena_dir", private_dir)

    def job(ctx: LocalContext) -> tuple[str, np.ndarray]:
        coll = ctx.strategy().collectives
        return type(coll.ring).__name__, coll.allreduce_(_values(coll.rank, 1001), True)

    results = run_local(
        job, threads=True, workers=3, strategy="allreduce", strategy_options=OPTIONS
    )
    assert {kind for kind, _ in results.values()} == {"Ring"}
    assert not [f for d in tmp_path.iterdir() for f in d.iterdir()]  # the leader removed its file
    for _kind, got in results.values():
        np.testing.assert_allclose(got, _expected([[0, 1, 2]], 1001, True, "float32"), atol=1e-6)


def test_run_local_refuses_hosts_for_roles_it_lacks() -> None:
    with pytest.raises(ConfigError, match="worker:7"):
        run_local(_job, workers=1, hosts={"worker:7": "127.0.0.2"})


def test_the_flat_ring_is_what_a_single_trainer_gets() -> None:
    def solo(ctx: LocalContext) -> str:
        return type(ctx.strategy().collectives.ring).__name__

    assert run_local(solo, threads=True, workers=1, strategy="allreduce") == {"worker:0": "Ring"}


def test_a_hierarchical_operation_counts_once_in_the_exchange_figures() -> None:
    # its host rings' operations run inside it, on the same thread
    stats = ExchangeStats()
    with stats.timed():
        with stats.timed():
            time.sleep(0.01)
        with stats.timed():
            pass
    figures = stats.figures()
    assert figures.operations == 1 and 0.01 <= figures.seconds < 1


def test_what_goes_through_the_arena_counts_as_exchanged_bytes() -> None:
    # the watch's exchange bytes of a job whose trainers share a host (threads: one count)
    def job(ctx: LocalContext) -> None:
        coll = ctx.strategy().collectives
        coll.barrier()
        coll.allreduce_(np.ones(1 << 16, np.float32), True)
        coll.barrier()

    before = process_stats().figures()
    run_local(job, threads=True, workers=2, strategy="allreduce", strategy_options=OPTIONS)
    after = process_stats().figures()
    sent, received = (
        after.bytes_sent - before.bytes_sent,
        after.bytes_received - before.bytes_received,
    )
    # each of 2 trainers wrote and read 256 KiB; the barriers' messages add a few bytes
    assert 2 * (4 << 16) <= sent < 2 * (4 << 16) + 4096, sent
    assert 2 * (4 << 16) <= received < 2 * (4 << 16) + 4096, received
