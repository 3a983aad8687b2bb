"""The ``grpc://`` backend: framed messages streamed as raw-bytes chunks over gRPC.

Each :class:`~tfyarn.transport.streams.StreamComm` rides on one bidirectional gRPC
stream (method ``/tfyarn.transport.Transport/Data``); put/get ride on a second stream
(``.../Rma``) of the same HTTP/2 connection, opened on first use and served by the
listener straight into/out of the registered region. The handlers are *generic*
(no protobuf): messages are raw ``bytes``, a large message is cut into chunks of
``chunk_bytes`` (4 MiB) so that no single gRPC message is huge, and the message size
limits are lifted. The stream is adapted to look like a socket (:class:`GrpcByteStream`),
so the frames, the authentication handshake and the RMA service are exactly those of
the tcp backend.

Stock gRPC unary calls copy a message several times on each side; here the sender
makes one copy per chunk (gRPC needs ``bytes``) and the receiver copies each chunk once,
straight into the caller's buffer.

Every stream starts with the preamble of :mod:`tfyarn.transport.preamble`, naming the
channel of its method (``data`` or ``rma``).

TLS: ``TransportOptions.tls_cert_chain`` and ``tls_private_key`` (PEM bytes, or file
paths) for listeners, ``tls_root_certs`` for connections; the HMAC handshake still runs
inside TLS (TLS proves the server's identity, the HMAC proves membership of the job).
"""

from __future__ import annotations

import errno
import logging
import queue
import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import grpc

from tfyarn.errors import ConfigError, TransportError
from tfyarn.transport import preamble
from tfyarn.transport.acceptor import peer_errors
from tfyarn.transport.base import Buffer
from tfyarn.transport.integrity import FrameAuth
from tfyarn.transport.options import DEFAULT_CHUNK_BYTES, Keepalive, TransportOptions
from tfyarn.transport.registry import Backend
from tfyarn.transport.streams import (
    FramedStream,
    StreamComm,
    StreamListener,
    close_stream,
    format_address,
    serve_rma,
)

__all__ = ["BACKEND", "GrpcBackend", "GrpcByteStream", "GrpcListener", "connect", "listen"]

log = logging.getLogger(__name__)

SERVICE = "tfyarn.transport.Transport"
_DATA_METHOD = f"/{SERVICE}/Data"
_RMA_METHOD = f"/{SERVICE}/Rma"
#: Default size of the gRPC messages a large frame is cut into.
DEFAULT_CHUNK = DEFAULT_CHUNK_BYTES
#: Messages a sender may have queued ahead of gRPC before it blocks (back-pressure).
_SEND_DEPTH = 4
#: Seconds close() waits for queued messages to be handed to gRPC.
_FLUSH_TIMEOUT = 5.0
_EOF = object()
#: Clients ping idle connections (``TransportOptions.keepalive``); the server must accept
#: those pings, even without calls in flight, instead of closing with "too many pings".
_SERVER_PING_POLICY: list[tuple[str, Any]] = [
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.min_recv_ping_interval_without_data_ms", 1000),
    ("grpc.http2.min_ping_interval_without_data_ms", 1000),
    ("grpc.http2.max_ping_strikes", 0),
]
#: Lift gRPC's 4 MiB receive limit (chunks may be configured larger).
_CHANNEL_OPTIONS: list[tuple[str, Any]] = [
    ("grpc.max_send_message_length", -1),
    ("grpc.max_receive_message_length", -1),
]


