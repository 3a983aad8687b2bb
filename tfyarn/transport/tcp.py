"""The ``tcp://`` backend: framed messages over plain sockets, received in place.

Wire protocol, per TCP connection:

1. the mutual HMAC handshake of :mod:`tfyarn.transport.auth`;
2. one ``HELLO`` frame from the connecting side naming the channel: ``b"data"`` (the
   ordered message stream of a :class:`TcpComm`) or ``b"rma"`` (put/get requests);
3. frames of :mod:`tfyarn.transport.frames`.

One-sided put/get are emulated with requests on a *separate* RMA connection that the
connecting side opens on first use and that a thread of the listener serves straight
into/out of the registered region. Keeping RMA off the data connection means a put
never has to wait behind (or steal) the data stream another thread is receiving.

Zero copy: ``send`` hands the header and the caller's buffer to one ``sendmsg``;
``recv_into`` reads the socket straight into the caller's buffer; a PUT is read
straight into the region and a GET answered straight from it.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import socket
import threading
from collections.abc import Callable, Sequence
from typing import Any

from tfyarn.errors import (
    AuthenticationError,
    ConfigError,
    FrameError,
    TransportError,
)
from tfyarn.transport import auth, frames
from tfyarn.transport.base import Buffer, Comm, Listener
from tfyarn.transport.frames import HEADER_SIZE, Kind, Limits, RmaDesc, TensorDesc
from tfyarn.transport.memory import RegionTable, alloc_buffer, readable_bytes, writable_bytes

__all__ = ["TcpComm", "TcpListener", "connect", "listen"]

log = logging.getLogger(__name__)

_DATA = b"data"
_RMA = b"rma"
#: Longest error text a peer may send back for a failed put/get.
_MAX_ERROR = 64 * 1024
#: Scratch size used to discard a message that cannot be delivered.
_DRAIN_CHUNK = 1 << 20


def _format_address(scheme: str, host: str, port: int) -> str:
    return f"{scheme}://[{host}]:{port}" if ":" in host else f"{scheme}://{host}:{port}"


def _sendmsg_all(sock: socket.socket, parts: Sequence[memoryview | bytes]) -> None:
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


def _recv_exact(sock: socket.socket, view: memoryview) -> None:
    """Fill ``view`` from the socket; EOF before the end is a TransportError."""
    got = 0
    total = view.nbytes
    while got < total:
        n = sock.recv_into(view[got:], total - got)
        if not n:
            raise TransportError(f"peer closed the connection ({got} of {total} bytes received)")
        got += n


def _drain(sock: socket.socket, nbytes: int) -> None:
    """Read and discard ``nbytes`` so that the stream stays in step after a refused frame."""
    scratch = memoryview(bytearray(min(nbytes, _DRAIN_CHUNK)))
    while nbytes:
        step = min(nbytes, scratch.nbytes)
        _recv_exact(sock, scratch[:step])
        nbytes -= step


def _read_frame_header(
    sock: socket.socket, hdr: memoryview, limits: Limits
) -> tuple[frames.Header, TensorDesc | RmaDesc | None]:
    """Read one header and its extension; FrameError if the peer's bytes are invalid."""
    _recv_exact(sock, hdr)
    header = frames.parse_header(hdr, limits)
    ext_buf = memoryview(bytearray(header.ext_len))
    if header.ext_len:
        _recv_exact(sock, ext_buf)
    return header, frames.parse_extension(header, ext_buf, limits)


def _array_desc(buf: Buffer) -> tuple[str | None, tuple[int, ...] | None]:
    """dtype string and shape of ``buf`` when it is an array, else (None, None)."""
    desc = frames.tensor_desc_of(buf)
    return (desc.dtype, desc.shape) if desc else (None, None)


def _tune(sock: socket.socket) -> None:
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


