"""Horovod's collectives on NumPy arrays over a role's ring.

:func:`allgather_array`, :func:`reduce_array`, :func:`reducescatter_array`,
:func:`broadcast_array`, :func:`broadcast_object_on`, :func:`allgather_object_on` and
:func:`join_on` are pure functions of a :class:`~tfyarn.exchange.collectives.Collectives`,
so that they run the same under ``tfyarn.run`` and in-process
(``run_local(threads=True)``); the TensorFlow ops of
:mod:`tfyarn.horovod._tf_collectives` call them.
"""

from __future__ import annotations

import pickle
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import cloudpickle
import numpy as np

from tfyarn.errors import ConfigError
from tfyarn.exchange.collectives import allgather_rows
from tfyarn.horovod._reduce_ops import ReduceOp, resolve_op

if TYPE_CHECKING:
    from tfyarn.exchange.collectives import Collectives

__all__ = [
    "allgather_array",
    "allgather_object_on",
    "broadcast_array",
    "broadcast_object_on",
    "join_on",
    "reduce_array",
    "reducescatter_array",
    "split_sizes",
]


#: Reductions computed from an all-gather (the ring adds; these need every value).
_GATHERED_OPS: dict[ReduceOp, Callable[..., np.ndarray]] = {
    ReduceOp.MIN: np.min,
    ReduceOp.MAX: np.max,
    ReduceOp.PRODUCT: np.prod,
}


_MAX_DIMS = 8


