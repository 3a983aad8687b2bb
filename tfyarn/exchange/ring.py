"""Ring all-reduce and broadcast over any tfyarn transport.

The classic bandwidth-optimal ring (Patarasuk & Yuan 2009; the algorithm of Baidu's
ring-allreduce and Horovod): with ``n`` ranks each rank sends and receives
``2 (n-1)/n`` times the buffer, whatever ``n``. The buffer is cut into ``n`` segments;
``n-1`` reduce-scatter steps leave rank ``r`` with the full sum of segment ``r+1``, and
``n-1`` all-gather steps circulate the finished segments.

Chunked and pipelined: every segment travels as chunks of at most ``chunk_bytes``.
The segment a rank sends at step ``t+1`` is exactly the one it received (and reduced)
at step ``t``, so each chunk is handed to the sender thread as soon as it has been
received and reduced; sending, receiving and adding overlap for the whole operation
instead of synchronising at every step. All-gather chunks are received straight into
the caller's buffer (no copy).

Sends run on one persistent thread per ring and receives on the caller's thread,
which is exactly the concurrency :class:`~tfyarn.transport.base.Comm` allows.
"""

from __future__ import annotations

import contextlib
import queue
import threading
from collections.abc import Iterator

import numpy as np

from tfyarn.errors import ConfigError, FrameError, TFYarnError, TransportError
from tfyarn.exchange import kernels
from tfyarn.exchange.buckets import chunk_ranges
from tfyarn.exchange.mesh import Mesh
from tfyarn.exchange.stats import process_stats
from tfyarn.transport.base import Comm

__all__ = ["DEFAULT_CHUNK_BYTES", "Ring", "check_buffer"]

#: Chunk size of the pipeline: big enough that per-message overhead is small, small
#: enough that the pipeline fills quickly (measured by benchmarks/exchange_bench.py).
DEFAULT_CHUNK_BYTES = 1 << 20

_CHANNEL = "ring"


def _bytes(a: np.ndarray) -> memoryview:
    # ``.data`` is the array's own memoryview (NumPy's stubs do not declare ndarray a
    # Buffer before Python 3.12); a uint8 view first, so that bfloat16 chunks pass too
    return a.view(np.uint8).data


def _spans(start: int, stop: int, step: int) -> Iterator[tuple[int, int]]:
    """``[start, stop)`` cut into consecutive ``(lo, hi)`` spans of at most ``step``."""
    for lo in range(start, stop, step):
        yield lo, min(stop, lo + step)


def check_buffer(a: np.ndarray) -> np.ndarray:
    """``a`` if a collective can work on it in place: flat, contiguous and writable.

    Raises
    ------
    ConfigError
        Naming what is wrong.
    """
    if not isinstance(a, np.ndarray) or a.ndim != 1 or not a.flags.c_contiguous:
        raise ConfigError("ring operations take a flat, contiguous numpy array")
    if not a.flags.writeable:
        raise ConfigError("ring operations work in place: pass a writable array")
    return a