class TcpComm(Comm):
    """One authenticated data connection (see the module docstring for the protocol).

    Obtained from :func:`connect` or :meth:`TcpListener.accept`; not built directly.
    """

    transport = "tcp"

    def __init__(
        self,
        sock: socket.socket,
        *,
        peer_address: str,
        limits: Limits,
        rma_dial: Callable[[], socket.socket] | None = None,
    ) -> None:
        sock.settimeout(None)
        _tune(sock)
        self._sock = sock
        self.peer_address = peer_address
        self._limits = limits
        self._rma_dial = rma_dial
        self._rma_sock: socket.socket | None = None
        self._send_lock = threading.Lock()
        self._recv_lock = threading.Lock()
        self._rma_lock = threading.Lock()
        self._hdr = memoryview(bytearray(HEADER_SIZE))
        self._rma_hdr = memoryview(bytearray(HEADER_SIZE))
        self._closed = False

    # -- data stream ---------------------------------------------------------------
    def send(self, data: Buffer) -> None:
        """Send one message; NumPy arrays carry their dtype and shape for checking."""
        view = readable_bytes(data)
        header = frames.pack_frame_header(Kind.MSG, view.nbytes, frames.tensor_desc_of(data))
        with self._send_lock:
            self._io(lambda: _sendmsg_all(self._sock, (header, view)))

    def _next_message(self) -> tuple[frames.Header, TensorDesc | None]:
        header, ext = self._io(lambda: _read_frame_header(self._sock, self._hdr, self._limits))
        if header.kind is not Kind.MSG or isinstance(ext, RmaDesc):
            self._fail(f"peer sent a {header.kind.name} frame on the data stream")
        return header, ext  # type: ignore[return-value]

    def _refuse(self, nbytes: int, message: str) -> None:
        """Discard a message that cannot be delivered; the stream stays usable."""
        self._io(lambda: _drain(self._sock, nbytes))
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
            self._io(lambda: _recv_exact(self._sock, dest[: header.length]))
            return header.length

    def recv(self) -> memoryview:
        """Receive the next message into a new (pool) buffer and return a view of it."""
        with self._recv_lock:
            header, _ = self._next_message()
            view = memoryview(alloc_buffer(header.length)).cast("B")[: header.length]
            self._io(lambda: _recv_exact(self._sock, view))
            return view

    # -- one-sided -----------------------------------------------------------------
    def _rma_socket(self) -> socket.socket:
        if self._rma_dial is None:
            raise TransportError(
                "put/get target regions registered on a listener: call them on the comm "
                "returned by connect(), not on one returned by accept()"
            )
        if self._closed:
            raise TransportError(f"connection to {self.peer_address} is closed")
        if self._rma_sock is None:
            self._rma_sock = self._rma_dial()
        return self._rma_sock

    def _rma_reply(self, sock: socket.socket, expect: Kind) -> tuple[frames.Header, str | None]:
        """Read the answer to a request: its header, or the error text the peer served."""
        header, _ = _read_frame_header(sock, self._rma_hdr, self._limits)
        if header.kind is Kind.ERROR:
            if header.length > _MAX_ERROR:
                raise FrameError(f"peer sent an error text of {header.length} bytes")
            text = memoryview(bytearray(header.length))
            _recv_exact(sock, text)
            return header, bytes(text).decode("utf-8", "replace")
        if header.kind is not expect:
            raise FrameError(f"expected {expect.name}, got {header.kind.name}")
        return header, None

    def _served_error(self, request: str, error: str | None) -> None:
        if error is not None:
            raise TransportError(f"{request} refused by {self.peer_address}: {error}")

    def put(self, data: Buffer, region: str, offset: int = 0) -> None:
        """Write ``data`` into the listener's ``region`` at ``offset``; returns once it is there."""
        view = readable_bytes(data)
        header = frames.pack_frame_header(
            Kind.PUT, view.nbytes, RmaDesc(region, offset, view.nbytes)
        )
        with self._rma_lock:
            sock = self._rma_socket()
            self._rma_io(lambda: _sendmsg_all(sock, (header, view)))
            _, error = self._rma_io(lambda: self._rma_reply(sock, Kind.PUT_ACK))
            self._served_error(f"put to region {region!r}", error)

    def get(self, buf: Buffer, region: str, offset: int = 0) -> int:
        """Read ``len(buf)`` bytes of the listener's ``region`` at ``offset`` into ``buf``."""
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
            self._rma_io(lambda: _recv_exact(sock, dest))
            return dest.nbytes

    # -- plumbing ------------------------------------------------------------------
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
            raise TransportError(f"connection to {self.peer_address} failed: {exc}") from exc

    def _rma_io(self, fn: Callable[[], Any]) -> Any:
        """Run RMA socket work; any failure closes the RMA connection (reopened on next use)."""
        try:
            return fn()
        except (FrameError, TransportError):
            self._close_rma()
            raise
        except OSError as exc:
            self._close_rma()
            raise TransportError(f"RMA connection to {self.peer_address} failed: {exc}") from exc

    def _fail(self, message: str) -> None:
        self.close()
        raise FrameError(f"{message} (from {self.peer_address}; connection closed)")

    def _close_rma(self) -> None:
        sock, self._rma_sock = self._rma_sock, None
        if sock is not None:
            _close_socket(sock)

    def close(self) -> None:
        """Close the data and RMA connections; idempotent, wakes blocked receivers."""
        if self._closed:
            return
        self._closed = True
        _close_socket(self._sock)
        self._close_rma()


def _close_socket(sock: socket.socket) -> None:
    # shutdown() wakes a thread blocked in recv on this socket; close() alone does not.
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)
    sock.close()