class GrpcByteStream:
    """One gRPC bidirectional stream of raw-bytes messages, seen as a byte-stream socket.

    The gRPC side consumes :meth:`outgoing` (the request or response iterator) and the
    incoming message iterator is pumped by a thread into a queue, so that
    :meth:`recv_into` can honour a timeout and :meth:`close` can wake a blocked reader.

    A close is a full close, as on a socket. The server's side (``end_with_peer``) ends
    the RPC as soon as the client's requests end, and the client's close waits for that
    end before it cancels the call: cancelling at once would discard what gRPC had taken
    from the queue but not yet written to the connection. The server's own close waits
    for the RPC to finish too, for the same reason.
    """

    def __init__(self, chunk_bytes: int = DEFAULT_CHUNK, *, end_with_peer: bool = False) -> None:
        if chunk_bytes < 1024:
            raise ConfigError(f"chunk_bytes must be >= 1024, got {chunk_bytes}")
        self._chunk = chunk_bytes
        self._in: queue.Queue[Any] = queue.Queue()
        self._out: queue.Queue[Any] = queue.Queue()
        self._credits = threading.Semaphore(_SEND_DEPTH)
        self._flushed = threading.Event()
        self._cur = memoryview(b"")
        self._timeout: float | None = None
        self._eof = False
        self._closed = False
        self._on_close: Callable[[], Any] | None = None
        self._reader: threading.Thread | None = None
        self._consuming = False
        self._ended = False
        self._end_with_peer = end_with_peer
        self._rpc_done = threading.Event()

    def start(self, incoming: Iterator[bytes], on_close: Callable[[], Any] | None = None) -> None:
        """Begin pumping ``incoming``; ``on_close`` runs once when the stream is closed."""
        self._on_close = on_close
        self._reader = threading.Thread(
            target=self._pump, args=(incoming,), name="tfyarn-grpc-reader", daemon=True
        )
        self._reader.start()

    def _pump(self, incoming: Iterator[bytes]) -> None:
        try:
            for msg in incoming:
                self._in.put(msg)
        except grpc.RpcError as exc:
            code = exc.code() if hasattr(exc, "code") else None
            if code is not grpc.StatusCode.CANCELLED:
                details = exc.details() if hasattr(exc, "details") else exc
                self._in.put(ConnectionError(f"gRPC stream failed: {code}: {details}"))
        except Exception as exc:  # the iterator belongs to gRPC: report, never crash
            self._in.put(ConnectionError(f"gRPC stream failed: {exc!r}"))
        finally:
            self._in.put(_EOF)
            if self._end_with_peer:
                # The client closed (or vanished): nothing more can reach it, so end our
                # responses too (after what is queued) and let the RPC finish.
                self._ended = True
                self._out.put(_EOF)

    def outgoing(self) -> Iterator[bytes]:
        """The messages to hand to gRPC, until the stream is closed."""
        self._consuming = True
        try:
            while True:
                item = self._out.get()
                if item is _EOF:
                    return
                self._credits.release()
                yield item
        finally:
            self._flushed.set()

    # -- socket-like API used by auth and StreamComm ---------------------------------
    def _put(self, msg: bytes) -> None:
        while not self._credits.acquire(timeout=0.5):
            if self._closed or self._ended:
                break
        if self._closed or self._ended:
            raise BrokenPipeError(errno.EPIPE, "gRPC stream is closed")
        self._out.put(msg)

    def sendmsg(self, buffers: Sequence[Buffer], /) -> int:
        """Queue the bytes of ``buffers`` as messages of at most ``chunk_bytes``."""
        total = 0
        pieces: list[memoryview] = []
        filled = 0
        for b in buffers:
            view = memoryview(b).cast("B")
            total += view.nbytes
            while view.nbytes:
                take = min(self._chunk - filled, view.nbytes)
                pieces.append(view[:take])
                filled += take
                view = view[take:]
                if filled == self._chunk:
                    self._put(b"".join(pieces))
                    pieces, filled = [], 0
        if pieces:
            self._put(b"".join(pieces))
        return total

    def sendall(self, data: Buffer, /) -> None:
        """Queue all of ``data``."""
        self.sendmsg([data])

    def recv_into(self, buffer: Buffer, nbytes: int = 0, /) -> int:
        """Copy up to ``nbytes`` of the incoming byte stream into ``buffer``; 0 at the end."""
        view = memoryview(buffer).cast("B")
        want = nbytes or view.nbytes
        if not self._cur.nbytes:
            if self._eof:
                return 0
            try:
                item = self._in.get(timeout=self._timeout)
            except queue.Empty:
                raise TimeoutError(f"no data within {self._timeout} s") from None
            if item is _EOF:
                self._eof = True
                return 0
            if isinstance(item, BaseException):
                self._eof = True
                raise item
            self._cur = memoryview(item)
        take = min(want, self._cur.nbytes)
        view[:take] = self._cur[:take]
        self._cur = self._cur[take:]
        return take

    @property
    def closed(self) -> bool:
        """Whether this side was closed or the RPC ended."""
        return self._closed or self._ended

    def settimeout(self, timeout: float | None, /) -> None:
        """Timeout of later :meth:`recv_into` calls (None: wait forever)."""
        self._timeout = timeout

    def gettimeout(self) -> float | None:
        """The timeout set by :meth:`settimeout`."""
        return self._timeout

    def rpc_ended(self, *_: object) -> None:
        """gRPC callback: the RPC is over; wake every waiter (nothing more will flow).

        It runs on a gRPC thread, so it must not call back into gRPC (cancelling the call
        or closing the channel from there can deadlock): that is left to :meth:`close`.
        """
        self._ended = True
        self._rpc_done.set()
        self._flushed.set()
        if self._reader is None:
            # With a reader, the end comes from it, after the messages gRPC still holds
            # for us: an end put here first would hide them (the last "ok" of a peer
            # that closed right after sending it).
            self._in.put(_EOF)
        self._out.put(_EOF)

    def wait_rpc_end(self, timeout: float) -> bool:
        """Wait up to ``timeout`` s for the RPC to finish; whether it did."""
        return self._rpc_done.wait(timeout)

    def shutdown(self, how: int, /) -> None:
        """End the stream (both directions), as :meth:`close`."""
        self.close()

    def close(self) -> None:
        """End our side (queued messages are handed to gRPC first), wake readers; idempotent."""
        if self._closed:
            return
        self._closed = True
        self._out.put(_EOF)
        self._in.put(_EOF)
        if self._consuming:  # let gRPC take what is queued before the RPC is torn down
            self._flushed.wait(_FLUSH_TIMEOUT)
        if self._on_close is not None:
            self._on_close()


