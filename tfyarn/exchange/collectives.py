"""The collectives the algorithms use, and the one fused "pack, reduce, unpack" helper.

:class:`Collectives` is all an algorithm knows of its peers: its rank, their number,
and in-place all-reduce, broadcast and barrier on flat arrays.
:class:`~tfyarn.exchange.ring.Ring` implements it; :class:`LazyRing` is a ring that is
connected on first use (by every rank), which is what a strategy holds.

:func:`fused` runs one collective per dtype over many tensors at once: the tensors of
a dtype are packed into one fresh flat buffer, the collective runs on it, and the
results are views of that buffer. :func:`allreduce_arrays`, :func:`broadcast_variables`
and :func:`average_variables` are the uses of it.
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable, Sequence
from typing import Protocol, runtime_checkable

import numpy as np

from tfyarn.errors import ConfigError
from tfyarn.exchange import tensors
from tfyarn.exchange.buckets import Bucket, TensorSpec, pack, plan_buckets
from tfyarn.exchange.hierarchy import HostPlan, HostRing
from tfyarn.exchange.mesh import Mesh
from tfyarn.exchange.ring import DEFAULT_CHUNK_BYTES, Ring

__all__ = [
    "Collectives",
    "LazyRing",
    "allgather_rows",
    "allreduce_arrays",
    "average_variables",
    "broadcast_variables",
    "fused",
]

#: A bucket cap no model reaches: one bucket per dtype, so that every tensor lies in one
#: piece of one buffer and the results can be views of it.
_ONE_BUCKET_PER_DTYPE = 1 << 62

#: An in-place collective on one flat buffer (its return value is ignored).
FlatOp = Callable[[np.ndarray], object]


@runtime_checkable
class Collectives(Protocol):
    """Collective operations among the training ranks, in place on flat arrays.

    Every rank must call the same operations in the same order with arrays of the same
    length and dtype.
    """

    @property
    def rank(self) -> int:
        """This rank, ``0 <= rank < size``."""
        ...

    @property
    def size(self) -> int:
        """Number of ranks."""
        ...

    def allreduce_(
        self, a: np.ndarray, average: bool = False, wire: np.dtype | None = None
    ) -> np.ndarray:
        """Sum (or average) the flat ``a`` over every rank, in place; return ``a``.

        ``wire``: a half type a float32 ``a`` travels as (sums stay float32).
        """
        ...

    def broadcast_(self, a: np.ndarray, root: int = 0) -> np.ndarray:
        """Copy rank ``root``'s flat ``a`` into ``a`` of every rank, in place; return ``a``."""
        ...

    def barrier(self) -> None:
        """Return once every rank has called it."""
        ...


class LazyRing:
    """The collectives of ``members`` through ``mesh``, connected on the first use.

    A flat :class:`Ring`, or with a hierarchical ``plan`` a
    :class:`~tfyarn.exchange.hierarchy.HostRing` (shared memory inside hosts, a ring of
    leaders across them; the flat ring when some host cannot map shared memory).
    Rank and size are known at once; connecting waits for the neighbours, which is why
    it happens only when a collective is first needed (a ps algorithm may never need
    the ring).

    Parameters
    ----------
    mesh : Mesh
        This role's mesh.
    members : sequence of str
        Task ids of the ranks, in rank order; ``mesh.task_id`` must be one of them.
    chunk_bytes : int
        Pipeline chunk size of the ring.
    plan : HostPlan, optional
        Which members share a host (:func:`~tfyarn.exchange.hierarchy.plan_hosts`);
        None: a flat ring.
    """

    def __init__(
        self,
        mesh: Mesh,
        members: Sequence[str],
        chunk_bytes: int = DEFAULT_CHUNK_BYTES,
        plan: HostPlan | None = None,
    ) -> None:
        self.mesh = mesh
        self.members = list(members)
        if mesh.task_id not in self.members:
            raise ConfigError(f"{mesh.task_id} is not a ring member ({self.members})")
        if plan is not None and list(plan.members) != self.members:
            raise ConfigError(f"the host plan's trainers {plan.members} are not {self.members}")
        self.chunk_bytes = chunk_bytes
        self.plan = plan
        self._rank = self.members.index(mesh.task_id)
        self._ring: Ring | HostRing | None = None

    @property
    def rank(self) -> int:
        """This rank."""
        return self._rank

    @property
    def size(self) -> int:
        """Number of ranks."""
        return len(self.members)

    @property
    def connected(self) -> bool:
        """Whether the ring has been connected."""
        return self._ring is not None

    @property
    def ring(self) -> Ring | HostRing:
        """The connected collectives (connecting them now if needed)."""
        if self._ring is None:
            self._ring = self._connect()
            # the role's log says which exchange the job got (the plan is automatic)
            print(f"tfyarn exchange {self.mesh.task_id}: {self.description}", file=sys.stderr)
        return self._ring

    def _connect(self) -> Ring | HostRing:
        if self.plan is not None and self.plan.hierarchical and self.size > 1:
            host_ring = HostRing.connect(self.mesh, self.plan, self.chunk_bytes)
            if host_ring is not None:
                return host_ring
        return Ring.connect(self.mesh, self.members, self.chunk_bytes)

    @property
    def description(self) -> str:
        """What the connected collectives are, for the role's log."""
        if self.plan is None:
            return f"flat ring of {self.size} trainers"
        if self.plan.hierarchical and not isinstance(self._ring, HostRing):
            return (
                f"flat ring of {self.size} trainers (a host could not map shared memory; "
                f"planned {self.plan.describe()})"
            )
        return self.plan.describe()

    def allreduce_(
        self, a: np.ndarray, average: bool = False, wire: np.dtype | None = None
    ) -> np.ndarray:
        """See :meth:`Ring.allreduce_`."""
        return self.ring.allreduce_(a, average=average, wire=wire)

    def broadcast_(self, a: np.ndarray, root: int = 0) -> np.ndarray:
        """See :meth:`Ring.broadcast_`."""
        return self.ring.broadcast_(a, root)

    def barrier(self) -> None:
        """See :meth:`Ring.barrier`."""
        self.ring.barrier()

    def close(self) -> None:
        """Close the ring if it was connected (the mesh belongs to the caller)."""
        if self._ring is not None:
            self._ring.close()


