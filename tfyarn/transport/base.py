"""The transport interface: move bytes between endpoints, nothing more.

Modelled on dask ``distributed.comm``: a small interface and a registry of backends
chosen by URL scheme (``tcp://``, ``grpc://``, ``ucx://``). The exchange layer only ever
sees :class:`Comm` and :class:`Listener`; it never knows which backend carries the bytes.

Semantics every backend honours
-------------------------------
* A :class:`Comm` is one authenticated, ordered, bidirectional message channel.
  ``send`` of one buffer on one side is matched by exactly one ``recv_into``/``recv``
  on the other side, in order.
* ``send`` may return before the peer received the message but never before the
  caller's buffer may be reused.
* ``recv_into(buf)`` writes the next message into ``buf`` (any writable buffer, ideally
  one from :mod:`tfyarn.native`'s pool so that no copy is needed) and returns its length;
  a message larger than ``buf`` raises :class:`~tfyarn.errors.FrameError` for this peer.
  When both the sent object and ``buf`` are arrays (``.dtype``/``.shape``), a dtype or
  shape mismatch is a FrameError too. Either way the message is discarded and the comm
  stays usable; a malformed frame (bad magic, version, absurd length) closes the comm,
  never the listener.
* ``put``/``get`` are one-sided: they write/read a region the peer exposed with
  :meth:`Listener.register`, by name, from a comm returned by ``connect``. Backends
  without native RMA (tcp, grpc) emulate them with requests on a second connection that
  a listener thread serves straight into/out of the region, so RMA never competes with
  the message stream; on their comms from ``accept`` put/get raise
  :class:`~tfyarn.errors.TransportError`. The ucx backend also offers ``Comm.register``
  and put/get in both directions.
* Every connection starts with an HMAC challenge on the job secret; a peer without the
  secret is refused (and logged) while the listener keeps serving.
* Methods are thread-safe for one sender thread and one receiver thread at a time, so
  full-duplex algorithms (ring all-reduce) send on one thread and receive on another.
"""

from __future__ import annotations

import abc
import sys
from typing import TYPE_CHECKING, Protocol, Self

# collections.abc.Buffer is Python >= 3.12; typing_extensions provides the same ABC before.
if sys.version_info >= (3, 12):
    from collections.abc import Buffer
else:
    from typing_extensions import Buffer

from tfyarn.errors import FrameError, TransportError

if TYPE_CHECKING:  # options imports frames, which imports this module
    from tfyarn.transport.options import TransportOptions

__all__ = ["Buffer", "Comm", "Listener", "Readable", "recv_exactly"]


class Closing(abc.ABC):
    """Something to close, also usable as a context manager that closes it on exit."""

    @abc.abstractmethod
    def close(self) -> None:
        """Release what this object holds; idempotent."""

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Comm(Closing):
    """One authenticated, ordered, bidirectional connection to a peer."""

    #: Name of the transport actually carrying the bytes, e.g. ``"tcp"``, ``"ucx/posix"``.
    transport: str
    #: The peer's address, as a URL.
    peer_address: str

    @abc.abstractmethod
    def send(self, data: Buffer) -> None:
        """Send one message (any bytes-like object, sent without an extra copy if possible)."""

    @abc.abstractmethod
    def recv_into(self, buf: Buffer) -> int:
        """Receive the next message into ``buf``; return the number of bytes written."""

    @abc.abstractmethod
    def recv(self) -> memoryview:
        """Receive the next message into a newly allocated (pool) buffer and return a view."""

    @abc.abstractmethod
    def put(self, data: Buffer, region: str, offset: int = 0) -> None:
        """Write ``data`` into the peer's registered ``region`` at byte ``offset``.

        Returns once the data is visible in the peer's memory.
        """

    @abc.abstractmethod
    def get(self, buf: Buffer, region: str, offset: int = 0) -> int:
        """Read ``len(buf)`` bytes of the peer's ``region`` at ``offset`` into ``buf``."""

    @abc.abstractmethod
    def close(self) -> None:
        """Close the connection; idempotent."""


class Listener(Closing):
    """A bound endpoint that accepts :class:`Comm` connections and exposes memory regions."""

    #: The URL peers pass to ``connect``, e.g. ``"tcp://127.0.0.1:40123"``.
    address: str
    #: Name of the transport, as :attr:`Comm.transport`.
    transport: str
    #: The settings it was opened with; its accepted comms use them, and so do the
    #: connections the exchange mesh opens from this role.
    options: TransportOptions

    @abc.abstractmethod
    def accept(self, timeout: float | None = None) -> Comm:
        """Wait for the next authenticated peer and return its :class:`Comm`."""

    @abc.abstractmethod
    def register(self, region: str, buf: Buffer) -> None:
        """Expose writable ``buf`` under the name ``region`` for peers' ``put``/``get``."""

    @abc.abstractmethod
    def close(self) -> None:
        """Stop accepting, close every accepted comm, release the port; idempotent."""


class Readable(Protocol):
    """A connected byte stream, as far as reading goes (a socket, or one adapted)."""

    def recv_into(self, buffer: Buffer, nbytes: int = 0, /) -> int: ...


def recv_exactly(
    source: Readable | Comm, buf: Buffer, *, what: str = "message", peer: str | None = None
) -> int:
    """Fill ``buf`` with exactly ``len(buf)`` bytes from ``source``; return that length.

    The one exact-read of the transports. From a byte stream (``Readable``) it reads
    until ``buf`` is full; from a :class:`Comm` (whose ``recv_into`` delivers whole
    messages) the next message must be exactly as long as ``buf``.

    Parameters
    ----------
    source : Readable or Comm
        Where the bytes come from.
    buf : bytes-like, writable
        Filled in place.
    what : str
        What is being read, for the error message (e.g. ``"client proof"``).
    peer : str, optional
        Name of the peer in errors from a Comm; its ``peer_address`` when None.

    Raises
    ------
    TransportError
        A byte stream ended before ``buf`` was full ("peer closed the connection").
    FrameError
        A Comm's message was shorter than ``buf``.
    """
    view = memoryview(buf).cast("B")
    total = view.nbytes
    if isinstance(source, Comm):
        got = source.recv_into(view)
        if got != total:
            who = source.peer_address if peer is None else peer
            raise FrameError(f"{who} sent {got} bytes where {total} were expected ({what})")
        return total
    got = 0
    while got < total:
        n = source.recv_into(view[got:] if got else view, total - got)
        if not n:
            raise TransportError(
                f"peer closed the connection ({got} of {total} bytes of the {what} received)"
            )
        got += n
    return total