def _target(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _peer_url(context: grpc.ServicerContext) -> str:
    """``grpc://host:port`` of the peer, from gRPC's ``ipv4:1.2.3.4:5`` form."""
    peer = context.peer() or "unknown"
    kind, _, rest = peer.partition(":")
    if kind in ("ipv4", "ipv6") and ":" in rest:
        host, _, port = rest.rpartition(":")
        host = host.strip("[]").replace("%5B", "").replace("%5D", "")
        return format_address("grpc", host, int(port)) if port.isdigit() else peer
    return peer


def _keepalive_options(keepalive: Keepalive | None) -> list[tuple[str, Any]]:
    """gRPC channel/server options for HTTP/2 pings after ``idle_s`` of silence.

    A ping unanswered for ``interval_s * probes`` seconds ends the connection, so that a
    receiver blocked on a vanished host gets a TransportError.
    """
    if keepalive is None:
        return []
    return [
        ("grpc.keepalive_time_ms", keepalive.idle_s * 1000),
        ("grpc.keepalive_timeout_ms", keepalive.timeout_s * 1000),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.max_pings_without_data", 0),
    ]


class GrpcListener(StreamListener):
    """A gRPC server with the generic Data/Rma stream handlers; built by :func:`listen`."""

    def __init__(self, host: str, port: int, *, secret: bytes, options: TransportOptions) -> None:
        self._secret = secret
        self.options = options
        cert, key = options.read_pem("tls_cert_chain"), options.read_pem("tls_private_key")
        self.transport = "grpc+tls" if cert is not None else "grpc"
        self._lock = threading.Lock()
        self._streams: set[GrpcByteStream] = set()
        self._threads: set[threading.Thread] = set()
        self._closed = False
        self._pool = ThreadPoolExecutor(
            max_workers=options.max_streams, thread_name_prefix="tfyarn-grpc"
        )
        self._server = grpc.server(
            self._pool,
            options=[
                *_CHANNEL_OPTIONS,
                *_SERVER_PING_POLICY,
                *_keepalive_options(options.keepalive),
                ("grpc.so_reuseport", int(options.reuse_port)),
            ],
            maximum_concurrent_rpcs=options.max_streams,
        )
        handlers = {
            "Data": grpc.stream_stream_rpc_method_handler(self._on_data),
            "Rma": grpc.stream_stream_rpc_method_handler(self._on_rma),
        }
        self._server.add_generic_rpc_handlers(
            (grpc.method_handlers_generic_handler(SERVICE, handlers),)
        )
        self.address = format_address("grpc", host, self._bind(host, port, cert, key))
        self._init_stream_listener()
        self._server.start()

    def _bind(self, host: str, port: int, cert: bytes | None, key: bytes | None) -> int:
        """Add the listening port (TLS when a certificate is given); return it."""
        bind = _target(host, port)
        error: RuntimeError | None = None
        try:
            if cert is not None and key is not None:
                creds = grpc.ssl_server_credentials([(key, cert)])
                bound = self._server.add_secure_port(bind, creds)
            else:
                bound = self._server.add_insecure_port(bind)
        except RuntimeError as exc:
            bound, error = 0, exc
        if not bound:
            self._server.stop(None)
            self._pool.shutdown(wait=False)
            raise TransportError(f"cannot listen on grpc://{bind}: {error or 'bind failed'}")
        return bound

    # -- gRPC handlers (run on the server's pool) -------------------------------------
    def _open(
        self, request_iterator: Iterator[bytes], context: grpc.ServicerContext, method: bytes
    ) -> Iterator[bytes]:
        stream = GrpcByteStream(self.options.chunk_bytes, end_with_peer=True)
        stream.start(request_iterator)
        # A client that cancels (or a server stop) ends the RPC: close our side too, so
        # that the outgoing() generator and any reader wake up.
        context.add_callback(stream.rpc_ended)
        t = threading.Thread(
            target=self._admit,
            args=(stream, _peer_url(context), method),
            daemon=True,
            name=f"tfyarn-grpc-{method.decode()}",
        )
        with self._lock:
            if self._closed:
                stream.close()
                return iter(())
            # Forget streams closed since, so a long-lived listener does not grow.
            self._streams = {s for s in self._streams if not s.closed}
            self._streams.add(stream)
            self._threads.add(t)
        t.start()
        return stream.outgoing()

    def _on_data(
        self, request_iterator: Iterator[bytes], context: grpc.ServicerContext
    ) -> Iterator[bytes]:
        return self._open(request_iterator, context, preamble.DATA)

    def _on_rma(
        self, request_iterator: Iterator[bytes], context: grpc.ServicerContext
    ) -> Iterator[bytes]:
        return self._open(request_iterator, context, preamble.RMA)

    def _admit(self, stream: GrpcByteStream, peer: str, method: bytes) -> None:
        """Run the preamble on one stream, then hand it to accept() or serve its RMA requests.

        The channel named in the preamble must be the one of the gRPC method called.
        """
        handed_over = False
        try:
            with peer_errors(log, peer, lambda: self._closed):
                o = self.options
                _, tags = preamble.accept_channel(
                    stream, self._secret, o.handshake_timeout, (method,)
                )
                if method == preamble.DATA:
                    comm = StreamComm(
                        stream,
                        tags,
                        transport=self.transport,
                        peer_address=peer,
                        limits=o.limits,
                        op_timeout=o.op_timeout,
                    )
                    self._accepted.put(comm)
                    handed_over = True
                else:
                    stream.settimeout(None)  # requests come whenever the peer has some
                    rma = FramedStream(stream, tags, o.limits, peer)
                    serve_rma(rma, self._regions, lambda: self._closed)
        finally:
            if not handed_over:
                stream.close()
            with self._lock:
                self._threads.discard(threading.current_thread())
                if not handed_over:
                    self._streams.discard(stream)

    # -- Listener API -----------------------------------------------------------------
    def close(self) -> None:
        """Stop the server, end every stream, join the service threads; idempotent."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            streams, threads = list(self._streams), list(self._threads)
        for comm in self._accepted.close():
            comm.close()
        for stream in streams:
            close_stream(stream)
        self._server.stop(grace=1.0).wait(5)
        self._pool.shutdown(wait=False)  # gRPC does not own the pool we gave it
        for t in threads:
            t.join(5)
        self._regions.clear()


def _open_stream(
    channel: grpc.Channel,
    method: str,
    secret: bytes,
    options: TransportOptions,
    on_close: Callable[[], Any] | None,
) -> tuple[GrpcByteStream, FrameAuth]:
    """Start one bidirectional stream and run the preamble on it."""
    stream = GrpcByteStream(options.chunk_bytes)
    multi = channel.stream_stream(method, request_serializer=None, response_deserializer=None)
    call = multi(stream.outgoing())

    def finish() -> None:
        # The server ends the RPC once it has read our last message and the half-close
        # after it; cancel only a call that a dead or stuck server leaves open.
        stream.wait_rpc_end(_FLUSH_TIMEOUT)
        call.cancel()
        if on_close is not None:
            on_close()

    stream.start(call, on_close=finish)
    call.add_done_callback(stream.rpc_ended)
    name = preamble.DATA if method == _DATA_METHOD else preamble.RMA
    try:
        tags = preamble.open_channel(stream, secret, name, options.connect_timeout)
    except BaseException:
        stream.close()
        raise
    stream.settimeout(None)
    return stream, tags


def _channel(host: str, port: int, options: TransportOptions) -> grpc.Channel:
    """A gRPC channel to ``host:port``: TLS when root certificates are given."""
    roots = options.read_pem("tls_root_certs")
    channel_options = [*_CHANNEL_OPTIONS, *_keepalive_options(options.keepalive)]
    if roots is None:
        return grpc.insecure_channel(_target(host, port), options=channel_options)
    if options.tls_server_name:
        channel_options.append(("grpc.ssl_target_name_override", options.tls_server_name))
    creds = grpc.ssl_channel_credentials(root_certificates=roots)
    return grpc.secure_channel(_target(host, port), creds, options=channel_options)


class GrpcBackend(Backend):
    """The grpc backend: :class:`GrpcListener`, and StreamComms over gRPC streams.

    Options (:class:`~tfyarn.transport.options.TransportOptions`): ``connect_timeout``,
    ``handshake_timeout``, ``op_timeout``, ``keepalive`` (HTTP/2 pings, both sides),
    ``reuse_port``, ``limits``, ``chunk_bytes``, ``max_streams`` (gRPC refuses more
    streams with RESOURCE_EXHAUSTED; each comm uses one, plus one once it uses put/get)
    and the ``tls_*`` fields.
    """

    scheme = "grpc"
    listener_type = GrpcListener

    def dial(self, host: str, port: int, *, secret: bytes, options: TransportOptions) -> StreamComm:
        """Connect, authenticate, open the data stream; put/get open their own on first use."""
        channel = _channel(host, port, options)
        address = format_address("grpc", host, port)
        try:
            grpc.channel_ready_future(channel).result(timeout=options.connect_timeout)
        except grpc.FutureTimeoutError:
            channel.close()
            raise TransportError(
                f"cannot connect to {address} within {options.connect_timeout} s (nothing "
                "listening, a firewall, or a TLS mismatch between the two sides)"
            ) from None
        try:
            data, tags = _open_stream(channel, _DATA_METHOD, secret, options, channel.close)
        except BaseException:
            channel.close()
            raise
        return StreamComm(
            data,
            tags,
            transport="grpc" if options.tls_root_certs is None else "grpc+tls",
            peer_address=address,
            limits=options.limits,
            rma_dial=lambda: _open_stream(channel, _RMA_METHOD, secret, options, None),
            op_timeout=options.op_timeout,
        )


BACKEND = GrpcBackend()
#: ``listen(address, *, secret, options=None, **changes)``: see :func:`tfyarn.transport.listen`.
listen = BACKEND.listen
#: ``connect(address, *, secret, timeout=None, options=None, **changes)``.
connect = BACKEND.connect
