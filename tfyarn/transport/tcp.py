"""The ``tcp://`` backend: framed messages over plain sockets, received in place.

Wire protocol, per TCP connection:

1. the preamble of :mod:`tfyarn.transport.preamble` (the mutual HMAC handshake, then a
   ``HELLO`` naming the channel): ``b"data"`` (the ordered message stream of a
   :class:`TcpComm`) or ``b"rma"`` (put/get requests);
2. frames of :mod:`tfyarn.transport.frames`.

One-sided put/get are emulated with requests on a *separate* RMA connection that the
connecting side opens on first use and that a thread of the listener serves straight
into/out of the registered region. Keeping RMA off the data connection means a put
never has to wait behind (or steal) the data stream another thread is receiving.

Zero copy: ``send`` hands the header and the caller's buffer to one ``sendmsg``;
``recv_into`` reads the socket straight into the caller's buffer; a PUT is read
straight into the region and a GET answered straight from it.

Options (:class:`~tfyarn.transport.options.TransportOptions`): ``connect_timeout``,
``handshake_timeout``, ``op_timeout``, ``keepalive`` (TCP keepalive on every
connection, both sides), ``reuse_port``, ``backlog``, ``max_pending``, ``limits``.
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Callable

from tfyarn.errors import TransportError
from tfyarn.transport import preamble
from tfyarn.transport.acceptor import OpenComms, SocketAcceptor, bind_server
from tfyarn.transport.options import Keepalive, TransportOptions
from tfyarn.transport.registry import Backend
from tfyarn.transport.streams import (
    StreamComm,
    StreamListener,
    close_stream,
    format_address,
    serve_rma,
)

__all__ = ["BACKEND", "TcpBackend", "TcpComm", "TcpListener", "connect", "listen"]

log = logging.getLogger(__name__)


def _tune(sock: socket.socket, keepalive: Keepalive | None) -> None:
    # Small frames (headers, acks) must not wait for Nagle's algorithm.
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    if keepalive is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, keepalive.idle_s)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, keepalive.interval_s)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT, keepalive.probes)


class TcpComm(StreamComm):
    """One authenticated tcp data connection; see :class:`~tfyarn.transport.streams.StreamComm`.

    Obtained from :func:`connect` or :meth:`TcpListener.accept`.
    """

    def __init__(
        self,
        sock: socket.socket,
        *,
        peer_address: str,
        options: TransportOptions,
        rma_dial: Callable[[], socket.socket] | None = None,
    ) -> None:
        _tune(sock, options.keepalive)
        super().__init__(
            sock,
            transport="tcp",
            peer_address=peer_address,
            limits=options.limits,
            rma_dial=rma_dial,
            op_timeout=options.op_timeout,
        )


class TcpListener(StreamListener):
    """Accepts authenticated peers; serves put/get on its registered regions.

    Built by :func:`listen`. Each incoming connection is authenticated on its own thread
    (so a slow or hostile peer delays nobody); a failed one is logged and closed while
    the listener keeps serving.
    """

    transport = "tcp"

    def __init__(self, host: str, port: int, *, secret: bytes, options: TransportOptions) -> None:
        sock = bind_server("tcp", host, port, options)
        self.options = options
        self._open = OpenComms()
        self.address = format_address("tcp", host, sock.getsockname()[1])
        self._init_stream_listener()
        self._acceptor = SocketAcceptor(
            "tcp",
            sock,
            host,
            secret=secret,
            options=options,
            channels=(preamble.DATA, preamble.RMA),
            handler=self._take,
            log=log,
        )

    def _take(self, conn: socket.socket, peer: str, channel: bytes) -> bool:
        """Make an accepted data connection a comm, or serve an RMA one until it ends."""
        if channel == preamble.RMA:
            conn.settimeout(None)  # requests come whenever the peer has some
            _tune(conn, self.options.keepalive)
            serve_rma(conn, self._regions, self.options.limits, lambda: self._acceptor.closed)
            return False
        comm = TcpComm(conn, peer_address=peer, options=self.options)
        self._open.keep(comm)
        self._accepted.put(comm)
        return True

    def close(self) -> None:
        """Stop accepting, close every connection, join the service threads; idempotent."""
        if self._acceptor.closed:
            return
        self._acceptor.close()
        for comm in self._accepted.close():
            comm.close()
        self._open.close_all()
        self._regions.clear()


def _dial(
    host: str, port: int, secret: bytes, channel: bytes, options: TransportOptions
) -> socket.socket:
    """Open one connection and run the preamble on it."""
    try:
        sock = socket.create_connection((host, port), timeout=options.connect_timeout)
    except OSError as exc:
        raise TransportError(f"cannot connect to tcp://{host}:{port}: {exc}") from exc
    try:
        preamble.open_channel(sock, secret, channel, options.connect_timeout)
    except BaseException:
        close_stream(sock)
        raise
    _tune(sock, options.keepalive)
    return sock


class TcpBackend(Backend):
    """The tcp backend: :class:`TcpListener` and :class:`TcpComm`."""

    scheme = "tcp"
    listener_type = TcpListener

    def dial(self, host: str, port: int, *, secret: bytes, options: TransportOptions) -> TcpComm:
        """Connect, authenticate, open the data channel; put/get open their own on first use."""
        sock = _dial(host, port, secret, preamble.DATA, options)
        return TcpComm(
            sock,
            peer_address=format_address("tcp", host, port),
            options=options,
            rma_dial=lambda: _dial(host, port, secret, preamble.RMA, options),
        )


BACKEND = TcpBackend()
#: ``listen(address, *, secret, options=None, **changes)``: see :func:`tfyarn.transport.listen`.
listen = BACKEND.listen
#: ``connect(address, *, secret, timeout=None, options=None, **changes)``.
connect = BACKEND.connect
