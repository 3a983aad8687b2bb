"""What the exchange cost this process: bytes on the wire, seconds spent, ps requests.

One :class:`ExchangeStats` per role process (:func:`process_stats`): a role runs one
exchange at a time, and whoever reports (the heartbeat's beats, the TensorBoard
summaries) reads the same counters. The counters are fed at three points only:

- :class:`CountedComm`, around every connection the :class:`~tfyarn.exchange.mesh.Mesh`
  opens or accepts (and the service ps's own), counts the bytes each way;
- :meth:`ExchangeStats.timed`, around each collective operation of the ring and each
  parameter-server round trip, counts the seconds the training loop waited for the
  exchange (its *exposed* time: a bucket overlapped with the backward pass would not be
  waited for);
- :meth:`ExchangeStats.served`, in the parameter server's request loop.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass

from tfyarn.transport.base import Buffer, Comm

__all__ = ["CountedComm", "ExchangeFigures", "ExchangeStats", "process_stats", "waiting_share"]


def waiting_share(spent: float, elapsed: float) -> float:
    """The share of ``elapsed`` seconds spent in the exchange, from 0 to 1.

    ``spent`` is the difference of two readings of :attr:`ExchangeFigures.seconds`. An
    operation counts when it ends, so one that began before the first reading counts
    whole in this window: an estimate, clamped to [0, 1] (exact over windows much longer
    than one operation).
    """
    return min(1.0, max(0.0, spent / elapsed)) if elapsed > 0 else 0.0


@dataclass(frozen=True)
class ExchangeFigures:
    """The counters at one moment (totals since the process started).

    Attributes
    ----------
    bytes_sent, bytes_received : int
        Payload bytes through the exchange's connections.
    seconds : float
        Seconds the training loop spent in exchange operations.
    operations : int
        Exchange operations timed (collectives and ps round trips).
    ps_requests : int
        Requests this process served as a parameter server.
    """

    bytes_sent: int = 0
    bytes_received: int = 0
    seconds: float = 0.0
    operations: int = 0
    ps_requests: int = 0

    def to_json(self) -> dict[str, int | float]:
        """The figures as a JSON object (the heartbeat's ``exchange`` field)."""
        return asdict(self)

    @classmethod
    def from_json(cls, raw: object) -> ExchangeFigures | None:
        """Figures from their JSON form; None for anything else (a peer's bad heartbeat)."""
        if not isinstance(raw, dict):
            return None
        try:
            return cls(
                bytes_sent=int(raw.get("bytes_sent", 0)),
                bytes_received=int(raw.get("bytes_received", 0)),
                seconds=float(raw.get("seconds", 0.0)),
                operations=int(raw.get("operations", 0)),
                ps_requests=int(raw.get("ps_requests", 0)),
            )
        except (TypeError, ValueError):
            return None

    @property
    def active(self) -> bool:
        """Whether anything was exchanged or served at all."""
        return bool(self.operations or self.ps_requests or self.bytes_sent)


class ExchangeStats:
    """Thread-safe counters of one process's exchange (see the module's docstring)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._sent = 0
        self._received = 0
        self._seconds = 0.0
        self._operations = 0
        self._requests = 0
        self._depth = threading.local()

    def count_bytes(self, sent: int = 0, received: int = 0) -> None:
        """Add payload bytes sent and received."""
        with self._lock:
            self._sent += sent
            self._received += received

    @contextlib.contextmanager
    def timed(self) -> Iterator[None]:
        """Count the enclosed block as one exchange operation, and its seconds.

        Nested blocks of one thread (the host rings inside a hierarchical all-reduce)
        count once, as the outermost.
        """
        depth = getattr(self._depth, "value", 0)
        self._depth.value = depth + 1
        begun = time.perf_counter()
        try:
            yield
        finally:
            self._depth.value = depth
            if depth == 0:
                spent = time.perf_counter() - begun
                with self._lock:
                    self._seconds += spent
                    self._operations += 1

    def served(self, requests: int = 1) -> None:
        """Count requests served by this process's parameter server."""
        with self._lock:
            self._requests += requests

    def figures(self) -> ExchangeFigures:
        """The counters now."""
        with self._lock:
            return ExchangeFigures(
                self._sent, self._received, self._seconds, self._operations, self._requests
            )


_PROCESS = ExchangeStats()


def process_stats() -> ExchangeStats:
    """This process's counters (one role per process)."""
    return _PROCESS


class CountedComm(Comm):
    """A :class:`~tfyarn.transport.base.Comm` whose payload bytes are counted.

    Everything else is the wrapped connection's: attributes it does not define here
    (the ucx backend's ``register``) are looked up on it.
    """

    def __init__(self, comm: Comm, stats: ExchangeStats | None = None) -> None:
        self.comm = comm
        self.transport = comm.transport
        self.peer_address = comm.peer_address
        self._stats = stats or _PROCESS

    def __getattr__(self, name: str) -> object:
        return getattr(self.comm, name)

    def send(self, data: Buffer) -> None:
        self.comm.send(data)
        self._stats.count_bytes(sent=memoryview(data).nbytes)

    def recv_into(self, buf: Buffer) -> int:
        got = self.comm.recv_into(buf)
        self._stats.count_bytes(received=got)
        return got

    def recv(self) -> memoryview:
        data = self.comm.recv()
        self._stats.count_bytes(received=data.nbytes)
        return data

    def put(self, data: Buffer, region: str, offset: int = 0) -> None:
        self.comm.put(data, region, offset)
        self._stats.count_bytes(sent=memoryview(data).nbytes)

    def get(self, buf: Buffer, region: str, offset: int = 0) -> int:
        got = self.comm.get(buf, region, offset)
        self._stats.count_bytes(received=got)
        return got

    def close(self) -> None:
        self.comm.close()