class _Sender:
    """One thread that sends queued array views, in order, on one comm."""

    def __init__(self, comm: Comm, name: str) -> None:
        self.comm = comm
        self.error: BaseException | None = None
        self._q: queue.SimpleQueue[np.ndarray | threading.Event | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while True:
            item = self._q.get()
            if item is None:
                return
            if isinstance(item, threading.Event):
                item.set()
                continue
            if self.error is not None:
                continue  # drain: the ring is broken, the receiver will raise
            try:
                self.comm.send(_bytes(item))
            except BaseException as exc:
                self.error = exc

    def send(self, a: np.ndarray) -> None:
        self._q.put(a)

    def flush(self) -> None:
        """Wait until everything queued so far has been sent (or failed)."""
        done = threading.Event()
        self._q.put(done)
        while not done.wait(1.0):
            if not self._thread.is_alive():
                raise TransportError("ring sender thread died")
        if self.error is not None:
            raise TransportError(f"ring send failed: {self.error}") from self.error

    def stop(self) -> None:
        self._q.put(None)
        self._thread.join(timeout=5)


class Ring:
    """A ring of training ranks able to all-reduce and broadcast flat arrays in place.

    Parameters
    ----------
    rank, size : int
        This rank and the number of ranks.
    right : Comm or None
        Connection to rank ``(rank + 1) % size`` (we send on it); None when ``size == 1``.
    left : Comm or None
        Connection from rank ``(rank - 1) % size`` (we receive on it).
    chunk_bytes : int
        Pipeline chunk size.
    """

    def __init__(
        self,
        rank: int,
        size: int,
        right: Comm | None,
        left: Comm | None,
        chunk_bytes: int = DEFAULT_CHUNK_BYTES,
    ) -> None:
        if size < 1 or not 0 <= rank < size:
            raise ConfigError(f"bad ring position rank={rank} size={size}")
        if size > 1 and (right is None or left is None):
            raise ConfigError("a ring of more than one rank needs both neighbours")
        if chunk_bytes < 64:
            raise ConfigError(f"chunk_bytes must be at least 64, got {chunk_bytes}")
        self.rank = rank
        self.size = size
        # a multiple of 8 so that the scratch buffer views as any dtype
        self.chunk_bytes = chunk_bytes - chunk_bytes % 8
        self._left = left
        self._sender = _Sender(right, f"tfyarn-ring-send-{rank}") if right is not None else None
        self._scratch = kernels.empty(self.chunk_bytes, np.uint8)
        self._lock = threading.Lock()
        self._broken: BaseException | None = None
        self.transport = right.transport if right is not None else "local"

    @classmethod
    def connect(
        cls,
        mesh: Mesh,
        members: list[str],
        chunk_bytes: int = DEFAULT_CHUNK_BYTES,
        timeout: float | None = None,
        channel: str = _CHANNEL,
    ) -> Ring:
        """Build the ring of ``members`` (task ids in rank order) through ``mesh``.

        ``channel`` names the mesh connections: rings of different member lists between
        the same roles (a host's ring, the hosts' ring) each take their own.
        """
        if mesh.task_id not in members:
            raise ConfigError(f"{mesh.task_id} is not a ring member ({members})")
        size = len(members)
        rank = members.index(mesh.task_id)
        if size == 1:
            return cls(0, 1, None, None, chunk_bytes)
        # connect first, then accept: every rank's listener is already open, so this
        # cannot deadlock
        right = mesh.connect(members[(rank + 1) % size], channel, timeout)
        left = mesh.accept(members[(rank - 1) % size], channel, timeout)
        return cls(rank, size, right, left, chunk_bytes)

    # -- helpers -----------------------------------------------------------------------
    def _chunks(self, a: np.ndarray, start: int, stop: int) -> Iterator[np.ndarray]:
        for lo, hi in _spans(start, stop, max(1, self.chunk_bytes // a.itemsize)):
            yield a[lo:hi]

    def _recv_into(self, dst: np.ndarray) -> None:
        assert self._left is not None
        want = dst.nbytes
        got = self._left.recv_into(_bytes(dst))
        if got != want:
            raise FrameError(f"ring: expected a {want}-byte chunk from the left, got {got}")

    def _check(self, a: np.ndarray) -> np.ndarray:
        if self._broken is not None:
            raise TransportError(
                f"ring rank {self.rank} is broken by an earlier failure: {self._broken}"
            )
        return check_buffer(a)

    def _fail(self, exc: BaseException) -> TFYarnError:
        """Mark the ring broken and close it so that the neighbours fail too (no hang)."""
        self._broken = exc
        self.close()
        if isinstance(exc, TFYarnError):
            return exc
        return TransportError(f"ring rank {self.rank}/{self.size}: {exc}")

    @contextlib.contextmanager
    def _operation(self) -> Iterator[_Sender]:
        """One collective at a time; all it queued is sent at the end; any failure breaks it."""
        if self._sender is None:
            raise ConfigError("a ring of one rank has no neighbour to talk to")
        with self._lock, process_stats().timed():
            try:
                yield self._sender
                self._sender.flush()
            except BaseException as exc:
                raise self._fail(exc) from exc

    # -- collectives -------------------------------------------------------------------
    def allreduce_(
        self, a: np.ndarray, average: bool = False, wire: np.dtype | None = None
    ) -> np.ndarray:
        """Sum (or average) ``a`` over all ranks, in place; every rank gets the result.

        Parameters
        ----------
        a : numpy.ndarray
            Flat contiguous array, same length and dtype on every rank.
        average : bool
            Divide by the number of ranks.
        wire : numpy.dtype, optional
            Send a float32 ``a`` as this half type (float16 or bfloat16): half the bytes
            on the wire. Sums are kept in float32 (each received partial sum is widened
            and added); only what travels is rounded. Every rank ends with the same
            values (those of the finished segments as they travelled).

        Returns
        -------
        numpy.ndarray
            ``a`` itself.
        """
        self._check(a)
        n = self.size
        if n == 1 or a.size == 0:
            return a
        if wire is not None:
            return self._allreduce_narrowed(a, average, np.dtype(wire))
        r = self.rank
        seg = chunk_ranges(a.size, n)
        scratch = self._scratch.view(a.dtype)
        steps = 2 * (n - 1)
        with self._operation() as sender:
            for c in self._chunks(a, *seg[r]):
                sender.send(c)
            for t in range(steps):
                s_idx = (r - t - 1) % n
                reduce = t < n - 1
                last_reduce = t == n - 2
                forward = t < steps - 1
                for c in self._chunks(a, *seg[s_idx]):
                    if reduce:
                        tmp = scratch[: c.size]
                        self._recv_into(tmp)
                        kernels.add_(c, tmp)
                        if last_reduce and average:
                            kernels.scale_(c, 1.0 / n)
                    else:
                        self._recv_into(c)
                    if forward:
                        sender.send(c)
        return a

    def _allreduce_narrowed(self, a: np.ndarray, average: bool, wire: np.dtype) -> np.ndarray:
        """:meth:`allreduce_` with the float32 ``a`` travelling as the half type ``wire``.

        The same ring and pipeline, with a wire copy ``w`` of ``a``: a chunk is narrowed
        into ``w`` before it is sent, a received partial sum is widened and added into
        ``a`` (float32), and a finished segment is received into ``w`` and widened into
        ``a``. Its owner widens its own narrowed copy back too, so that all ranks agree.
        A region of ``w`` is rewritten only after what was sent from it went round the
        ring, as in the uncompressed ring (see the module docstring).
        """
        if a.dtype != np.float32:
            raise ConfigError(f"a compressed all-reduce takes float32 buffers, not {a.dtype}")
        n, r = self.size, self.rank
        seg = chunk_ranges(a.size, n)
        w = kernels.empty(a.size, wire)
        scratch = self._scratch.view(wire)
        steps = 2 * (n - 1)
        per_chunk = max(1, self.chunk_bytes // wire.itemsize)
        with self._operation() as sender:
            for lo, hi in _spans(*seg[r], per_chunk):
                kernels.narrow_(w[lo:hi], a[lo:hi])
                sender.send(w[lo:hi])
            for t in range(steps):
                s_idx = (r - t - 1) % n
                reduce = t < n - 1
                last_reduce = t == n - 2
                forward = t < steps - 1
                for lo, hi in _spans(*seg[s_idx], per_chunk):
                    c, wc = a[lo:hi], w[lo:hi]
                    if reduce:
                        tmp = scratch[: c.size]
                        self._recv_into(tmp)
                        kernels.widen_(c, tmp, accumulate=True)
                        if last_reduce and average:
                            kernels.scale_(c, 1.0 / n)
                        kernels.narrow_(wc, c)
                        if last_reduce:
                            kernels.widen_(c, wc)
                    else:
                        self._recv_into(wc)
                        kernels.widen_(c, wc)
                    if forward:
                        sender.send(wc)
        return a

    def broadcast_(self, a: np.ndarray, root: int = 0) -> np.ndarray:
        """Copy ``a`` of rank ``root`` into ``a`` of every rank, in place (pipelined chain)."""
        self._check(a)
        if not 0 <= root < self.size:
            raise ConfigError(f"broadcast root {root} is not a rank of a ring of {self.size}")
        if self.size == 1 or a.size == 0:
            return a
        forward = (self.rank + 1) % self.size != root
        with self._operation() as sender:
            for c in self._chunks(a, 0, a.size):
                if self.rank != root:
                    self._recv_into(c)
                if forward:
                    sender.send(c)
        return a

    def barrier(self) -> None:
        """Return once every rank has called it."""
        self.allreduce_(np.zeros(1, np.float32))

    def close(self) -> None:
        """Stop the sender thread and close both connections; idempotent."""
        if self._sender is not None:
            self._sender.stop()
            self._sender.comm.close()
        if self._left is not None:
            self._left.close()
