"""Hierarchical all-reduce: shared memory inside a host, a ring across hosts.

When several trainers share a host, a flat ring sends every byte through the host's
network card more often than needed (a ring of 4 trainers on 2 hosts crosses the link
with ``2 (n-1)/n = 1.5`` times the buffer each way) and sends the host-local hops
through the kernel's socket stack. The hierarchical exchange instead

1. sums the trainers' buffers of one host in a shared-memory arena, each trainer of the
   host adding its own segment of every trainer's slot (the work is split, not
   serialised on one process);
2. runs the ring all-reduce across hosts between one *leader* per host (the host's
   lowest rank) on the host sum: ``2 (h-1)/h`` times the buffer per host link;
3. lets every trainer of the host copy the result out of the arena.

:func:`plan_hosts` decides from the roles' transport addresses (their host part) which
trainers share a host; it is pure, so every rank computes the same plan. ``auto`` (the
default of the ``hierarchical`` strategy option) takes the hierarchical exchange as soon
as one host holds two trainers; a job whose trainers all run on one host (a local Spark
cluster) then reduces over shared memory only.

The arena is a file in ``/dev/shm`` that the host's leader creates and removes as soon as
every trainer of the host has mapped it, so a crash leaves nothing behind. When a
trainer cannot map it (containers with private ``/dev/shm``), every rank learns so in
the same step and :meth:`HostRing.connect` returns None: the caller uses the flat ring.

The host-local steps synchronise through barriers on a ring of the host's trainers
(small messages over the job's transport); the data itself never leaves the arena. The
exchange figures (``tfyarn_role_exchange_sent_bytes_total``...) count what a trainer
writes into the arena as sent and what it copies out as received, so that a job whose
trainers share a host still shows its exchange moving.
Buffers larger than the arena's slots (``window_bytes``) go through it in windows.
"""

from __future__ import annotations

import contextlib
import mmap
import os
import secrets
import tempfile
import threading
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from tfyarn.errors import ConfigError, TFYarnError, TransportError
from tfyarn.exchange import kernels
from tfyarn.exchange.buckets import chunk_ranges
from tfyarn.exchange.mesh import Mesh
from tfyarn.exchange.ring import DEFAULT_CHUNK_BYTES, Ring, check_buffer
from tfyarn.exchange.stats import process_stats
from tfyarn.transport.registry import parse_address

__all__ = [
    "DEFAULT_WINDOW_BYTES",
    "HIERARCHICAL_MODES",
    "HostPlan",
    "HostRing",
    "check_mode",
    "plan_hosts",
]

#: Bytes of one trainer's slot in the arena: a default 4 MiB bucket passes in one window.
DEFAULT_WINDOW_BYTES = 8 << 20
#: Values of the ``hierarchical`` strategy option.
HIERARCHICAL_MODES = ("auto", True, False)
#: Bytes before the first slot: the leader's token, which followers check.
_HEADER = 64
_TOKEN_BYTES = 16
_LOCAL_CHANNEL = "ring-host"
_CROSS_CHANNEL = "ring-hosts"


def check_mode(mode: object) -> str | bool:
    """The ``hierarchical`` option, validated: ``"auto"``, ``True`` or ``False``.

    Raises
    ------
    ConfigError
        Any other value.
    """
    if isinstance(mode, bool) or mode == "auto":
        return mode
    raise ConfigError(
        f"hierarchical={mode!r}: use 'auto' (shared memory when trainers share a host), "
        "True (always) or False (one flat ring)"
    )


