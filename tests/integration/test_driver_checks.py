"""What the driver knows before any role starts, checked on a real local Spark cluster
(``local-cluster[4,1,1024]``, the session fixture): each refusal is immediate, names what
is wrong, and starts no role; every job prints its role plan first."""

from __future__ import annotations

import time
from typing import Any

import pytest

import tfyarn
from tfyarn.errors import TransportUnavailableError
from tfyarn.transport.select import probe

pytestmark = pytest.mark.integration


def _never_runs(ctx: Any) -> None:
    raise AssertionError(f"{ctx.task_id} started although the driver refused the job")


def test_more_roles_than_a_local_cluster_has_fail_at_once(
    spark: Any, capsys: pytest.CaptureFixture
) -> None:
    started = time.monotonic()
    with pytest.raises(tfyarn.AllocationError) as err:
        tfyarn.run(spark, _never_runs, workers=4, ps=1, allocation_timeout=120, progress=False)
    # Far from allocation_timeout=120: refused without waiting (30, not a few seconds: on
    # a loaded 2-core machine the refusal alone once took 6 s).
    assert time.monotonic() - started < 30
    assert str(err.value).startswith(
        "the job needs 6 executors (one per role) but this cluster has a fixed size: only 4 "
        "registered at most (local-cluster[4,1,1024] starts exactly 4), so waiting cannot help"
    )
    assert capsys.readouterr().out == (
        "tfyarn: 6 roles, 6 executors needed (one per role): chief:0, worker:0, worker:1, "
        "worker:2, worker:3, ps:0; no strategy; trainers (they get the data): chief:0, "
        "worker:0, worker:1, worker:2, worker:3\n"
    )


def test_rdma_without_devices_is_refused_on_the_driver(spark: Any) -> None:
    if probe()[0]:
        pytest.skip("this host has RDMA devices: the job would be allowed")
    started = time.monotonic()
    with pytest.raises(TransportUnavailableError) as err:
        tfyarn.run(
            spark,
            _never_runs,
            workers=2,
            strategy="allreduce",
            transport="rdma",
            progress=False,
        )
    assert time.monotonic() - started < 10  # the roles found it after ~11.6 s, and failed
    assert str(err.value).startswith(
        "transport='rdma' was requested but no executor host has an RDMA device: every "
        "executor runs on this host (127.0.0.1), which has none (InfiniBand/RoCE)"
    )
    assert "checked before starting any role" in str(err.value)


def test_workers_zero_with_the_default_chief_is_refused(spark: Any) -> None:
    with pytest.raises(tfyarn.ConfigError, match=r"^workers=0 leaves the chief alone in the job"):
        tfyarn.run(spark, _never_runs, workers=0, progress=False)
