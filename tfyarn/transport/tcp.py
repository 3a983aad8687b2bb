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

TLS (``tcp+tls``): with ``TransportOptions.tls_cert_chain``/``tls_private_key`` a
listener serves TLS, with ``tls_root_certs`` (and ``tls_server_name``) connections use it
(:mod:`tfyarn.transport.tls`); the TLS handshake comes before the preamble. Frames then
travel in TLS records, so ``send`` copies once (into the record) instead of not at all.

Options (:class:`~tfyarn.transport.options.TransportOptions`): ``connect_timeout``,
``handshake_timeout``, ``op_timeout``, ``keepalive`` (TCP keepalive on every
connection, both sides), ``reuse_port``, ``backlog``, ``max_pending``, ``limits`` and
the ``tls_*`` fields.
"""

from __future__ import annotations

import logging
import socket
import ssl
from collections.abc import Callable

from tfyarn.errors import TransportError
from tfyarn.transport import preamble, tls
from tfyarn.transport.acceptor import OpenComms, SocketAcceptor, bind_server
from tfyarn.transport.integrity import FrameAuth
from tfyarn.transport.options import Keepalive, TransportOptions
from tfyarn.transport.registry import Backend
from tfyarn.transport.streams import (
    FramedStream,
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
        tags: FrameAuth,
        *,
        peer_address: str,
        options: TransportOptions,
        rma_dial: Callable[[], tuple[socket.socket, FrameAuth]] | None = None,
    ) -> None:
        _tune(sock, options.keepalive)
        super().__init__(
            sock,
            tags,
            transport="tcp+tls" if isinstance(sock, ssl.SSLSocket) else "tcp",
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

    def __init__(self, host: str, port: int, *, secret: bytes, options: TransportOptions) -> None:
        context = tls.server_context(options)  # before binding: a bad certificate binds nothing
        sock = bind_server("tcp", host, port, options)
        self.transport = "tcp+tls" if context is not None else "tcp"
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
            tls=context,
        )

    def _take(self, conn: socket.socket, peer: str, channel: bytes, tags: FrameAuth) -> bool:
        """Make an accepted data connection a comm, or serve an RMA one until it ends."""
        if channel == preamble.RMA:
            conn.settimeout(None)  # requests come whenever the peer has some
            _tune(conn, self.options.keepalive)
            stream = FramedStream(conn, tags, self.options.limits, peer)
            serve_rma(stream, self._regions, lambda: self._acceptor.closed)
            return False
        comm = TcpComm(conn, tags, peer_address=peer, options=self.options)
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
    host: str,
    port: int,
    secret: bytes,
    channel: bytes,
    options: TransportOptions,
    context: ssl.SSLContext | None,
) -> tuple[socket.socket, FrameAuth]:
    """Open one connection (TLS with ``context``) and run the preamble on it."""
    address = format_address("tcp", host, port)
    try:
        sock = socket.create_connection((host, port), timeout=options.connect_timeout)
    except OSError as exc:
        raise TransportError(f"cannot connect to {address}: {exc}") from exc
    try:
        if context is not None:
            sock = _start_tls(sock, context, options.tls_server_name or host, address)
        tags = preamble.open_channel(sock, secret, channel, options.connect_timeout)
    except BaseException:
        close_stream(sock)
        raise
    _tune(sock, options.keepalive)
    return sock, tags


def _start_tls(
    sock: socket.socket, context: ssl.SSLContext, server_name: str, address: str
) -> ssl.SSLSocket:
    """The client side of the TLS handshake (under the socket's connect timeout)."""
    try:
        return context.wrap_socket(sock, server_hostname=server_name)
    except (OSError, ValueError) as exc:
        raise TransportError(
            f"TLS handshake with {address} failed ({exc}): a TLS mismatch between the two "
            f"sides, or a server certificate that tls_root_certs does not trust for the "
            f"name {server_name!r}"
        ) from exc


class TcpBackend(Backend):
    """The tcp backend: :class:`TcpListener` and :class:`TcpComm`."""

    scheme = "tcp"
    listener_type = TcpListener

    def dial(self, host: str, port: int, *, secret: bytes, options: TransportOptions) -> TcpComm:
        """Connect, authenticate, open the data channel; put/get open their own on first use."""
        context = tls.client_context(options)
        sock, tags = _dial(host, port, secret, preamble.DATA, options, context)
        return TcpComm(
            sock,
            tags,
            peer_address=format_address("tcp", host, port),
            options=options,
            rma_dial=lambda: _dial(host, port, secret, preamble.RMA, options, context),
        )


BACKEND = TcpBackend()
#: ``listen(address, *, secret, options=None, **changes)``: see :func:`tfyarn.transport.listen`.
listen = BACKEND.listen
#: ``connect(address, *, secret, timeout=None, options=None, **changes)``.
connect = BACKEND.connect