@dataclass(frozen=True)
class HostPlan:
    """Which trainers share a host, and whether the exchange goes hierarchical.

    Attributes
    ----------
    members : tuple of str
        Task ids of the trainers, in rank order.
    hosts : tuple of str
        The hosts, in the order of their lowest rank.
    groups : tuple of tuple of str
        For each host, its trainers in rank order (the first is the host's leader).
    hierarchical : bool
        Whether to reduce inside hosts over shared memory and across hosts by a ring
        of leaders (else one flat ring of every trainer).
    """

    members: tuple[str, ...]
    hosts: tuple[str, ...]
    groups: tuple[tuple[str, ...], ...]
    hierarchical: bool

    @property
    def leaders(self) -> tuple[str, ...]:
        """Each host's leader (its lowest rank), in host order."""
        return tuple(g[0] for g in self.groups)

    def host_index(self, task: str) -> int:
        """Index of ``task``'s host in :attr:`hosts`."""
        for i, group in enumerate(self.groups):
            if task in group:
                return i
        raise ConfigError(f"{task} is not a trainer of this plan ({list(self.members)})")

    def describe(self) -> str:
        """One line for the role's log: the kind of exchange and the trainers per host."""
        per_host = ", ".join(
            f"{h}: {' '.join(g)}" for h, g in zip(self.hosts, self.groups, strict=True)
        )
        if not self.hierarchical:
            return f"flat ring of {len(self.members)} trainers ({per_host})"
        across = (
            f"ring of {len(self.hosts)} host leaders across hosts"
            if len(self.hosts) > 1
            else "no network hop"
        )
        return (
            f"hierarchical: shared memory inside each host, {across} "
            f"({len(self.hosts)} host(s); {per_host})"
        )


def plan_hosts(
    members: Sequence[str], peers: Mapping[str, str], mode: str | bool = "auto"
) -> HostPlan:
    """Group the trainers by the host of their transport address.

    Parameters
    ----------
    members : sequence of str
        Trainer task ids in rank order.
    peers : mapping of str to str
        Task id -> transport address (``scheme://host:port``) of every role.
    mode : {"auto", True, False}
        ``"auto"``: hierarchical when some host holds two or more trainers.

    Returns
    -------
    HostPlan
        The same on every rank (it reads only ``members`` and ``peers``).
    """
    mode = check_mode(mode)
    groups: dict[str, list[str]] = {}
    for task in members:
        if task not in peers:
            raise ConfigError(f"trainer {task} has no transport address among the peers")
        groups.setdefault(parse_address(peers[task])[1], []).append(task)
    crowded = any(len(g) > 1 for g in groups.values())
    hierarchical = crowded if mode == "auto" else bool(mode)
    return HostPlan(
        members=tuple(members),
        hosts=tuple(groups),
        groups=tuple(tuple(g) for g in groups.values()),
        hierarchical=hierarchical,
    )


class _Arena:
    """``slots`` regions of ``window`` bytes in one shared file mapping (after a header)."""

    def __init__(self, path: str, slots: int, window: int, create: bool) -> None:
        self.path = path
        self.window = window
        size = _HEADER + slots * window
        flags = os.O_RDWR | (os.O_CREAT | os.O_EXCL if create else 0)
        fd = os.open(path, flags, 0o600)
        try:
            if create:
                os.ftruncate(fd, size)
            self._map = mmap.mmap(fd, size)
        finally:
            os.close(fd)

    @property
    def token(self) -> bytes:
        return bytes(self._map[:_TOKEN_BYTES])

    @token.setter
    def token(self, value: bytes) -> None:
        self._map[:_TOKEN_BYTES] = value

    def region(self, index: int, dtype: np.dtype, count: int) -> np.ndarray:
        """The first ``count`` elements of region ``index`` as a ``dtype`` array."""
        return np.frombuffer(self._map, dtype, count, _HEADER + index * self.window)

    def close(self) -> None:
        # arrays still viewing the mapping keep it alive; it goes with the last of them
        with contextlib.suppress(BufferError):
            self._map.close()


def _arena_dir() -> str:
    return "/dev/shm" if os.path.isdir("/dev/shm") else tempfile.gettempdir()


