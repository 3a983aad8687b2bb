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

import errno
import logging
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

from tfyarn.errors import AuthenticationError, ConfigError, FrameError, TransportError
from tfyarn.transport import auth, frames
from tfyarn.transport.base import Buffer
from tfyarn.transport.frames import HEADER_SIZE, Kind, Limits
from tfyarn.transport.streams import (
    StreamComm,
    StreamListener,
    close_stream,
    format_address,
    read_frame_header,
    recv_exact,
    serve_rma,
)

__all__ = ["TcpComm", "TcpListener", "connect", "listen"]

log = logging.getLogger(__name__)

_DATA = b"data"
_RMA = b"rma"


#: TCP keepalive (idle s, interval s, probes): a peer whose host vanished (power, cable,
#: kernel panic: no FIN, no RST) is detected after about idle + interval * probes seconds
#: instead of blocking a receiver for hours.
DEFAULT_KEEPALIVE = (30, 10, 3)


def _tune(sock: socket.socket, keepalive: tuple[int, int, int] | None) -> None:
    # Small frames (headers, acks) must not wait for Nagle's algorithm.
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    if keepalive is not None:
        idle, interval, probes = keepalive
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, idle)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, interval)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT, probes)


def _check_keepalive(keepalive: object) -> tuple[int, int, int] | None:
    if keepalive is None:
        return None
    if (
        not isinstance(keepalive, tuple | list)
        or len(keepalive) != 3
        or not all(isinstance(v, int) and v > 0 for v in keepalive)
    ):
        raise ConfigError(
            f"keepalive must be (idle_s, interval_s, probes) of positive ints or None, "
            f"got {keepalive!r}"
        )
    return (keepalive[0], keepalive[1], keepalive[2])


class TcpComm(StreamComm):
    """One authenticated tcp data connection; see :class:`~tfyarn.transport.streams.StreamComm`.

    Obtained from :func:`connect` or :meth:`TcpListener.accept`.
    """

    def __init__(
        self,
        sock: socket.socket,
        *,
        peer_address: str,
        limits: Limits,
        rma_dial: Callable[[], socket.socket] | None = None,
        keepalive: tuple[int, int, int] | None = DEFAULT_KEEPALIVE,
    ) -> None:
        _tune(sock, keepalive)
        super().__init__(
            sock, transport="tcp", peer_address=peer_address, limits=limits, rma_dial=rma_dial
        )


class TcpListener(StreamListener):
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
        keepalive: tuple[int, int, int] | None,
    ) -> None:
        self._keepalive = keepalive
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        try:
            self._sock = socket.create_server(
                (host, port), family=family, backlog=backlog, reuse_port=reuse_port
            )
        except OSError as exc:
            raise TransportError(f"cannot listen on {host}:{port}: {exc}") from exc
        self._host = host
        self.address = format_address("tcp", host, self._sock.getsockname()[1])
        self._init_stream_listener()
        self._secret = secret
        self._limits = limits
        self._handshake_timeout = handshake_timeout
        self._pending = threading.BoundedSemaphore(max_pending)
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
            except OSError as exc:
                if self._closed or exc.errno in (errno.EBADF, errno.EINVAL):
                    return  # the listening socket was closed
                # e.g. EMFILE: keep serving once descriptors free up, instead of going deaf
                log.error("accept on %s failed: %s; retrying", self.address, exc)
                time.sleep(0.1)
                continue
            if not self._pending.acquire(blocking=False):
                log.warning("refused connection from %s: too many pending handshakes", addr)
                close_stream(conn)
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
                    close_stream(conn)
                    return
                self._conns.add(conn)
                self._threads.add(t)
            t.start()

    def _serve_connection(self, conn: socket.socket, addr: tuple[Any, ...]) -> None:
        peer = format_address("tcp", str(addr[0]), int(addr[1]))
        handed_over = False
        try:
            try:
                auth.server_handshake(conn, self._secret, timeout=self._handshake_timeout)
                conn.settimeout(self._handshake_timeout)
                header, _ = read_frame_header(
                    conn, memoryview(bytearray(HEADER_SIZE)), self._limits
                )
                if header.kind is not Kind.HELLO or header.length > 16:
                    raise FrameError(f"expected HELLO, got {header.kind.name}")
                channel = memoryview(bytearray(header.length))
                recv_exact(conn, channel)
            finally:
                self._pending.release()
            if bytes(channel) == _DATA:
                comm = TcpComm(
                    conn, peer_address=peer, limits=self._limits, keepalive=self._keepalive
                )
                with self._lock:
                    if self._closed:
                        raise TransportError("listener closed")
                    # Forget comms the user closed, so a long-lived listener does not grow.
                    self._comms = [c for c in self._comms if not c._closed]
                    self._comms.append(comm)
                    self._conns.discard(conn)  # the comm owns the socket now
                self._accepted.put(comm)
                handed_over = True
            elif bytes(channel) == _RMA:
                conn.settimeout(None)
                _tune(conn, self._keepalive)
                serve_rma(conn, self._regions, self._limits, lambda: self._closed)
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
                close_stream(conn)

    def close(self) -> None:
        """Stop accepting, close every connection, join the service threads; idempotent."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            comms, conns, threads = list(self._comms), list(self._conns), list(self._threads)
        close_stream(self._sock)
        self._accepted.close()
        for comm in comms:
            comm.close()
        for conn in conns:
            close_stream(conn)
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
    keepalive: tuple[int, int, int] | None = DEFAULT_KEEPALIVE,
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
    keepalive : (int, int, int) or None
        TCP keepalive ``(idle_s, interval_s, probes)`` on every connection, so that a
        vanished peer host is detected; None turns it off.
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
        keepalive=_check_keepalive(keepalive),
    )


def _dial(
    host: str,
    port: int,
    secret: bytes,
    channel: bytes,
    timeout: float,
    keepalive: tuple[int, int, int] | None,
) -> socket.socket:
    """Open, authenticate and announce one connection."""
    try:
        sock = socket.create_connection((host, port), timeout=timeout)
    except OSError as exc:
        raise TransportError(f"cannot connect to tcp://{host}:{port}: {exc}") from exc
    try:
        auth.client_handshake(sock, secret, timeout=timeout)
        sock.sendall(frames.pack_frame_header(Kind.HELLO, len(channel)) + channel)
    except BaseException:
        close_stream(sock)
        raise
    sock.settimeout(None)
    _tune(sock, keepalive)
    return sock


def connect(
    address: str,
    *,
    secret: Buffer,
    timeout: float = 30.0,
    limits: Limits | None = None,
    keepalive: tuple[int, int, int] | None = DEFAULT_KEEPALIVE,
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
    keepalive : (int, int, int) or None
        TCP keepalive ``(idle_s, interval_s, probes)`` on every connection, so that a
        vanished peer host is detected; None turns it off.

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
    ka = _check_keepalive(keepalive)
    sock = _dial(host, port, key, _DATA, timeout, ka)
    return TcpComm(
        sock,
        peer_address=format_address("tcp", host, port),
        limits=limits or frames.DEFAULT_LIMITS,
        rma_dial=lambda: _dial(host, port, key, _RMA, timeout, ka),
        keepalive=ka,
    )