@functools.lru_cache(maxsize=256)
def _plan(key: tuple[tuple[tuple[int, ...], str], ...]) -> tuple[Bucket, ...]:
    # a training loop fuses the same list of shapes every step: plan it once
    specs = [TensorSpec(f"t{i}", shape, dtype) for i, (shape, dtype) in enumerate(key)]
    return plan_buckets(specs, _ONE_BUCKET_PER_DTYPE)


def fused(arrays: Sequence[np.ndarray], op: FlatOp) -> list[np.ndarray]:
    """Run ``op`` once per dtype on the fused ``arrays``; return the results as new arrays.

    Parameters
    ----------
    arrays : sequence of numpy.ndarray
        Tensors of any shapes and exchangeable dtypes (see
        :func:`~tfyarn.exchange.buckets.plan_buckets`); they are only read.
    op : callable
        ``op(flat)``: an in-place collective on one flat buffer of one dtype.

    Returns
    -------
    list of numpy.ndarray
        One array per input, same shape and dtype: views of one fresh flat buffer per
        dtype, so that nothing a caller still holds is overwritten by a later call.

    Raises
    ------
    ConfigError
        A dtype that cannot be exchanged.
    """
    plan = _plan(tuple((tuple(int(d) for d in a.shape), a.dtype.name) for a in arrays))
    out: list[np.ndarray | None] = [None] * len(arrays)
    for b in plan:
        flat = pack(b, arrays, np.empty(b.size, arrays[b.slots[0].tensor].dtype))
        op(flat)
        for s in b.slots:  # one bucket per dtype: every tensor is one slot
            shape = arrays[s.tensor].shape
            out[s.tensor] = flat[s.bucket_offset : s.bucket_offset + s.size].reshape(shape)
    # empty tensors take no slot: there is nothing to exchange
    return [o if o is not None else a.copy() for o, a in zip(out, arrays, strict=True)]


def allreduce_arrays(
    collectives: Collectives,
    arrays: Sequence[np.ndarray],
    average: bool,
    wire: np.dtype | None = None,
) -> list[np.ndarray]:
    """Sum or average ``arrays`` over every rank, fused per dtype (see :func:`fused`).

    ``wire``: the half type the float32 buffer travels as (other dtypes travel as they are).
    """

    def reduce(flat: np.ndarray) -> object:
        narrowed = wire if flat.dtype == np.float32 else None
        return collectives.allreduce_(flat, average=average, wire=narrowed)

    return fused(arrays, reduce)


def allgather_rows(collectives: Collectives, row: np.ndarray) -> np.ndarray:
    """Every rank's flat ``row`` (same length and dtype on every rank), one row per rank.

    A gather built on the ring's sum: each rank writes its row into its own row of a
    zeroed block, and the block is summed as bytes, which is exact for every dtype (each
    byte is one rank's plus zeros). Every rank moves the whole block.
    """
    block = np.zeros((collectives.size, row.size), row.dtype)
    block[collectives.rank] = row
    if collectives.size > 1:
        collectives.allreduce_(block.reshape(-1).view(np.uint8))
    return block


def broadcast_variables(
    collectives: Collectives, variables: Sequence[tensors.Variable], root: int = 0
) -> None:
    """Give every rank rank ``root``'s values of ``variables`` (fused, one pass per dtype)."""
    if collectives.size == 1 or not variables:
        return
    values = fused(tensors.read(variables), lambda flat: collectives.broadcast_(flat, root))
    tensors.assign(variables, values)


def average_variables(collectives: Collectives, variables: Sequence[tensors.Variable]) -> None:
    """Average the floating-point ``variables`` over every rank (the others are left)."""
    fl = tensors.floating(variables)
    if collectives.size == 1 or not fl:
        return
    tensors.assign(fl, allreduce_arrays(collectives, tensors.read(fl), average=True))
