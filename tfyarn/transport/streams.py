"""Framed messages over any connected byte stream: shared by the tcp and grpc backends.

A :class:`StreamComm` turns a connected, authenticated byte stream (a TCP socket, or a
gRPC stream adapted to look like one) into a :class:`~tfyarn.transport.base.Comm`:
messages are :mod:`~tfyarn.transport.frames` frames, received straight into the
caller's buffer. One-sided put/get travel on a *second* stream (opened on first use)
that the listener serves with :func:`serve_rma` straight into/out of the registered
region; keeping them off the data stream means a put never waits behind, or steals,
the messages another thread is receiving.
"""

from __future__ import annotations

import contextlib
import queue
import socket
import threading
from collections.abc import Callable, Sequence
from typing import Any, Protocol

from tfyarn.errors import ConfigError, FrameError, TFYarnError, TransportError
from tfyarn.transport import frames
from tfyarn.transport.base import Buffer, Comm, Listener, recv_exactly
from tfyarn.transport.frames import HEADER_SIZE, Kind, Limits, RmaDesc, TensorDesc
from tfyarn.transport.memory import RegionTable, alloc_buffer, readable_bytes, writable_bytes

__all__ = [
    "MAX_ERROR",
    "AcceptQueue",
    "ByteStream",
    "StreamComm",
    "StreamListener",
    "close_stream",
    "drain",
    "format_address",
    "read_frame_header",
    "send_error",
    "sendmsg_all",
    "serve_rma",
]

#: Longest error text a peer may send back for a failed put/get.
MAX_ERROR = 64 * 1024
#: Scratch size used to discard a message that cannot be delivered.
_DRAIN_CHUNK = 1 << 20


class ByteStream(Protocol):
    """What a :class:`StreamComm` needs: the subset of :class:`socket.socket` it uses."""

    def sendmsg(self, buffers: Sequence[Buffer], /) -> int: ...

    def sendall(self, data: Buffer, /) -> object: ...

    def recv_into(self, buffer: Buffer, nbytes: int = 0, /) -> int: ...

    def settimeout(self, timeout: float | None, /) -> None: ...

    def shutdown(self, how: int, /) -> None: ...

    def close(self) -> None: ...


def format_address(scheme: str, host: str, port: int) -> str:
    """``scheme://host:port``, with brackets around IPv6 hosts."""
    return f"{scheme}://[{host}]:{port}" if ":" in host else f"{scheme}://{host}:{port}"


def sendmsg_all(sock: ByteStream, parts: Sequence[memoryview | bytes]) -> None:
    """Send every part with as few ``sendmsg`` calls as the kernel allows, no copies."""
    pending = [memoryview(p).cast("B") for p in parts if len(p)]
    while pending:
        sent = sock.sendmsg(pending)
        while sent:
            head = pending[0]
            if sent >= head.nbytes:
                sent -= head.nbytes
                pending.pop(0)
            else:
                pending[0] = head[sent:]
                sent = 0


def drain(sock: ByteStream, nbytes: int) -> None:
    """Read and discard ``nbytes`` so that the stream stays in step after a refused frame."""
    scratch = memoryview(bytearray(min(nbytes, _DRAIN_CHUNK)))
    while nbytes:
        step = min(nbytes, scratch.nbytes)
        recv_exactly(sock, scratch[:step])
        nbytes -= step


def read_frame_header(
    sock: ByteStream, hdr: memoryview, limits: Limits
) -> tuple[frames.Header, TensorDesc | RmaDesc | None]:
    """Read one header and its extension; FrameError if the peer's bytes are invalid."""
    recv_exactly(sock, hdr, what="frame header")
    header = frames.parse_header(hdr, limits)
    if not header.ext_len:
        return header, None
    ext_buf = memoryview(bytearray(header.ext_len))
    recv_exactly(sock, ext_buf, what="frame extension")
    return header, frames.parse_extension(header, ext_buf, limits)


def _array_desc(buf: Buffer) -> tuple[str | None, tuple[int, ...] | None]:
    """dtype string and shape of ``buf`` when it is an array, else (None, None)."""
    desc = frames.tensor_desc_of(buf)
    return (desc.dtype, desc.shape) if desc else (None, None)


