"""Ring all-reduce and broadcast between real processes over every transport."""

from __future__ import annotations

import numpy as np
import pytest

from tfyarn.errors import RoleFailedError
from tfyarn.exchange.local import run_local

# sizes chosen to hit: fewer elements than ranks, odd splits, several pipeline chunks
SIZES = (1, 2, 7, 1000, 300_001)


def _ring_job(ctx: object) -> dict[str, object]:
    from tfyarn.exchange.mesh import Mesh, training_tasks
    from tfyarn.exchange.ring import Ring

    mesh = Mesh(ctx.task_id, ctx.listener, ctx.peers, ctx.secret, timeout=60)
    members = training_tasks(ctx.peers)
    ring = Ring.connect(mesh, members, chunk_bytes=64 << 10)
    n, r = ring.size, ring.rank
    errors: list[str] = []
    try:
        import ml_dtypes

        # half types are reduced in float32 and rounded once per hop: looser tolerance
        dtypes = [(np.float32, 1e-5), (np.float64, 1e-5), (np.float16, 1e-2),
                  (ml_dtypes.bfloat16, 5e-2)]  # fmt: skip
        for dtype, tol in dtypes:
            for size in SIZES:
                values = [
                    np.random.default_rng(1000 * k + size).standard_normal(size).astype(dtype)
                    for k in range(n)
                ]
                want = sum(v.astype(np.float64) for v in values)
                got = ring.allreduce_(values[r].copy()).astype(np.float64)
                if not np.allclose(got, want, rtol=tol, atol=tol):
                    errors.append(f"sum {np.dtype(dtype).name} {size}")
                avg = ring.allreduce_(values[r].copy(), average=True).astype(np.float64)
                if not np.allclose(avg, want / n, rtol=tol, atol=tol):
                    errors.append(f"mean {np.dtype(dtype).name} {size}")
        for root in range(n):
            a = np.full(123_457, float(r), np.float32)
            ring.broadcast_(a, root=root)
            if not (a == root).all():
                errors.append(f"broadcast root {root}")
        ring.barrier()
        return {"rank": r, "size": n, "transport": ring.transport, "errors": errors}
    finally:
        ring.close()
        mesh.close()


TRANSPORTS = [
    ("tcp", 2, {}, "tcp"),
    ("tcp", 3, {}, "tcp"),
    ("grpc", 2, {}, "grpc"),
    ("ucx", 2, {"UCX_TLS": "posix,self"}, "ucx/posix"),
    ("ucx", 3, {"UCX_TLS": "tcp,self"}, "ucx/tcp"),
]


@pytest.mark.integration
@pytest.mark.parametrize(("transport", "workers", "env", "actual"), TRANSPORTS)
def test_ring_allreduce_and_broadcast_between_processes(
    transport: str, workers: int, env: dict[str, str], actual: str
) -> None:
    results = run_local(_ring_job, workers=workers, transport=transport, env=env, timeout=240)
    assert sorted(r["rank"] for r in results.values()) == list(range(workers))
    for task, res in results.items():
        assert res["size"] == workers
        assert res["transport"] == actual
        assert res["errors"] == [], f"{task}: {res['errors']}"


def _dies_mid_ring(ctx: object) -> None:
    import os

    from tfyarn.exchange.mesh import Mesh, training_tasks
    from tfyarn.exchange.ring import Ring

    mesh = Mesh(ctx.task_id, ctx.listener, ctx.peers, ctx.secret, timeout=60)
    ring = Ring.connect(mesh, training_tasks(ctx.peers))
    ring.allreduce_(np.ones(1000, np.float32))
    if ring.rank == 1:
        os._exit(3)  # a crash: no goodbye, no clean close
    for _ in range(3):
        ring.allreduce_(np.ones(1000, np.float32))


@pytest.mark.integration
def test_a_dead_rank_fails_the_ring_instead_of_hanging() -> None:
    with pytest.raises(RoleFailedError) as info:
        run_local(_dies_mid_ring, workers=3, transport="tcp", timeout=120)
    # whichever role is reported, the survivors did not hang: run_local returned
    assert "worker:" in info.value.role