class HostRing:
    """The hierarchical :class:`~tfyarn.exchange.collectives.Collectives` (see the module).

    Build it with :meth:`connect`. Region ``i < local size`` of the arena is trainer
    ``i``'s slot (of this host); the last region holds the result.

    Parameters
    ----------
    rank, size : int
        This trainer's rank among all trainers, and their number.
    plan : HostPlan
        The plan it follows.
    local : Ring
        The ring of this host's trainers (barriers only).
    cross : Ring or None
        On a host's leader, the ring of leaders (None elsewhere, or with one host).
    arena : _Arena
        The host's mapped arena.
    """

    def __init__(
        self,
        rank: int,
        size: int,
        plan: HostPlan,
        local: Ring,
        cross: Ring | None,
        arena: _Arena,
    ) -> None:
        self.rank = rank
        self.size = size
        self.plan = plan
        self._local = local
        self._cross = cross
        self._arena = arena
        self._lock = threading.Lock()
        self._broken: BaseException | None = None
        self.transport = "shm" if len(plan.hosts) == 1 else f"shm+{local.transport}"

    @classmethod
    def connect(
        cls,
        mesh: Mesh,
        plan: HostPlan,
        chunk_bytes: int = DEFAULT_CHUNK_BYTES,
        window_bytes: int = DEFAULT_WINDOW_BYTES,
        timeout: float | None = None,
    ) -> HostRing | None:
        """Connect the host's ring, the leaders' ring and the arena; None if unmappable.

        Every trainer of the job calls it at the same time. When any trainer cannot map
        its host's arena, every trainer returns None (and has closed what it opened), so
        that all of them fall back to the flat ring together.
        """
        task = mesh.task_id
        group = plan.groups[plan.host_index(task)]
        leader = group[0] == task
        window = max(64, window_bytes - window_bytes % 64)
        local = Ring.connect(mesh, list(group), chunk_bytes, timeout, _LOCAL_CHANNEL)
        cross: Ring | None = None
        arena: _Arena | None = None
        try:
            if leader and len(plan.hosts) > 1:
                cross = Ring.connect(mesh, list(plan.leaders), chunk_bytes, timeout, _CROSS_CHANNEL)
            arena = _map_arena(local, cross, leader, len(group) + 1, window)
        except BaseException:
            local.close()
            if cross is not None:
                cross.close()
            raise
        if arena is None:
            local.close()
            if cross is not None:
                cross.close()
            return None
        return cls(plan.members.index(task), len(plan.members), plan, local, cross, arena)

    # -- helpers -----------------------------------------------------------------------
    @property
    def _leader(self) -> bool:
        return self._local.rank == 0

    def _windows(self, a: np.ndarray) -> Iterator[tuple[int, int]]:
        step = max(1, self._arena.window // a.itemsize)
        for lo in range(0, a.size, step):
            yield lo, min(a.size, lo + step)

    def _slot(self, i: int, dtype: np.dtype, count: int) -> np.ndarray:
        return self._arena.region(i, dtype, count)

    def _result(self, dtype: np.dtype, count: int) -> np.ndarray:
        return self._arena.region(self._local.size, dtype, count)

    def _check(self, a: np.ndarray) -> None:
        if self._broken is not None:
            raise TransportError(
                f"hierarchical exchange of rank {self.rank} is broken by an earlier "
                f"failure: {self._broken}"
            )
        check_buffer(a)

    @contextlib.contextmanager
    def _operation(self, a: np.ndarray) -> Iterator[None]:
        """One collective at a time; a failure breaks the object and closes its rings."""
        self._check(a)
        with self._lock, process_stats().timed():
            try:
                yield
            except BaseException as exc:
                self._broken = exc
                self.close()
                if isinstance(exc, TFYarnError):
                    raise
                raise TransportError(f"hierarchical exchange rank {self.rank}: {exc}") from exc

    # -- collectives -------------------------------------------------------------------
    def allreduce_(
        self, a: np.ndarray, average: bool = False, wire: np.dtype | None = None
    ) -> np.ndarray:
        """Sum (or average) ``a`` over every trainer, in place; return ``a``.

        Inside a host the sums are exact in ``a``'s dtype; ``wire`` (a half type for a
        float32 ``a``) applies to the ring across hosts only.
        """
        self._check(a)
        if self.size == 1 or a.size == 0:
            return a
        with self._operation(a):
            me, n_local = self._local.rank, self._local.size
            for lo, hi in self._windows(a):
                m = hi - lo
                self._slot(me, a.dtype, m)[:] = a[lo:hi]
                self._local.barrier()  # every slot is written
                s0, s1 = chunk_ranges(m, n_local)[me]
                out = self._result(a.dtype, m)
                seg = out[s0:s1]
                np.copyto(seg, self._slot(0, a.dtype, m)[s0:s1])
                for i in range(1, n_local):
                    kernels.add_(seg, self._slot(i, a.dtype, m)[s0:s1])
                if len(self.plan.hosts) == 1 and average:  # else after the hosts' ring
                    kernels.scale_(seg, 1.0 / self.size)
                self._local.barrier()  # the host sum is complete
                if len(self.plan.hosts) > 1:
                    if self._cross is not None:
                        self._cross.allreduce_(out, average=False, wire=wire)
                        if average:
                            kernels.scale_(out, 1.0 / self.size)
                    self._local.barrier()  # the leader has the global sum
                a[lo:hi] = out
                # what went through the arena counts as exchanged (the watch shows it)
                process_stats().count_bytes(sent=out.nbytes, received=out.nbytes)
        return a

    def broadcast_(self, a: np.ndarray, root: int = 0) -> np.ndarray:
        """Copy ``a`` of rank ``root`` into ``a`` of every trainer, in place; return ``a``."""
        if not 0 <= root < self.size:
            raise ConfigError(f"broadcast root {root} is not a rank of {self.size} trainers")
        self._check(a)
        if self.size == 1 or a.size == 0:
            return a
        root_task = self.plan.members[root]
        root_host = self.plan.host_index(root_task)
        root_local = self.plan.groups[root_host].index(root_task)
        on_root_host = self.plan.host_index(self.plan.members[self.rank]) == root_host
        with self._operation(a):
            for lo, hi in self._windows(a):
                m = hi - lo
                out = self._result(a.dtype, m)
                if self.rank == root:
                    self._slot(self._local.rank, a.dtype, m)[:] = a[lo:hi]
                self._local.barrier()  # the root's slot is written
                if self._leader and on_root_host:
                    out[:] = self._slot(root_local, a.dtype, m)
                if self._cross is not None:
                    self._cross.broadcast_(out, root_host)
                self._local.barrier()  # the host's result is in place
                if self.rank != root:
                    a[lo:hi] = out
                    process_stats().count_bytes(received=out.nbytes)
                else:
                    process_stats().count_bytes(sent=out.nbytes)
        return a

    def barrier(self) -> None:
        """Return once every trainer has called it."""
        with self._operation(np.zeros(1, np.uint8)):
            self._local.barrier()
            if self._cross is not None:
                self._cross.barrier()
            self._local.barrier()

    def close(self) -> None:
        """Close both rings and unmap the arena; idempotent."""
        self._local.close()
        if self._cross is not None:
            self._cross.close()
        self._arena.close()


def _map_arena(
    local: Ring, cross: Ring | None, leader: bool, slots: int, window: int
) -> _Arena | None:
    """The host's arena, mapped by every trainer of the host; None on every trainer if
    any trainer of the job could not map its host's.

    The leader creates the file and broadcasts a random token (zeros when it failed);
    the others map the file named after it and check that it holds the token. A flag
    of failure is summed over the host, then over the leaders, and broadcast back, so
    every trainer decides alike. The leader removes the file once the host's sum shows
    that every trainer of the host is past mapping it.
    """
    token = np.zeros(_TOKEN_BYTES, np.uint8)
    arena: _Arena | None = None
    path = ""
    if leader:
        candidate = secrets.token_bytes(_TOKEN_BYTES)
        path = os.path.join(_arena_dir(), f"tfyarn-exchange-{candidate.hex()}")
        with contextlib.suppress(OSError):
            arena = _Arena(path, slots, window, create=True)
            arena.token = candidate
            token[:] = np.frombuffer(candidate, np.uint8)
    try:
        local.broadcast_(token, 0)
        if not leader and token.any():
            path = os.path.join(_arena_dir(), f"tfyarn-exchange-{token.tobytes().hex()}")
            with contextlib.suppress(OSError):
                arena = _Arena(path, slots, window, create=False)
            if arena is not None and arena.token != token.tobytes():
                arena.close()
                arena = None
        failed = np.array([0.0 if arena is not None else 1.0], np.float32)
        local.allreduce_(failed)
    finally:
        if leader and arena is not None:
            with contextlib.suppress(OSError):
                os.unlink(path)
    if cross is not None:
        cross.allreduce_(failed)
    local.broadcast_(failed, 0)
    if failed[0] > 0:
        if arena is not None:
            arena.close()
        return None
    return arena