class StreamComm(Comm):
    """One authenticated, framed message stream over a byte stream (see the module doc).

    Backends build it from a connected, authenticated :class:`ByteStream`; users get it
    from ``connect``/``accept``.

    Parameters
    ----------
    sock : ByteStream
        The data connection, after the preamble (:mod:`tfyarn.transport.preamble`).
    transport : str
        Name reported in :attr:`transport`.
    peer_address : str
        The peer's URL, for messages.
    limits : Limits
        Bounds on received frames.
    rma_dial : callable, optional
        Opens the RMA connection on first put/get; None on the accepting side.
    op_timeout : float or None
        Seconds one send/recv/put/get may block; when it passes, the comm is closed
        (the stream's position is then unknown). None: no limit.
    """

    def __init__(
        self,
        sock: ByteStream,
        *,
        transport: str,
        peer_address: str,
        limits: Limits,
        rma_dial: Callable[[], ByteStream] | None = None,
        op_timeout: float | None = None,
    ) -> None:
        sock.settimeout(op_timeout)
        self.op_timeout = op_timeout
        self._sock = sock
        self.transport = transport
        self.peer_address = peer_address
        self._limits = limits
        self._rma_dial = rma_dial
        self._rma_sock: ByteStream | None = None
        self._send_lock = threading.Lock()
        self._recv_lock = threading.Lock()
        self._rma_lock = threading.Lock()
        self._hdr = memoryview(bytearray(HEADER_SIZE))
        self._rma_hdr = memoryview(bytearray(HEADER_SIZE))
        self._closed = False

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` ran (here, or because the stream broke)."""
        return self._closed

    # -- data stream ---------------------------------------------------------------
    def send(self, data: Buffer) -> None:
        """Send one message; NumPy arrays carry their dtype and shape for checking."""
        view = readable_bytes(data)
        header = frames.pack_frame_header(Kind.MSG, view.nbytes, frames.tensor_desc_of(data))
        with self._send_lock:
            if self._closed:
                raise TransportError(f"connection to {self.peer_address} is closed")
            try:
                sendmsg_all(self._sock, (header, view))
            except (OSError, TransportError) as exc:
                raise self._broken(exc) from exc

    def _next_message(self) -> tuple[frames.Header, TensorDesc | None]:
        if self._closed:
            raise TransportError(f"connection to {self.peer_address} is closed")
        try:
            header, ext = read_frame_header(self._sock, self._hdr, self._limits)
        except (OSError, TransportError) as exc:
            raise self._broken(exc) from exc
        if header.kind is not Kind.MSG or isinstance(ext, RmaDesc):
            self._fail(f"peer sent a {header.kind.name} frame on the data stream")
        return header, ext  # type: ignore[return-value]

    def _refuse(self, nbytes: int, message: str) -> None:
        """Discard a message that cannot be delivered; the stream stays usable."""
        self._io(lambda: drain(self._sock, nbytes))
        raise FrameError(f"{message} (from {self.peer_address}; message discarded)")

    def recv_into(self, buf: Buffer) -> int:
        """Receive the next message straight into ``buf``; return its length.

        Raises
        ------
        FrameError
            The message is larger than ``buf``, or its dtype/shape differ from the array
            ``buf``; the message is discarded and the connection stays usable. Malformed
            frames close the connection.
        """
        dest = writable_bytes(buf, "recv_into buffer")
        dtype, shape = _array_desc(buf)
        with self._recv_lock:
            header, desc = self._next_message()
            if header.length > dest.nbytes:
                self._refuse(
                    header.length,
                    f"message of {header.length} bytes does not fit a buffer of {dest.nbytes}",
                )
            try:
                frames.check_tensor_matches(desc, dtype, shape)
            except FrameError as exc:
                self._refuse(header.length, str(exc))
            try:
                recv_exactly(
                    self._sock, dest[: header.length] if header.length != dest.nbytes else dest
                )
            except (OSError, TransportError) as exc:
                raise self._broken(exc) from exc
            return header.length

    def recv(self) -> memoryview:
        """Receive the next message into a new (pool) buffer and return a view of it."""
        with self._recv_lock:
            header, _ = self._next_message()
            if header.length > self._limits.max_alloc:
                self._refuse(
                    header.length,
                    f"message of {header.length} bytes exceeds Limits.max_alloc "
                    f"({self._limits.max_alloc}); receive it with recv_into",
                )
            view = memoryview(alloc_buffer(header.length)).cast("B")[: header.length]
            self._io(lambda: recv_exactly(self._sock, view))
            return view

    # -- one-sided -----------------------------------------------------------------
    def _rma_socket(self) -> ByteStream:
        if self._rma_dial is None:
            raise TransportError(
                "put/get target regions registered on a listener: call them on the comm "
                "returned by connect(), not on one returned by accept()"
            )
        if self._closed:
            raise TransportError(f"connection to {self.peer_address} is closed")
        if self._rma_sock is None:
            sock = self._rma_dial()
            sock.settimeout(self.op_timeout)
            self._rma_sock = sock
        return self._rma_sock

    def _rma_reply(self, sock: ByteStream, expect: Kind) -> tuple[frames.Header, str | None]:
        """Read the answer to a request: its header, or the error text the peer served."""
        header, _ = read_frame_header(sock, self._rma_hdr, self._limits)
        if header.kind is Kind.ERROR:
            if header.length > MAX_ERROR:
                raise FrameError(f"peer sent an error text of {header.length} bytes")
            text = memoryview(bytearray(header.length))
            recv_exactly(sock, text)
            return header, bytes(text).decode("utf-8", "replace")
        if header.kind is not expect:
            raise FrameError(f"expected {expect.name}, got {header.kind.name}")
        return header, None

    @staticmethod
    def _check_target(region: str, offset: int) -> None:
        if not isinstance(region, str) or not region or len(region.encode("utf-8")) > 256:
            raise ConfigError(f"region must be a non-empty name of <= 256 bytes, got {region!r}")
        if not isinstance(offset, int) or offset < 0:
            raise ConfigError(f"offset must be an int >= 0, got {offset!r}")

    def _served_error(self, request: str, error: str | None) -> None:
        if error is not None:
            raise TransportError(f"{request} refused by {self.peer_address}: {error}")

    def put(self, data: Buffer, region: str, offset: int = 0) -> None:
        """Write ``data`` into the listener's ``region`` at ``offset``; returns once it is there."""
        self._check_target(region, offset)
        view = readable_bytes(data)
        header = frames.pack_frame_header(
            Kind.PUT, view.nbytes, RmaDesc(region, offset, view.nbytes)
        )
        with self._rma_lock:
            sock = self._rma_socket()
            self._rma_io(lambda: sendmsg_all(sock, (header, view)))
            _, error = self._rma_io(lambda: self._rma_reply(sock, Kind.PUT_ACK))
            self._served_error(f"put to region {region!r}", error)

    def get(self, buf: Buffer, region: str, offset: int = 0) -> int:
        """Read ``len(buf)`` bytes of the listener's ``region`` at ``offset`` into ``buf``."""
        self._check_target(region, offset)
        dest = writable_bytes(buf, "get buffer")
        header = frames.pack_frame_header(Kind.GET, 0, RmaDesc(region, offset, dest.nbytes))
        with self._rma_lock:
            sock = self._rma_socket()
            self._rma_io(lambda: sock.sendall(header))
            reply, error = self._rma_io(lambda: self._rma_reply(sock, Kind.GET_REPLY))
            self._served_error(f"get from region {region!r}", error)
            if reply.length != dest.nbytes:
                self._close_rma()
                raise FrameError(f"GET of {dest.nbytes} bytes answered with {reply.length}")
            self._rma_io(lambda: recv_exactly(sock, dest))
            return dest.nbytes

    # -- plumbing ------------------------------------------------------------------
    def _broken(self, exc: BaseException) -> TFYarnError:
        """Close this comm after ``exc`` on its socket; return the error to raise.

        A malformed frame (FrameError) or a lost connection leaves the byte stream at an
        unknown position, so the comm cannot be used again.
        """
        if self._closed:  # close() from another thread woke us: say so, not "peer closed"
            return TransportError(f"connection to {self.peer_address} was closed locally")
        self.close()
        if isinstance(exc, FrameError):
            return FrameError(f"{exc} (from {self.peer_address}; connection closed)")
        if isinstance(exc, TransportError):
            return exc
        return self._os_failure(exc)

    def _os_failure(self, exc: BaseException, what: str = "connection") -> TransportError:
        """The TransportError for a socket error, naming op_timeout when that passed."""
        if isinstance(exc, TimeoutError):
            return TransportError(
                f"{what} to {self.peer_address}: no progress within op_timeout="
                f"{self.op_timeout} s (TransportOptions.op_timeout); connection closed"
            )
        return TransportError(f"{what} to {self.peer_address} failed: {exc}")

    def _io(self, fn: Callable[[], Any]) -> Any:
        """Run socket work; a lost connection or a malformed frame closes this comm."""
        if self._closed:
            raise TransportError(f"connection to {self.peer_address} is closed")
        try:
            return fn()
        except FrameError as exc:
            self.close()
            raise FrameError(f"{exc} (from {self.peer_address}; connection closed)") from exc
        except TransportError:
            self.close()
            raise
        except OSError as exc:
            self.close()
            raise self._os_failure(exc) from exc

    def _rma_io(self, fn: Callable[[], Any]) -> Any:
        """Run RMA socket work; any failure closes the RMA connection (reopened on next use)."""
        try:
            return fn()
        except (FrameError, TransportError):
            self._close_rma()
            raise
        except OSError as exc:
            self._close_rma()
            raise self._os_failure(exc, "RMA connection") from exc

    def _fail(self, message: str) -> None:
        self.close()
        raise FrameError(f"{message} (from {self.peer_address}; connection closed)")

    def _close_rma(self) -> None:
        sock, self._rma_sock = self._rma_sock, None
        if sock is not None:
            close_stream(sock)

    def close(self) -> None:
        """Close the data and RMA connections; idempotent, wakes blocked receivers."""
        if self._closed:
            return
        self._closed = True
        close_stream(self._sock)
        self._close_rma()


def close_stream(sock: ByteStream) -> None:
    # shutdown() wakes a thread blocked in recv on this socket; close() alone does not.
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)
    sock.close()


def serve_rma(
    conn: ByteStream, regions: RegionTable, limits: Limits, stopped: Callable[[], bool]
) -> None:
    """Serve one peer's PUT/GET requests on ``regions`` until it disconnects.

    A request for an unknown region or a range outside it is answered with an ERROR
    frame (the connection stays open); a malformed frame raises FrameError (the caller
    closes the connection).
    """
    hdr = memoryview(bytearray(HEADER_SIZE))
    while not stopped():
        try:
            header, ext = read_frame_header(conn, hdr, limits)
        except TransportError:
            return  # peer closed: normal end
        if not isinstance(ext, RmaDesc) or header.kind not in (Kind.PUT, Kind.GET):
            raise FrameError(f"expected PUT/GET on the RMA channel, got {header.kind.name}")
        if header.kind is Kind.PUT:
            try:
                if ext.nbytes != header.length:
                    raise TransportError(
                        f"PUT announces {ext.nbytes} bytes, carries {header.length}"
                    )
                target = regions.slice(ext.name, ext.offset, header.length)
            except TransportError as exc:
                drain(conn, header.length)
                send_error(conn, str(exc))
                continue
            recv_exactly(conn, target)
            conn.sendall(frames.pack_frame_header(Kind.PUT_ACK, 0))
        else:
            try:
                source = regions.slice(ext.name, ext.offset, ext.nbytes)
            except TransportError as exc:
                send_error(conn, str(exc))
                continue
            sendmsg_all(conn, (frames.pack_frame_header(Kind.GET_REPLY, source.nbytes), source))


def send_error(conn: ByteStream, message: str) -> None:
    """Answer a request with an ERROR frame carrying ``message``."""
    text = message.encode("utf-8")[:MAX_ERROR]
    conn.sendall(frames.pack_frame_header(Kind.ERROR, len(text)) + text)


_CLOSED = object()


class AcceptQueue:
    """Authenticated comms waiting for ``Listener.accept``; closing wakes every waiter."""

    def __init__(self, address: str) -> None:
        self._address = address
        self._queue: queue.Queue[Any] = queue.Queue()

    def put(self, comm: Comm) -> None:
        """Hand an authenticated comm to the next ``get``."""
        self._queue.put(comm)

    def get(self, timeout: float | None) -> Comm:
        """Return the next comm.

        Raises
        ------
        TransportError
            None arrived within ``timeout`` seconds, or the listener was closed.
        """
        try:
            item = self._queue.get(timeout=timeout)
        except queue.Empty:
            raise TransportError(
                f"no peer connected to {self._address} within {timeout} s"
            ) from None
        if item is _CLOSED:
            self._queue.put(_CLOSED)  # for the next waiter
            raise TransportError(f"listener {self._address} is closed")
        return item  # type: ignore[no-any-return,unused-ignore]

    def close(self) -> list[Comm]:
        """Wake every waiter with an error; return the comms nobody accepted."""
        left = []
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                break
            if item is not _CLOSED:
                left.append(item)
        self._queue.put(_CLOSED)
        return left


class StreamListener(Listener):
    """What the stream listeners (tcp, grpc) share: the queue of authenticated peers and
    the table of regions served to peers' put/get.

    Subclasses set ``address``, then call :meth:`_init_stream_listener` before they start
    accepting.
    """

    _accepted: AcceptQueue
    _regions: RegionTable

    def _init_stream_listener(self) -> None:
        self._accepted = AcceptQueue(self.address)
        self._regions = RegionTable()

    def accept(self, timeout: float | None = None) -> Comm:
        """Return the next authenticated peer's comm.

        Raises
        ------
        TransportError
            No peer connected within ``timeout`` seconds, or the listener is (or gets)
            closed.
        """
        return self._accepted.get(timeout)

    def register(self, region: str, buf: Buffer) -> None:
        """Expose writable ``buf`` as ``region`` to peers' put/get."""
        self._regions.register(region, buf)

    def unregister(self, region: str) -> None:
        """Stop exposing ``region``."""
        self._regions.unregister(region)
