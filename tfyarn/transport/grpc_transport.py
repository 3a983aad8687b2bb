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

TLS: pass ``tls_cert_chain`` and ``tls_private_key`` (PEM bytes, or file paths) to
``listen`` and ``tls_root_certs`` to ``connect``; the HMAC handshake still runs inside
TLS (TLS proves the server's identity, the HMAC proves membership of the job).
"""

from __future__ import annotations

import errno
import logging
import os
import queue
import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import grpc

from tfyarn.errors import AuthenticationError, ConfigError, FrameError, TransportError
from tfyarn.transport import auth, frames
from tfyarn.transport.base import Buffer
from tfyarn.transport.frames import Limits
from tfyarn.transport.streams import (
    StreamComm,
    StreamListener,
    close_stream,
    format_address,
    serve_rma,
)

__all__ = ["GrpcByteStream", "GrpcListener", "connect", "listen"]

log = logging.getLogger(__name__)

SERVICE = "tfyarn.transport.Transport"
_DATA_METHOD = f"/{SERVICE}/Data"
_RMA_METHOD = f"/{SERVICE}/Rma"
#: Default size of the gRPC messages a large frame is cut into.
DEFAULT_CHUNK = 4 << 20
#: Messages a sender may have queued ahead of gRPC before it blocks (back-pressure).
_SEND_DEPTH = 4
#: Seconds close() waits for queued messages to be handed to gRPC.
_FLUSH_TIMEOUT = 5.0
_EOF = object()
#: Lift gRPC's 4 MiB receive limit (chunks may be configured larger).
#: Clients ping idle connections (see ``keepalive_s``); the server must accept those
#: pings, even without calls in flight, instead of closing with "too many pings".
_SERVER_PING_POLICY: list[tuple[str, Any]] = [
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.min_recv_ping_interval_without_data_ms", 1000),
    ("grpc.http2.min_ping_interval_without_data_ms", 1000),
    ("grpc.http2.max_ping_strikes", 0),
]
#: Default interval of client keepalive pings; a vanished server is declared lost after
#: one more interval without an answer.
DEFAULT_KEEPALIVE_S = 30.0
_CHANNEL_OPTIONS: list[tuple[str, Any]] = [
    ("grpc.max_send_message_length", -1),
    ("grpc.max_receive_message_length", -1),
]


class GrpcByteStream:
    """One gRPC bidirectional stream of raw-bytes messages, seen as a byte-stream socket.

    The gRPC side consumes :meth:`outgoing` (the request or response iterator) and the
    incoming message iterator is pumped by a thread into a queue, so that
    :meth:`recv_into` can honour a timeout and :meth:`close` can wake a blocked reader.
    """

    def __init__(self, chunk_bytes: int = DEFAULT_CHUNK) -> None:
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
        self._flushed.set()
        self._in.put(_EOF)
        self._out.put(_EOF)

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


def _read_pem(value: bytes | str | os.PathLike[str] | None, what: str) -> bytes | None:
    """PEM bytes as given, or read from a file path."""
    if value is None or isinstance(value, bytes):
        return value
    try:
        with open(value, "rb") as f:
            return f.read()
    except OSError as exc:
        raise ConfigError(f"cannot read {what} from {value!r}: {exc}") from exc


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


class GrpcListener(StreamListener):
    """A gRPC server with the generic Data/Rma stream handlers; built by :func:`listen`."""

    def __init__(
        self,
        host: str,
        port: int,
        *,
        secret: bytes,
        limits: Limits,
        handshake_timeout: float,
        max_streams: int,
        chunk_bytes: int,
        reuse_port: bool,
        tls_cert_chain: bytes | None,
        tls_private_key: bytes | None,
    ) -> None:
        if (tls_cert_chain is None) != (tls_private_key is None):
            raise ConfigError("TLS needs both tls_cert_chain and tls_private_key")
        self._secret = secret
        self._limits = limits
        self._handshake_timeout = handshake_timeout
        self._chunk = chunk_bytes
        self._tls = tls_cert_chain is not None
        self.transport = "grpc+tls" if self._tls else "grpc"
        self._lock = threading.Lock()
        self._streams: set[GrpcByteStream] = set()
        self._threads: set[threading.Thread] = set()
        self._closed = False
        self._pool = ThreadPoolExecutor(max_workers=max_streams, thread_name_prefix="tfyarn-grpc")
        self._server = grpc.server(
            self._pool,
            options=[
                *_CHANNEL_OPTIONS,
                *_SERVER_PING_POLICY,
                ("grpc.so_reuseport", int(reuse_port)),
            ],
            maximum_concurrent_rpcs=max_streams,
        )
        handlers = {
            "Data": grpc.stream_stream_rpc_method_handler(self._on_data),
            "Rma": grpc.stream_stream_rpc_method_handler(self._on_rma),
        }
        self._server.add_generic_rpc_handlers(
            (grpc.method_handlers_generic_handler(SERVICE, handlers),)
        )
        bind = _target(host, port)
        try:
            if self._tls:
                creds = grpc.ssl_server_credentials([(tls_private_key, tls_cert_chain)])
                bound = self._server.add_secure_port(bind, creds)
            else:
                bound = self._server.add_insecure_port(bind)
        except RuntimeError as exc:
            bound, error = 0, exc
        else:
            error = None
        if not bound:
            self._server.stop(None)
            self._pool.shutdown(wait=False)
            raise TransportError(f"cannot listen on grpc://{bind}: {error or 'bind failed'}")
        self.address = format_address("grpc", host, bound)
        self._init_stream_listener()
        self._server.start()

    # -- gRPC handlers (run on the server's pool) -------------------------------------
    def _open(
        self, request_iterator: Iterator[bytes], context: grpc.ServicerContext, channel: str
    ) -> Iterator[bytes]:
        stream = GrpcByteStream(self._chunk)
        stream.start(request_iterator)
        # A client that cancels (or a server stop) ends the RPC: close our side too, so
        # that the outgoing() generator and any reader wake up.
        context.add_callback(stream.rpc_ended)
        t = threading.Thread(
            target=self._admit,
            args=(stream, _peer_url(context), channel),
            daemon=True,
            name=f"tfyarn-grpc-{channel}",
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
        return self._open(request_iterator, context, "data")

    def _on_rma(
        self, request_iterator: Iterator[bytes], context: grpc.ServicerContext
    ) -> Iterator[bytes]:
        return self._open(request_iterator, context, "rma")

    def _admit(self, stream: GrpcByteStream, peer: str, channel: str) -> None:
        """Authenticate one stream, then hand it to accept() or serve its RMA requests."""
        handed_over = False
        try:
            auth.server_handshake(stream, self._secret, timeout=self._handshake_timeout)
            stream.settimeout(None)
            if channel == "data":
                comm = StreamComm(
                    stream, transport=self.transport, peer_address=peer, limits=self._limits
                )
                self._accepted.put(comm)
                handed_over = True
            else:
                serve_rma(stream, self._regions, self._limits, lambda: self._closed)
        except AuthenticationError as exc:
            log.warning("refused connection from %s: %s", peer, exc)
        except (FrameError, TransportError, OSError) as exc:
            if not self._closed:
                log.warning("dropped connection from %s: %s", peer, exc)
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


def listen(
    address: str,
    *,
    secret: Buffer,
    limits: Limits | None = None,
    handshake_timeout: float = 10.0,
    max_streams: int = 128,
    chunk_bytes: int = DEFAULT_CHUNK,
    reuse_port: bool = False,
    tls_cert_chain: bytes | str | None = None,
    tls_private_key: bytes | str | None = None,
) -> GrpcListener:
    """Serve grpc peers at ``address`` (``grpc://host:port``, port 0 for any).

    Parameters
    ----------
    address : str
        Where to bind; the listener's ``address`` has the real port.
    secret : bytes-like
        The job secret every peer must prove it holds.
    limits : Limits, optional
        Bounds on received frames.
    handshake_timeout : float
        Seconds a new stream has to authenticate.
    max_streams : int
        Concurrent streams served (each comm uses one, plus one once it uses put/get);
        gRPC refuses more with RESOURCE_EXHAUSTED.
    chunk_bytes : int
        Size of the gRPC messages large frames are cut into.
    reuse_port : bool
        Bind with ``SO_REUSEPORT`` (to take over a port reserved by the node layer).
    tls_cert_chain, tls_private_key : bytes or str, optional
        PEM certificate chain and key (or paths to them): serve over TLS.
    """
    from tfyarn.transport import parse_address

    scheme, host, port = parse_address(address)
    if scheme != "grpc":
        raise ConfigError(f"grpc.listen needs a grpc:// address, got {address!r}")
    return GrpcListener(
        host,
        port,
        secret=auth.check_secret(secret),
        limits=limits or frames.DEFAULT_LIMITS,
        handshake_timeout=handshake_timeout,
        max_streams=max_streams,
        chunk_bytes=chunk_bytes,
        reuse_port=reuse_port,
        tls_cert_chain=_read_pem(tls_cert_chain, "tls_cert_chain"),
        tls_private_key=_read_pem(tls_private_key, "tls_private_key"),
    )


def _open_stream(
    channel: grpc.Channel,
    method: str,
    secret: bytes,
    timeout: float,
    chunk_bytes: int,
    on_close: Callable[[], Any] | None,
) -> GrpcByteStream:
    """Start one bidirectional stream and authenticate on it."""
    stream = GrpcByteStream(chunk_bytes)
    multi = channel.stream_stream(method, request_serializer=None, response_deserializer=None)
    call = multi(stream.outgoing())

    def finish() -> None:
        call.cancel()
        if on_close is not None:
            on_close()

    stream.start(call, on_close=finish)
    call.add_done_callback(stream.rpc_ended)
    try:
        auth.client_handshake(stream, secret, timeout=timeout)
    except BaseException:
        stream.close()
        raise
    stream.settimeout(None)
    return stream


def connect(
    address: str,
    *,
    secret: Buffer,
    timeout: float = 30.0,
    limits: Limits | None = None,
    chunk_bytes: int = DEFAULT_CHUNK,
    tls_root_certs: bytes | str | None = None,
    tls_server_name: str | None = None,
    keepalive_s: float | None = DEFAULT_KEEPALIVE_S,
) -> StreamComm:
    """Connect to a grpc listener, authenticate, and return the data comm.

    Parameters
    ----------
    address : str
        ``grpc://host:port`` of the listener.
    secret : bytes-like
        The job secret.
    timeout : float
        Seconds for the connection and the handshake.
    limits : Limits, optional
        Bounds on received frames.
    chunk_bytes : int
        Size of the gRPC messages large frames are cut into.
    tls_root_certs : bytes or str, optional
        PEM root certificate(s) (or a path) that signed the server's certificate:
        connect over TLS.
    tls_server_name : str, optional
        Name to check the server certificate against, if not the address's host.
    keepalive_s : float or None
        Ping the server after this many idle seconds and declare it lost when a ping is
        not answered within as many seconds (>= 1), so that a receiver blocked on a
        vanished host gets a TransportError; None turns pings off.

    Raises
    ------
    TransportError
        The listener cannot be reached within ``timeout``.
    AuthenticationError
        The listener refused our secret or does not hold it.
    """
    from tfyarn.transport import parse_address

    scheme, host, port = parse_address(address)
    if scheme != "grpc":
        raise ConfigError(f"grpc.connect needs a grpc:// address, got {address!r}")
    key = auth.check_secret(secret)
    roots = _read_pem(tls_root_certs, "tls_root_certs")
    target = _target(host, port)
    options = list(_CHANNEL_OPTIONS)
    if keepalive_s is not None:
        if keepalive_s < 1:
            raise ConfigError(f"keepalive_s must be >= 1 second or None, got {keepalive_s}")
        ms = int(keepalive_s * 1000)
        options += [
            ("grpc.keepalive_time_ms", ms),
            ("grpc.keepalive_timeout_ms", ms),
            ("grpc.keepalive_permit_without_calls", 1),
            ("grpc.http2.max_pings_without_data", 0),
        ]
    if roots is not None:
        if tls_server_name:
            options.append(("grpc.ssl_target_name_override", tls_server_name))
        channel = grpc.secure_channel(
            target, grpc.ssl_channel_credentials(root_certificates=roots), options=options
        )
    else:
        channel = grpc.insecure_channel(target, options=options)
    try:
        grpc.channel_ready_future(channel).result(timeout=timeout)
    except grpc.FutureTimeoutError:
        channel.close()
        raise TransportError(
            f"cannot connect to {address} within {timeout} s (nothing listening, a firewall, "
            "or a TLS mismatch between the two sides)"
        ) from None
    try:
        data = _open_stream(channel, _DATA_METHOD, key, timeout, chunk_bytes, channel.close)
    except BaseException:
        channel.close()
        raise
    return StreamComm(
        data,
        transport="grpc+tls" if roots is not None else "grpc",
        peer_address=format_address("grpc", host, port),
        limits=limits or frames.DEFAULT_LIMITS,
        rma_dial=lambda: _open_stream(channel, _RMA_METHOD, key, timeout, chunk_bytes, None),
    )
