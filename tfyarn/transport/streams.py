"""Framed messages over any connected byte stream: shared by the tcp and grpc backends.

A :class:`StreamComm` turns a connected, authenticated byte stream (a TCP socket, or a
gRPC stream adapted to look like one) into a :class:`~tfyarn.transport.base.Comm`:
messages are :mod:`~tfyarn.transport.frames` frames, received straight into the
caller's buffer. One-sided put/get travel on a *second* stream (opened on first use)
that the listener serves with :func:`serve_rma` straight into/out of the registered
region; keeping them off the data stream means a put never waits behind, or steals,
the messages another thread is receiving.

Every frame on both streams carries its tag (:mod:`tfyarn.transport.integrity`), made
and checked by a :class:`FramedStream`; a frame that fails it closes the connection and
is logged.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import socket
import threading
from collections.abc import Callable, Sequence
from typing import Any, NoReturn, Protocol

from tfyarn.errors import ConfigError, ForgedFrameError, FrameError, TFYarnError, TransportError
from tfyarn.transport import frames
from tfyarn.transport.base import Buffer, Comm, Listener, recv_exactly
from tfyarn.transport.frames import HEADER_SIZE, Kind, Limits, RmaDesc, TensorDesc
from tfyarn.transport.integrity import TAG_BYTES, FrameAuth, FrameMac
from tfyarn.transport.memory import RegionTable, alloc_buffer, readable_bytes, writable_bytes

__all__ = [
    "MAX_ERROR",
    "AcceptQueue",
    "ByteStream",
    "FramedStream",
    "StreamComm",
    "StreamListener",
    "close_stream",
    "format_address",
    "sendmsg_all",
    "serve_rma",
]

log = logging.getLogger(__name__)

#: Longest error text a peer may send back for a failed put/get.
MAX_ERROR = 64 * 1024
#: Scratch size used to discard a message that cannot be delivered.
_DRAIN_CHUNK = 1 << 20
#: A received payload is hashed in chunks of this size right after each arrived, while
#: it is still in the CPU's cache.
_HASH_CHUNK = 256 << 10


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


class FramedStream:
    """Tagged frames over one connected byte stream: what both ends of a channel use.

    Every frame sent carries its tag, and every frame received is checked against its
    own (:mod:`tfyarn.transport.integrity`); a payload is hashed chunk by chunk as it
    arrives, in the caller's buffer. A frame is read in steps, :meth:`read_header`, then
    :meth:`read_payload` or :meth:`drain`, then :meth:`end`, so that the caller decides
    where the payload goes once it knows its size. One sender and one receiver at a time.

    Parameters
    ----------
    sock : ByteStream
        The connection, after the preamble that returned ``tags``.
    tags : FrameAuth
        The connection's frame auth (:func:`tfyarn.transport.preamble.open_channel` or
        :func:`~tfyarn.transport.preamble.accept_channel`).
    limits : Limits
        Bounds on received frames.
    peer : str
        The peer's URL, for errors and the log.
    """

    def __init__(self, sock: ByteStream, tags: FrameAuth, limits: Limits, peer: str) -> None:
        self.sock = sock
        self._signer = tags.signer
        self._verifier = tags.verifier
        self._limits = limits
        self._peer = peer
        self._hdr = memoryview(bytearray(HEADER_SIZE))
        self._tag = memoryview(bytearray(TAG_BYTES))

    def send(
        self,
        kind: Kind,
        payload: memoryview | bytes = b"",
        ext: TensorDesc | RmaDesc | None = None,
    ) -> None:
        """Send one frame: header, extension, ``payload`` (not copied), then its tag."""
        header = frames.pack_frame_header(kind, len(payload), ext)
        sendmsg_all(self.sock, (header, payload, self._signer.tag(header, payload)))

    def read_header(self) -> tuple[frames.Header, TensorDesc | RmaDesc | None, FrameMac]:
        """Read the next header and its extension; return them and the frame's tag so far.

        Raises
        ------
        FrameError
            The header or extension is invalid (the stream's position is lost).
        TransportError
            The peer closed the connection.
        """
        recv_exactly(self.sock, self._hdr, what="frame header")
        header = frames.parse_header(self._hdr, self._limits)
        mac = self._verifier.start(self._hdr)
        if not header.ext_len:
            return header, None, mac
        ext_buf = memoryview(bytearray(header.ext_len))
        recv_exactly(self.sock, ext_buf, what="frame extension")
        mac.update(ext_buf)
        return header, frames.parse_extension(header, ext_buf, self._limits), mac

    def read_payload(self, dest: memoryview, mac: FrameMac) -> None:
        """Fill ``dest`` (bytes) with payload, hashing each chunk while it is in cache."""
        for start in range(0, dest.nbytes, _HASH_CHUNK):
            chunk = dest[start : start + _HASH_CHUNK]
            recv_exactly(self.sock, chunk, what="frame payload")
            mac.update(chunk)

    def drain(self, nbytes: int, mac: FrameMac) -> None:
        """Read and discard ``nbytes`` of payload (hashed all the same: the tag covers them)."""
        scratch = memoryview(bytearray(min(nbytes, _DRAIN_CHUNK)))
        while nbytes:
            step = min(nbytes, scratch.nbytes)
            self.read_payload(scratch[:step], mac)
            nbytes -= step

    def end(self, mac: FrameMac) -> None:
        """Read the frame's tag and check it.

        Raises
        ------
        ForgedFrameError
            The frame was forged, replayed, reordered or altered (logged here).
        """
        recv_exactly(self.sock, self._tag, what="frame tag")
        try:
            self._verifier.check(mac, self._tag, peer=self._peer)
        except ForgedFrameError as exc:
            log.warning("refused a frame: %s", exc)
            raise

    def read_small(self, header: frames.Header, mac: FrameMac, limit: int, what: str) -> bytes:
        """The whole, short payload of ``header`` (an error text), checked with its tag."""
        if header.length > limit:
            raise FrameError(f"peer sent {what} of {header.length} bytes (the limit is {limit})")
        text = memoryview(bytearray(header.length))
        self.read_payload(text, mac)
        self.end(mac)
        return bytes(text)


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
    tags : FrameAuth
        What the preamble returned: the tags of this connection's frames.
    transport : str
        Name reported in :attr:`transport`.
    peer_address : str
        The peer's URL, for messages.
    limits : Limits
        Bounds on received frames.
    rma_dial : callable, optional
        Opens the RMA connection on first put/get (and returns it with its frame auth);
        None on the accepting side.
    op_timeout : float or None
        Seconds one send/recv/put/get may block; when it passes, the comm is closed
        (the stream's position is then unknown). None: no limit.
    """

    def __init__(
        self,
        sock: ByteStream,
        tags: FrameAuth,
        *,
        transport: str,
        peer_address: str,
        limits: Limits,
        rma_dial: Callable[[], tuple[ByteStream, FrameAuth]] | None = None,
        op_timeout: float | None = None,
    ) -> None:
        sock.settimeout(op_timeout)
        self.op_timeout = op_timeout
        self._sock = sock
        self._data = FramedStream(sock, tags, limits, peer_address)
        self.transport = transport
        self.peer_address = peer_address
        self._limits = limits
        self._rma_dial = rma_dial
        self._rma: FramedStream | None = None
        self._send_lock = threading.Lock()
        self._recv_lock = threading.Lock()
        self._rma_lock = threading.Lock()
        self._closed = False

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` ran (here, or because the stream broke)."""
        return self._closed

    # -- data stream ---------------------------------------------------------------
    def send(self, data: Buffer) -> None:
        """Send one message; NumPy arrays carry their dtype and shape for checking."""
        view = readable_bytes(data)
        desc = frames.tensor_desc_of(data)
        with self._send_lock:
            if self._closed:
                raise TransportError(f"connection to {self.peer_address} is closed")
            try:
                self._data.send(Kind.MSG, view, desc)
            except (OSError, TransportError) as exc:
                raise self._broken(exc) from exc

    def _next_message(self) -> tuple[frames.Header, TensorDesc | None, FrameMac]:
        if self._closed:
            raise TransportError(f"connection to {self.peer_address} is closed")
        try:
            header, ext, mac = self._data.read_header()
        except (OSError, TransportError) as exc:
            raise self._broken(exc) from exc
        if header.kind is not Kind.MSG or isinstance(ext, RmaDesc):
            self._fail(f"peer sent a {header.kind.name} frame on the data stream")
        return header, ext, mac

    def _refuse(self, nbytes: int, mac: FrameMac, message: str) -> NoReturn:
        """Discard a message that cannot be delivered; the stream stays usable."""

        def discard() -> None:
            self._data.drain(nbytes, mac)
            self._data.end(mac)

        self._io(discard)
        raise FrameError(f"{message} (from {self.peer_address}; message discarded)")

    def _payload(self, dest: memoryview, mac: FrameMac) -> None:
        """Receive the payload into ``dest`` and check the frame's tag."""

        def receive() -> None:
            self._data.read_payload(dest, mac)
            self._data.end(mac)

        self._io(receive)

    def recv_into(self, buf: Buffer) -> int:
        """Receive the next message straight into ``buf``; return its length.

        Raises
        ------
        FrameError
            The message is larger than ``buf``, or its dtype/shape differ from the array
            ``buf``; the message is discarded and the connection stays usable. Malformed
            frames close the connection.
        ForgedFrameError
            The message failed its tag; ``buf`` may hold part of it. The connection is
            closed.
        """
        dest = writable_bytes(buf, "recv_into buffer")
        dtype, shape = _array_desc(buf)
        with self._recv_lock:
            header, desc, mac = self._next_message()
            if header.length > dest.nbytes:
                self._refuse(
                    header.length,
                    mac,
                    f"message of {header.length} bytes does not fit a buffer of {dest.nbytes}",
                )
            try:
                frames.check_tensor_matches(desc, dtype, shape)
            except FrameError as exc:
                self._refuse(header.length, mac, str(exc))
            self._payload(dest[: header.length] if header.length != dest.nbytes else dest, mac)
            return header.length

    def recv(self) -> memoryview:
        """Receive the next message into a new (pool) buffer and return a view of it."""
        with self._recv_lock:
            header, _, mac = self._next_message()
            if header.length > self._limits.max_alloc:
                self._refuse(
                    header.length,
                    mac,
                    f"message of {header.length} bytes exceeds Limits.max_alloc "
                    f"({self._limits.max_alloc}); receive it with recv_into",
                )
            view = memoryview(alloc_buffer(header.length)).cast("B")[: header.length]
            self._payload(view, mac)
            return view

    # -- one-sided -----------------------------------------------------------------
    def _rma_stream(self) -> FramedStream:
        if self._rma_dial is None:
            raise TransportError(
                "put/get target regions registered on a listener: call them on the comm "
                "returned by connect(), not on one returned by accept()"
            )
        if self._closed:
            raise TransportError(f"connection to {self.peer_address} is closed")
        if self._rma is None:
            sock, tags = self._rma_dial()
            sock.settimeout(self.op_timeout)
            self._rma = FramedStream(sock, tags, self._limits, self.peer_address)
        return self._rma

    @staticmethod
    def _rma_reply(rma: FramedStream, expect: Kind) -> tuple[frames.Header, FrameMac]:
        """Read the header of the answer to a request.

        Raises
        ------
        TransportError
            The peer answered with the error text it served (the frame is consumed).
        FrameError
            The answer is neither ``expect`` nor an error.
        """
        header, _, mac = rma.read_header()
        if header.kind is Kind.ERROR:
            text = rma.read_small(header, mac, MAX_ERROR, "an error text")
            raise _ServedError(text.decode("utf-8", "replace"))
        if header.kind is not expect:
            raise FrameError(f"expected {expect.name}, got {header.kind.name}")
        return header, mac

    @staticmethod
    def _check_target(region: str, offset: int) -> None:
        if not isinstance(region, str) or not region or len(region.encode("utf-8")) > 256:
            raise ConfigError(f"region must be a non-empty name of <= 256 bytes, got {region!r}")
        if not isinstance(offset, int) or offset < 0:
            raise ConfigError(f"offset must be an int >= 0, got {offset!r}")

    def _served(self, request: str, fn: Callable[[], Any]) -> Any:
        """Run one request's exchange; an error the peer served becomes a TransportError."""
        try:
            return self._rma_io(fn)
        except _ServedError as exc:
            raise TransportError(f"{request} refused by {self.peer_address}: {exc}") from None

    def put(self, data: Buffer, region: str, offset: int = 0) -> None:
        """Write ``data`` into the listener's ``region`` at ``offset``; returns once it is there."""
        self._check_target(region, offset)
        view = readable_bytes(data)

        def exchange(rma: FramedStream) -> None:
            rma.send(Kind.PUT, view, RmaDesc(region, offset, view.nbytes))
            header, mac = self._rma_reply(rma, Kind.PUT_ACK)
            rma.read_small(header, mac, 0, "a PUT_ACK")

        with self._rma_lock:
            rma = self._rma_stream()
            self._served(f"put to region {region!r}", lambda: exchange(rma))

    def get(self, buf: Buffer, region: str, offset: int = 0) -> int:
        """Read ``len(buf)`` bytes of the listener's ``region`` at ``offset`` into ``buf``."""
        self._check_target(region, offset)
        dest = writable_bytes(buf, "get buffer")

        def exchange(rma: FramedStream) -> None:
            rma.send(Kind.GET, b"", RmaDesc(region, offset, dest.nbytes))
            reply, mac = self._rma_reply(rma, Kind.GET_REPLY)
            if reply.length != dest.nbytes:
                raise FrameError(f"GET of {dest.nbytes} bytes answered with {reply.length}")
            rma.read_payload(dest, mac)
            rma.end(mac)

        with self._rma_lock:
            rma = self._rma_stream()
            self._served(f"get from region {region!r}", lambda: exchange(rma))
            return dest.nbytes

    # -- plumbing ------------------------------------------------------------------
    def _broken(self, exc: BaseException) -> TFYarnError:
        """Close this comm after ``exc`` on its socket; return the error to raise.

        A malformed or forged frame (FrameError) or a lost connection leaves the byte
        stream at an unknown position, so the comm cannot be used again.
        """
        if self._closed:  # close() from another thread woke us: say so, not "peer closed"
            return TransportError(f"connection to {self.peer_address} was closed locally")
        self.close()
        if isinstance(exc, FrameError):
            return type(exc)(f"{exc} (from {self.peer_address}; connection closed)")
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
        except (OSError, TransportError) as exc:
            raise self._broken(exc) from exc

    def _rma_io(self, fn: Callable[[], Any]) -> Any:
        """Run RMA socket work; any failure closes the RMA connection (reopened on next use).

        An error text the peer served leaves the connection in step, and open.
        """
        try:
            return fn()
        except _ServedError:
            raise
        except (FrameError, TransportError):
            self._close_rma()
            raise
        except OSError as exc:
            self._close_rma()
            raise self._os_failure(exc, "RMA connection") from exc

    def _fail(self, message: str) -> NoReturn:
        self.close()
        raise FrameError(f"{message} (from {self.peer_address}; connection closed)")

    def _close_rma(self) -> None:
        rma, self._rma = self._rma, None
        if rma is not None:
            close_stream(rma.sock)

    def close(self) -> None:
        """Close the data and RMA connections; idempotent, wakes blocked receivers."""
        if self._closed:
            return
        self._closed = True
        close_stream(self._sock)
        self._close_rma()


class _ServedError(Exception):
    """The peer answered a put/get with an ERROR frame (text in ``args[0]``)."""


def close_stream(sock: ByteStream) -> None:
    # shutdown() wakes a thread blocked in recv on this socket; close() alone does not.
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)
    sock.close()


def serve_rma(conn: FramedStream, regions: RegionTable, stopped: Callable[[], bool]) -> None:
    """Serve one peer's PUT/GET requests on ``regions`` until it disconnects.

    A request for an unknown region or a range outside it is answered with an ERROR
    frame (the connection stays open); a malformed or forged frame raises FrameError
    (the caller closes the connection). A PUT lands in the region as it arrives, so one
    that fails its tag has been written there already: its sender never gets the
    PUT_ACK, and its put raises, so the job fails instead of training on it.
    """
    while not stopped():
        try:
            header, ext, mac = conn.read_header()
        except FrameError:
            raise
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
                conn.drain(header.length, mac)
                conn.end(mac)
                _send_error(conn, str(exc))
                continue
            conn.read_payload(target, mac)
            conn.end(mac)
            conn.send(Kind.PUT_ACK)
        else:
            conn.end(mac)
            try:
                source = regions.slice(ext.name, ext.offset, ext.nbytes)
            except TransportError as exc:
                _send_error(conn, str(exc))
                continue
            conn.send(Kind.GET_REPLY, source)


def _send_error(conn: FramedStream, message: str) -> None:
    """Answer a request with an ERROR frame carrying ``message``."""
    conn.send(Kind.ERROR, message.encode("utf-8")[:MAX_ERROR])


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