class TcpListener(Listener):
    """Accepts authenticated peers; serves put/get on its registered regions.

    Built by :func:`listen`. Each incoming connection is authenticated on its own thread
    (so a slow or hostile peer delays nobody); a failed one is logged and closed while
    the listener keeps serving.
    """

    transport = "tcp"

    def __init__(
        self,
        host: str,
        port: int,
        *,
        secret: bytes,
        limits: Limits,
        handshake_timeout: float,
        reuse_port: bool,
        backlog: int,
        max_pending: int,
    ) -> None:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        try:
            self._sock = socket.create_server(
                (host, port), family=family, backlog=backlog, reuse_port=reuse_port
            )
        except OSError as exc:
            raise TransportError(f"cannot listen on {host}:{port}: {exc}") from exc
        self._host = host
        self.address = _format_address("tcp", host, self._sock.getsockname()[1])
        self._secret = secret
        self._limits = limits
        self._handshake_timeout = handshake_timeout
        self._pending = threading.BoundedSemaphore(max_pending)
        self._regions = RegionTable()
        self._queue: queue.Queue[TcpComm] = queue.Queue()
        self._lock = threading.Lock()
        self._comms: list[TcpComm] = []
        self._conns: set[socket.socket] = set()
        self._threads: set[threading.Thread] = set()
        self._closed = False
        self._acceptor = threading.Thread(
            target=self._accept_loop, name=f"tfyarn-tcp-accept-{self.address}", daemon=True
        )
        self._acceptor.start()

    def _accept_loop(self) -> None:
        while not self._closed:
            try:
                conn, addr = self._sock.accept()
            except OSError:
                return  # listening socket closed
            if not self._pending.acquire(blocking=False):
                log.warning("refused connection from %s: too many pending handshakes", addr)
                _close_socket(conn)
                continue
            t = threading.Thread(
                target=self._serve_connection,
                args=(conn, addr),
                daemon=True,
                name=f"tfyarn-tcp-conn-{addr}",
            )
            with self._lock:
                if self._closed:
                    self._pending.release()
                    _close_socket(conn)
                    return
                self._conns.add(conn)
                self._threads.add(t)
            t.start()

    def _serve_connection(self, conn: socket.socket, addr: tuple[Any, ...]) -> None:
        peer = _format_address("tcp", str(addr[0]), int(addr[1]))
        handed_over = False
        try:
            try:
                auth.server_handshake(conn, self._secret, timeout=self._handshake_timeout)
                conn.settimeout(self._handshake_timeout)
                header, _ = _read_frame_header(
                    conn, memoryview(bytearray(HEADER_SIZE)), self._limits
                )
                if header.kind is not Kind.HELLO or header.length > 16:
                    raise FrameError(f"expected HELLO, got {header.kind.name}")
                channel = memoryview(bytearray(header.length))
                _recv_exact(conn, channel)
            finally:
                self._pending.release()
            if bytes(channel) == _DATA:
                comm = TcpComm(conn, peer_address=peer, limits=self._limits)
                with self._lock:
                    if self._closed:
                        raise TransportError("listener closed")
                    # Forget comms the user closed, so a long-lived listener does not grow.
                    self._comms = [c for c in self._comms if not c._closed]
                    self._comms.append(comm)
                    self._conns.discard(conn)  # the comm owns the socket now
                self._queue.put(comm)
                handed_over = True
            elif bytes(channel) == _RMA:
                conn.settimeout(None)
                _tune(conn)
                self._serve_rma(conn, peer)
            else:
                raise FrameError(f"unknown channel {bytes(channel)!r}")
        except AuthenticationError as exc:
            log.warning("refused connection from %s: %s", peer, exc)
        except (FrameError, TransportError, OSError) as exc:
            if not self._closed:
                log.warning("dropped connection from %s: %s", peer, exc)
        finally:
            with self._lock:
                self._threads.discard(threading.current_thread())
                self._conns.discard(conn)
            if not handed_over:
                _close_socket(conn)

    def _serve_rma(self, conn: socket.socket, peer: str) -> None:
        """Serve PUT/GET requests of one peer until it disconnects."""
        hdr = memoryview(bytearray(HEADER_SIZE))
        while not self._closed:
            try:
                header, ext = _read_frame_header(conn, hdr, self._limits)
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
                    target = self._regions.slice(ext.name, ext.offset, header.length)
                except TransportError as exc:
                    _drain(conn, header.length)
                    self._send_error(conn, str(exc))
                    continue
                _recv_exact(conn, target)
                conn.sendall(frames.pack_frame_header(Kind.PUT_ACK, 0))
            else:
                try:
                    source = self._regions.slice(ext.name, ext.offset, ext.nbytes)
                except TransportError as exc:
                    self._send_error(conn, str(exc))
                    continue
                _sendmsg_all(
                    conn, (frames.pack_frame_header(Kind.GET_REPLY, source.nbytes), source)
                )

    @staticmethod
    def _send_error(conn: socket.socket, message: str) -> None:
        text = message.encode("utf-8")[:_MAX_ERROR]
        conn.sendall(frames.pack_frame_header(Kind.ERROR, len(text)) + text)

    def accept(self, timeout: float | None = None) -> TcpComm:
        """Return the next authenticated peer's comm.

        Raises
        ------
        TransportError
            No peer connected within ``timeout`` seconds, or the listener is closed.
        """
        if self._closed:
            raise TransportError(f"listener {self.address} is closed")
        try:
            return self._queue.get(timeout=timeout)
        except queue.Empty:
            raise TransportError(
                f"no peer connected to {self.address} within {timeout} s"
            ) from None

    def register(self, region: str, buf: Buffer) -> None:
        """Expose writable ``buf`` as ``region`` to peers' put/get."""
        self._regions.register(region, buf)

    def unregister(self, region: str) -> None:
        """Stop exposing ``region``."""
        self._regions.unregister(region)

    def close(self) -> None:
        """Stop accepting, close every connection, join the service threads; idempotent."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            comms, conns, threads = list(self._comms), list(self._conns), list(self._threads)
        _close_socket(self._sock)
        for comm in comms:
            comm.close()
        for conn in conns:
            _close_socket(conn)
        self._acceptor.join(5)
        for t in threads:
            t.join(5)
        self._regions.clear()


def listen(
    address: str,
    *,
    secret: Buffer,
    limits: Limits | None = None,
    handshake_timeout: float = 10.0,
    reuse_port: bool = False,
    backlog: int = 128,
    max_pending: int = 64,
) -> TcpListener:
    """Listen for tcp peers at ``address`` (``tcp://host:port``, port 0 for any).

    Parameters
    ----------
    address : str
        Where to bind; the listener's ``address`` has the real port.
    secret : bytes-like
        The job secret every peer must prove it holds.
    limits : Limits, optional
        Bounds on received frames.
    handshake_timeout : float
        Seconds a new peer has to authenticate and say which channel it opens.
    reuse_port : bool
        Bind with ``SO_REUSEPORT``, so that a port reserved by the node layer (a socket
        held open with the same option) can be taken over without a race.
    backlog : int
        ``listen()`` backlog.
    max_pending : int
        Most connections authenticating at once; more are closed and logged.
    """
    from tfyarn.transport import parse_address

    scheme, host, port = parse_address(address)
    if scheme != "tcp":
        raise ConfigError(f"tcp.listen needs a tcp:// address, got {address!r}")
    return TcpListener(
        host,
        port,
        secret=auth.check_secret(secret),
        limits=limits or frames.DEFAULT_LIMITS,
        handshake_timeout=handshake_timeout,
        reuse_port=reuse_port,
        backlog=backlog,
        max_pending=max_pending,
    )


def _dial(host: str, port: int, secret: bytes, channel: bytes, timeout: float) -> socket.socket:
    """Open, authenticate and announce one connection."""
    try:
        sock = socket.create_connection((host, port), timeout=timeout)
    except OSError as exc:
        raise TransportError(f"cannot connect to tcp://{host}:{port}: {exc}") from exc
    try:
        auth.client_handshake(sock, secret, timeout=timeout)
        sock.sendall(frames.pack_frame_header(Kind.HELLO, len(channel)) + channel)
    except BaseException:
        _close_socket(sock)
        raise
    sock.settimeout(None)
    _tune(sock)
    return sock


def connect(
    address: str,
    *,
    secret: Buffer,
    timeout: float = 30.0,
    limits: Limits | None = None,
) -> TcpComm:
    """Connect to a tcp listener, authenticate, and return the data comm.

    Parameters
    ----------
    address : str
        ``tcp://host:port`` of the listener.
    secret : bytes-like
        The job secret.
    timeout : float
        Seconds for the TCP connection and the handshake.
    limits : Limits, optional
        Bounds on received frames.

    Raises
    ------
    TransportError
        The listener is unreachable.
    AuthenticationError
        The listener refused our secret or does not hold it.
    """
    from tfyarn.transport import parse_address

    scheme, host, port = parse_address(address)
    if scheme != "tcp":
        raise ConfigError(f"tcp.connect needs a tcp:// address, got {address!r}")
    key = auth.check_secret(secret)
    sock = _dial(host, port, key, _DATA, timeout)
    return TcpComm(
        sock,
        peer_address=_format_address("tcp", host, port),
        limits=limits or frames.DEFAULT_LIMITS,
        rma_dial=lambda: _dial(host, port, key, _RMA, timeout),
    )