def _as_bytes(a: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(a).reshape(-1).view(np.uint8)


def allgather_array(coll: Collectives, a: np.ndarray) -> np.ndarray:
    """Concatenate every rank's ``a`` along the first axis, in rank order.

    The first dimensions may differ; the other dimensions and the dtype must agree.
    Built on the ring's sum: the shapes are gathered first (:func:`allgather_rows`), then
    each rank writes its bytes at its offset of a zeroed buffer and the buffers are summed
    as bytes, which is exact for every dtype (each byte is one rank's plus zeros).

    Raises
    ------
    ConfigError
        A 0-d array, more than 8 dimensions, or ranks that disagree on dtype or on the
        dimensions after the first.
    """
    a = np.asarray(a)
    if a.ndim == 0 or a.ndim > _MAX_DIMS:
        raise ConfigError(f"allgather takes arrays of 1 to {_MAX_DIMS} dimensions, got {a.ndim}")
    n, me = coll.size, coll.rank
    mine = np.zeros(_MAX_DIMS + 2, np.int64)
    mine[: 2 + a.ndim] = [a.dtype.num, a.ndim, *a.shape]
    meta = allgather_rows(coll, mine)
    if any((meta[r, :2] != meta[me, :2]).any() or (meta[r, 3:] != meta[me, 3:]).any()
           for r in range(n)):  # fmt: skip
        shapes = [tuple(int(d) for d in row[2 : 2 + int(row[1])]) for row in meta]
        raise ConfigError(
            f"allgather: ranks must agree on dtype and on every dimension but the first; "
            f"got shapes {shapes} (by rank) and dtype {a.dtype} here"
        )
    firsts = meta[:, 2]
    out = np.zeros((int(firsts.sum()), *a.shape[1:]), a.dtype)
    if n == 1 or out.size == 0:
        return np.array(a, copy=True)
    start = int(firsts[:me].sum())
    out[start : start + a.shape[0]] = a
    coll.allreduce_(_as_bytes(out))
    return out


def reduce_array(
    coll: Collectives,
    a: np.ndarray,
    op: ReduceOp,
    prescale_factor: float = 1.0,
    postscale_factor: float = 1.0,
) -> np.ndarray:
    """``a`` reduced over every rank with ``op`` (a new array, same shape and dtype).

    Average and Sum run on the ring; Min, Max and Product from an all-gather. Integers
    average by floor division. Scale factors apply to floating-point values only.

    Raises
    ------
    ConfigError
        Adasum, a non-numeric dtype, or scale factors on integers.
    """
    a = np.array(a, copy=True)
    if a.dtype.kind not in "fiub":
        raise ConfigError(f"allreduce needs a numeric array, got dtype {a.dtype}")
    scaled = prescale_factor != 1.0 or postscale_factor != 1.0
    if scaled and a.dtype.kind != "f":
        raise ConfigError(
            f"prescale_factor/postscale_factor need a floating-point tensor, got {a.dtype}"
        )
    if prescale_factor != 1.0:
        a *= a.dtype.type(prescale_factor)
    if op in _GATHERED_OPS:
        stacked = allgather_array(coll, a.reshape(1, *a.shape))
        out = np.asarray(_GATHERED_OPS[op](stacked, axis=0)).astype(a.dtype)
    elif op in (ReduceOp.AVERAGE, ReduceOp.SUM):
        if a.dtype.kind == "b":
            raise ConfigError("allreduce: Average/Sum of booleans; use hvd.Max or hvd.Min")
        # integers are summed exactly in int64 (the ring adds int32/int64 in place)
        work = a.astype(np.int64) if a.dtype.kind in "iu" else a
        flat = np.ascontiguousarray(work.reshape(-1))
        average = op is ReduceOp.AVERAGE
        if coll.size > 1:
            coll.allreduce_(flat, average=average and flat.dtype.kind == "f")
        if average and flat.dtype.kind != "f":
            flat //= coll.size
        out = flat.reshape(a.shape).astype(a.dtype, copy=False)
    else:
        resolve_op(op)  # raises for Adasum
        raise ConfigError(f"allreduce cannot reduce with {op!r}")
    if postscale_factor != 1.0:
        out = out * out.dtype.type(postscale_factor)
    return out


def split_sizes(first_dim: int, ranks: int) -> list[int]:
    """How ``reducescatter`` splits the first axis: the first ``first_dim % ranks`` ranks
    get one row more than the others."""
    base, extra = divmod(first_dim, ranks)
    return [base + (1 if r < extra else 0) for r in range(ranks)]


def reducescatter_array(
    coll: Collectives,
    a: np.ndarray,
    op: ReduceOp,
    prescale_factor: float = 1.0,
    postscale_factor: float = 1.0,
) -> np.ndarray:
    """``a`` reduced over every rank, then this rank's slice of the first axis.

    Computed as a full reduction (the ring's cost; a reduce-scatter proper would move
    half the bytes), then sliced as :func:`split_sizes` says.
    """
    a = np.asarray(a)
    if a.ndim == 0:
        raise ConfigError("reducescatter takes arrays of at least 1 dimension, got a scalar")
    if op not in (ReduceOp.AVERAGE, ReduceOp.SUM):
        raise ConfigError(f"reducescatter reduces with hvd.Average or hvd.Sum, not {op!r}")
    reduced = reduce_array(coll, a, op, prescale_factor, postscale_factor)
    sizes = split_sizes(a.shape[0], coll.size)
    start = sum(sizes[: coll.rank])
    return np.array(reduced[start : start + sizes[coll.rank]], copy=True)


def broadcast_array(coll: Collectives, a: np.ndarray, root: int) -> np.ndarray:
    """Rank ``root``'s ``a`` on every rank (same shape and dtype everywhere); a new array."""
    if not 0 <= root < coll.size:
        raise ConfigError(f"root_rank={root} is not a rank (there are {coll.size})")
    a = np.array(a, copy=True)
    if coll.size > 1 and a.size:
        coll.broadcast_(_as_bytes(a), root)
    return a


def broadcast_object_on(coll: Collectives, obj: Any, root: int = 0) -> Any:
    """Rank ``root``'s ``obj`` on every rank (pickled with cloudpickle; its length first)."""
    if not 0 <= root < coll.size:
        raise ConfigError(f"root_rank={root} is not a rank (there are {coll.size})")
    if coll.size == 1:
        return obj
    data = cloudpickle.dumps(obj) if coll.rank == root else b""
    length = np.array([len(data)], np.int64)
    coll.broadcast_(length, root)
    buf = np.zeros(int(length[0]), np.uint8)
    if coll.rank == root:
        buf[:] = np.frombuffer(data, np.uint8)
    if buf.size:
        coll.broadcast_(buf, root)
    return obj if coll.rank == root else pickle.loads(buf.tobytes())


def allgather_object_on(coll: Collectives, obj: Any) -> list[Any]:
    """Every rank's ``obj``, in rank order (pickled with cloudpickle)."""
    data = np.frombuffer(cloudpickle.dumps(obj), np.uint8)
    sizes = np.zeros(coll.size, np.int64)
    sizes[coll.rank] = data.size
    if coll.size > 1:
        coll.allreduce_(sizes)
    gathered = allgather_array(coll, data)
    ends = np.cumsum(sizes)
    return [
        pickle.loads(gathered[end - n : end].tobytes())
        for n, end in zip(sizes.tolist(), ends.tolist(), strict=True)
    ]


def join_on(coll: Collectives) -> int:
    """Wait for every rank; return the rank that arrived last (by its host's clock).

    tfyarn gives every rank the same number of steps, so no rank waits in ``join`` while
    others still reduce: it is a barrier that says who was last.
    """
    arrival = np.zeros(coll.size, np.float64)
    arrival[coll.rank] = time.time()
    if coll.size > 1:
        coll.allreduce_(arrival)
    return int(np.argmax(arrival))
