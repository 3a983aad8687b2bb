"""Fuse tensors into flat buckets and spread the buckets over parameter servers.

Pure planning functions: they look only at names, shapes and dtypes, never at values,
so the same plan is computed independently (and identically) by every worker and
every parameter server of a job.

A *bucket* is a contiguous run of the virtual concatenation of every tensor of one
dtype, cut every ``max_bytes``. A tensor may straddle two buckets; that keeps buckets
of equal size, which is what makes the shard plan balanced even when one embedding
matrix is much larger than everything else.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from tfyarn.errors import ConfigError

__all__ = [
    "DEFAULT_BUCKET_BYTES",
    "Bucket",
    "Slot",
    "TensorSpec",
    "backward_buckets",
    "chunk_ranges",
    "pack",
    "plan_buckets",
    "plan_shards",
    "unpack",
]

#: Default cap of one bucket: large enough to amortise a round trip, small enough to
#: spread a model over several parameter servers.
DEFAULT_BUCKET_BYTES = 4 << 20

_SUPPORTED_DTYPES = ("float32", "float16", "bfloat16", "float64", "int32", "int64")


@dataclass(frozen=True)
class TensorSpec:
    """Name, shape and dtype of one tensor (a variable, a gradient).

    Parameters
    ----------
    name : str
        A name for error messages (e.g. the variable's path).
    shape : tuple of int
        Static shape.
    dtype : str
        NumPy-style dtype name: ``"float32"``, ``"float16"``, ``"bfloat16"``, ``"float64"``,
        ``"int32"`` or ``"int64"`` (integers only for broadcast and averaging bookkeeping).
    """

    name: str
    shape: tuple[int, ...]
    dtype: str

    @property
    def size(self) -> int:
        """Number of elements."""
        return math.prod(self.shape)


@dataclass(frozen=True)
class Slot:
    """A piece of one tensor placed in a bucket.

    Parameters
    ----------
    tensor : int
        Index of the tensor in the spec list given to :func:`plan_buckets`.
    tensor_offset : int
        First element of the piece inside the (flattened) tensor.
    bucket_offset : int
        First element of the piece inside the bucket.
    size : int
        Number of elements of the piece.
    """

    tensor: int
    tensor_offset: int
    bucket_offset: int
    size: int


@dataclass(frozen=True)
class Bucket:
    """A flat buffer's worth of tensor pieces, all of one dtype.

    Parameters
    ----------
    index : int
        Position in the plan; buckets are exchanged in this order.
    dtype : str
        Dtype of every element.
    slots : tuple of Slot
        Pieces in bucket order; they tile ``[0, size)`` without gaps.
    size : int
        Number of elements.
    itemsize : int
        Bytes per element.
    """

    index: int
    dtype: str
    slots: tuple[Slot, ...]
    size: int
    itemsize: int

    @property
    def nbytes(self) -> int:
        """Bytes of the bucket."""
        return self.size * self.itemsize


def _itemsize(dtype: str) -> int:
    if dtype not in _SUPPORTED_DTYPES:
        raise ConfigError(
            f"tensor dtype {dtype!r} cannot be exchanged; use one of {', '.join(_SUPPORTED_DTYPES)}"
        )
    return 2 if dtype == "bfloat16" else np.dtype(dtype).itemsize


def backward_buckets(nbytes: Sequence[int], bucket_bytes: int) -> list[list[int]]:
    """Group gradients into exchange buckets in the order backpropagation produces them.

    A model's variables are listed first layer first; the backward pass computes the last
    layer's gradients first. Walking the list from its end, consecutive gradients join a
    bucket until the next would take it past ``bucket_bytes`` (a gradient larger than that
    is a bucket of its own). Each bucket is exchanged as soon as its gradients exist, while
    backpropagation goes on for the layers before it. Pure: every rank plans alike.

    Parameters
    ----------
    nbytes : sequence of int
        Size of each gradient in bytes, in the variables' order.
    bucket_bytes : int
        The most bytes one bucket gathers (unless one gradient alone is larger).

    Returns
    -------
    list of list of int
        Indices into ``nbytes``, the first bucket first; within a bucket, in reverse order.
    """
    if bucket_bytes <= 0:
        raise ConfigError(f"bucket_bytes must be positive, got {bucket_bytes}")
    buckets: list[list[int]] = []
    current: list[int] = []
    filled = 0
    for i in reversed(range(len(nbytes))):
        if current and filled + nbytes[i] > bucket_bytes:
            buckets.append(current)
            current, filled = [], 0
        current.append(i)
        filled += nbytes[i]
    if current:
        buckets.append(current)
    return buckets


def plan_buckets(
    specs: Sequence[TensorSpec], max_bytes: int = DEFAULT_BUCKET_BYTES
) -> tuple[Bucket, ...]:
    """Fuse tensors into buckets of at most ``max_bytes`` each.

    Tensors are grouped by dtype (in order of first appearance) and concatenated in
    their given order; the concatenation is cut every ``max_bytes`` (rounded down to
    whole elements). Empty tensors take no slot.

    Parameters
    ----------
    specs : sequence of TensorSpec
        The tensors, in the order every participant lists them.
    max_bytes : int
        Largest bucket, in bytes (at least one element).

    Returns
    -------
    tuple of Bucket
        The buckets, indexed ``0..n-1``.

    Raises
    ------
    ConfigError
        For an unsupported dtype or a non-positive ``max_bytes``.
    """
    if max_bytes <= 0:
        raise ConfigError(f"max_bytes must be positive, got {max_bytes}")
    by_dtype: dict[str, list[int]] = {}
    for i, spec in enumerate(specs):
        if any(d < 0 for d in spec.shape):
            raise ConfigError(f"tensor {spec.name!r} has no static shape: {spec.shape}")
        _itemsize(spec.dtype)
        by_dtype.setdefault(spec.dtype, []).append(i)

    buckets: list[Bucket] = []
    for dtype, members in by_dtype.items():
        itemsize = _itemsize(dtype)
        cap = max(1, max_bytes // itemsize)
        slots: list[Slot] = []
        filled = 0
        for i in members:
            done = 0
            total = specs[i].size
            while done < total:
                take = min(total - done, cap - filled)
                slots.append(Slot(i, done, filled, take))
                done += take
                filled += take
                if filled == cap:
                    buckets.append(Bucket(len(buckets), dtype, tuple(slots), filled, itemsize))
                    slots, filled = [], 0
        if filled:
            buckets.append(Bucket(len(buckets), dtype, tuple(slots), filled, itemsize))
    return tuple(buckets)


def plan_shards(buckets: Iterable[Bucket], num_shards: int) -> tuple[tuple[int, ...], ...]:
    """Assign buckets to ``num_shards`` parameter servers, balancing bytes.

    Longest-processing-time-first: buckets by decreasing size (ties by index) each go
    to the currently lightest shard (ties to the lowest shard). Deterministic, and
    within 4/3 of the optimal largest load.

    Parameters
    ----------
    buckets : iterable of Bucket
        The plan of :func:`plan_buckets`.
    num_shards : int
        Number of parameter servers (at least 1).

    Returns
    -------
    tuple of tuple of int
        For each shard, the indices of its buckets in increasing order.
    """
    if num_shards < 1:
        raise ConfigError(f"need at least one parameter server shard, got {num_shards}")
    loads = [0] * num_shards
    owned: list[list[int]] = [[] for _ in range(num_shards)]
    for b in sorted(buckets, key=lambda b: (-b.nbytes, b.index)):
        target = min(range(num_shards), key=lambda s: (loads[s], s))
        loads[target] += b.nbytes
        owned[target].append(b.index)
    return tuple(tuple(sorted(o)) for o in owned)


def chunk_ranges(n: int, parts: int) -> tuple[tuple[int, int], ...]:
    """Split ``range(n)`` into ``parts`` contiguous ranges whose sizes differ by at most 1.

    Parameters
    ----------
    n : int
        Number of elements (``>= 0``).
    parts : int
        Number of ranges (``>= 1``); some are empty when ``parts > n``.

    Returns
    -------
    tuple of (int, int)
        ``(start, stop)`` pairs covering ``[0, n)`` in order.
    """
    if parts < 1 or n < 0:
        raise ConfigError(f"cannot split {n} elements into {parts} parts")
    base, extra = divmod(n, parts)
    out: list[tuple[int, int]] = []
    start = 0
    for p in range(parts):
        stop = start + base + (1 if p < extra else 0)
        out.append((start, stop))
        start = stop
    return tuple(out)


def pack(bucket: Bucket, tensors: Sequence[np.ndarray], out: np.ndarray) -> np.ndarray:
    """Copy the bucket's pieces of ``tensors`` into the flat ``out`` (length ``bucket.size``).

    Returns ``out``.
    """
    for s in bucket.slots:
        flat = tensors[s.tensor].reshape(-1)
        out[s.bucket_offset : s.bucket_offset + s.size] = flat[
            s.tensor_offset : s.tensor_offset + s.size
        ]
    return out


def unpack(bucket: Bucket, flat: np.ndarray, tensors: Sequence[np.ndarray]) -> None:
    """Copy the flat bucket ``flat`` back into the pieces of ``tensors`` (in place)."""
    for s in bucket.slots:
        dst = tensors[s.tensor].reshape(-1)
        if not np.shares_memory(dst, tensors[s.tensor]):
            raise ConfigError("unpack needs contiguous destination arrays")
        dst[s.tensor_offset : s.tensor_offset + s.size] = flat[
            s.bucket_offset : s.bucket_offset + s.size
        ]
