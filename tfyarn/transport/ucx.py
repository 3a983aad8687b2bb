"""The ``ucx://`` backend: UCP active messages and one-sided put/get (RDMA where present).

Connection establishment (address exchange over a bootstrap TCP socket)
-----------------------------------------------------------------------
A listener binds a plain TCP socket at ``HOST:PORT`` (the address in ``ucx://HOST:PORT``)
and owns one UCP worker. For each peer:

1. the preamble of :mod:`tfyarn.transport.preamble` runs on the TCP socket (the mutual
   HMAC challenge, then a HELLO naming the ``ucx`` channel);
2. the client sends ``MAGIC``, its packed UCP worker address and its connection id; the
   server creates its endpoint to that worker and answers the same way; the client
   creates its endpoint and confirms with one byte;
3. the TCP socket stays open, silent, as a liveness monitor: the worker's progress thread
   polls it with the worker's event fd, and EOF means the peer is gone (shared-memory
   transports cannot detect a dead peer by themselves in UCX 1.13).

We chose the address exchange over ``ucp_listener_create`` because it works with any
``UCX_TLS`` (a sockaddr listener needs a TCP or RDMA-CM connection manager, which
``UCX_TLS=posix,self`` lacks), and because the secret has to be proven before UCX
creates anything for the peer.

Data path
---------
``send`` is one ``ucp_am_send_nbx``; UCX picks eager or rendezvous by size (rendezvous
moves large messages with zero-copy get/put, over RDMA on InfiniBand). A receive already
waiting gets the message written straight into its buffer (``ucp_am_recv_data_nbx``);
otherwise the descriptor waits for the next ``recv_into``/``recv``. Pool buffers from
:mod:`tfyarn.native` carry the memory handle of their slab, registered once.
``put``/``get`` are ``ucp_put_nbx``/``ucp_get_nbx`` with the remote key the peer packed
for the region (fetched by name on first use, then cached); ``put`` flushes the endpoint
so that it returns once the data is in the peer's memory. When a transport lacks
hardware RMA (e.g. ``UCX_TCP_PUT_ENABLE=n``) UCX emulates it in software, served by the
peer's progress thread.

Completions are driven by one progress thread per worker that sleeps on the worker's
event fd. ``TFYARN_UCX_SPIN_US=N`` makes a waiting caller drive the worker itself for
N microseconds first (lower latency for small messages on dedicated cores; off by
default because it hurts on oversubscribed ones).

Which UCX transports are used is decided by UCX when the process first uses it
(``UCX_TLS``, ``UCX_NET_DEVICES``...); :attr:`UcxComm.transport` reports what the
connection actually runs on, e.g. ``"ucx/tcp"`` or ``"ucx/posix+cma"``.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import queue
import re
import socket
import struct
import threading
import weakref
from typing import Any

import numpy as np

from tfyarn import native
from tfyarn.errors import (
    ConfigError,
    FrameError,
    TransportError,
    TransportUnavailableError,
)
from tfyarn.transport import preamble, tls
from tfyarn.transport.acceptor import OpenComms, SocketAcceptor, bind_server
from tfyarn.transport.base import Buffer, Comm, Listener, recv_exactly
from tfyarn.transport.integrity import TAG_BYTES, FrameAuth
from tfyarn.transport.options import TransportOptions
from tfyarn.transport.registry import Backend

__all__ = ["BACKEND", "UcxBackend", "UcxComm", "UcxListener", "connect", "describe_lanes", "listen"]

log = logging.getLogger(__name__)

_MAGIC = b"TFYUCX01"
_HELLO = struct.Struct("!8sIQ")  # magic, worker address length, connection id
_READY = b"\x01"
_MAX_WORKER_ADDRESS = 1 << 20
#: UCX transports that share memory between processes on one host; with only these, UCX
#: 1.13 cannot detect a failed peer, so endpoints skip UCX's peer-failure mode.
_SHM_TLS = {"self", "sm", "shm", "posix", "sysv", "cma", "knem", "xpmem"}


#: Comms and listeners not closed yet: closed at interpreter exit, so that no progress
#: thread is still inside UCX while the process tears the library down.
_OPEN: weakref.WeakSet[Any] = weakref.WeakSet()


@atexit.register
def _close_all() -> None:
    for obj in list(_OPEN):
        with contextlib.suppress(Exception):
            obj.close()


def _require_ucx() -> Any:
    """Return the extension module, or raise when it was built without UCX."""
    if not native.HAVE_UCX:
        raise TransportUnavailableError(
            "the ucx transport is not available: tfyarn's C extension was built without UCX. "
            "Install UCX's headers (Debian: apt-get install libucx-dev) and reinstall tfyarn "
            "(pip install -e . or make setup), or use transport 'tcp' or 'grpc'"
        )
    from tfyarn import _native

    return _native


def _want_peer_failure_mode() -> bool:
    tls = os.environ.get("UCX_TLS", "")
    if not tls or tls.startswith("^"):
        return True
    names = {t.strip().split(":")[0] for t in tls.split(",") if t.strip()}
    return not names <= _SHM_TLS


def describe_lanes(info: str) -> str:
    """Turn ``ucp_ep_print_info`` text into a short transport name.

    Parameters
    ----------
    info : str
        The endpoint description UCX prints (one ``lane[i]: ... tl/device ...`` line per
        lane).

    Returns
    -------
    str
        ``"ucx/"`` followed by the distinct transport names of the lanes in lane order,
        joined with ``+`` (e.g. ``"ucx/tcp"``, ``"ucx/posix+cma"``); ``"ucx"`` when no lane
        is listed.
    """
    names: list[str] = []
    for match in re.finditer(r"lane\[\d+\]:\s+\d+:([A-Za-z0-9_]+)/", info):
        if match.group(1) not in names:
            names.append(match.group(1))
    return "ucx/" + "+".join(names) if names else "ucx"


def _as_bytes(data: Any) -> Any:
    """Present ``data`` to the extension as a contiguous byte buffer, without copying.

    Pool Buffers pass through unchanged (their slab's UCX registration is then used);
    NumPy arrays become byte views (custom dtypes such as bfloat16 have no buffer format).
    """
    if isinstance(data, np.ndarray):
        if not data.flags.c_contiguous:
            raise ConfigError("ucx: arrays must be C-contiguous (use np.ascontiguousarray)")
        return data.reshape(-1).view(np.uint8)
    return data


def _writable(buf: Any, what: str) -> Any:
    """Like :func:`_as_bytes`, for memory UCX writes into: refuse read-only objects clearly."""
    out = _as_bytes(buf)
    try:
        readonly = memoryview(out).readonly
    except TypeError:
        raise ConfigError(
            f"ucx: {what} must be a writable bytes-like object, got {type(buf).__name__}"
        ) from None
    if readonly:
        raise ConfigError(
            f"ucx: {what} is read-only ({type(buf).__name__}); pass a bytearray, a writable "
            "NumPy array or a tfyarn.native Buffer"
        )
    return out


def _timeout(value: float | None) -> float:
    return -1.0 if value is None else float(value)


def _recv(sock: socket.socket, nbytes: int, what: str) -> bytes:
    buf = bytearray(nbytes)
    try:
        recv_exactly(sock, buf, what=what)
    except TransportError as exc:
        raise TransportError(f"ucx: the peer closed the bootstrap connection: {exc}") from None
    return bytes(buf)


def _send_hello(sock: socket.socket, tags: FrameAuth, address: bytes, conn_id: int) -> None:
    """Send our worker address, tagged like a frame (an on-path swap of it is refused)."""
    hello = _HELLO.pack(_MAGIC, len(address), conn_id) + address
    sock.sendall(hello + tags.signer.tag(hello))


def _recv_hello(sock: socket.socket, tags: FrameAuth, peer: str) -> tuple[bytes, int]:
    fixed = _recv(sock, _HELLO.size, "ucx hello")
    magic, length, conn_id = _HELLO.unpack(fixed)
    if magic != _MAGIC:
        raise FrameError(f"ucx: peer is not a tfyarn ucx endpoint (magic {magic!r})")
    if not 0 < length <= _MAX_WORKER_ADDRESS:
        raise FrameError(f"ucx: peer sent a worker address of {length} bytes")
    address = _recv(sock, length, "worker address")
    tag = _recv(sock, TAG_BYTES, "ucx hello's tag")
    tags.verifier.check(tags.verifier.start(fixed, address), tag, peer=peer)
    return address, conn_id


def _refuse_tls(options: TransportOptions) -> None:
    """TLS asked for where UCX cannot give it: say so rather than send in the clear."""
    if tls.uses_tls(options):
        raise ConfigError(
            "ucx: TLS is not available over UCX (RDMA and shared memory bypass the socket "
            "layer); use transport='tcp' or 'grpc' for TLS, or drop the tls_* options"
        )


def _format(host: str, port: int) -> str:
    return f"ucx://[{host}]:{port}" if ":" in host else f"ucx://{host}:{port}"


class UcxComm(Comm):
    """One authenticated UCX connection; obtained from :func:`connect` or ``accept``.

    Parameters
    ----------
    worker : tfyarn._native.UcxWorker
        The worker carrying the connection (the listener's, or its own for a client).
    conn_id : int
        The connection's id on that worker.
    monitor : socket.socket
        The bootstrap socket, kept open as liveness monitor; closed with the comm.
    peer_address : str
        The peer's URL.
    owns_worker : bool
        Close the worker with the comm (client side).
    op_timeout : float or None
        Seconds any one send/recv/put/get may block; None waits as long as the peer lives.
    """

    def __init__(
        self,
        worker: Any,
        conn_id: int,
        monitor: socket.socket,
        *,
        peer_address: str,
        owns_worker: bool,
        op_timeout: float | None,
    ) -> None:
        self._worker = worker
        self._id = conn_id
        self._monitor = monitor
        self._owns_worker = owns_worker
        self._timeout = _timeout(op_timeout)
        self._lock = threading.Lock()
        self._closed = False
        self.peer_address = peer_address
        #: ``ucp_ep_print_info`` text of the endpoint (lanes, protocols, thresholds).
        self.transport_detail = worker.transport(conn_id)
        self.transport = describe_lanes(self.transport_detail)
        #: ``"hardware"`` when UCX has put/get lanes to the peer (RDMA, shared memory),
        #: ``"emulated"`` when put/get travel as active messages served by the peer.
        self.rma = (
            "hardware" if re.search(r"\b(put|get)\[\d+\]:", self.transport_detail) else "emulated"
        )
        _OPEN.add(self)

    @property
    def op_timeout(self) -> float | None:
        """Seconds any one send/recv/put/get may block (None: as long as the peer lives)."""
        return None if self._timeout < 0 else self._timeout

    @op_timeout.setter
    def op_timeout(self, value: float | None) -> None:
        if value is not None and value <= 0:
            raise ConfigError(f"ucx: op_timeout must be positive or None, got {value}")
        self._timeout = _timeout(value)

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` ran."""
        return self._closed

    def _check(self) -> None:
        if self._closed:
            raise TransportError(f"ucx: the connection to {self.peer_address} is closed")

    def send(self, data: Buffer) -> None:
        """Send one message (no copy: rendezvous reads the caller's memory directly)."""
        self._check()
        self._worker.send(self._id, _as_bytes(data), self._timeout)

    def recv_into(self, buf: Buffer) -> int:
        """Receive the next message into ``buf``; return its length.

        Raises
        ------
        FrameError
            The message is larger than ``buf`` (it is discarded).
        TransportError
            The peer closed the connection or failed, or ``op_timeout`` passed.
        """
        self._check()
        return self._worker.recv_into(self._id, _writable(buf, "recv_into buffer"), self._timeout)

    def recv(self) -> memoryview:
        """Receive the next message into a buffer of the default pool and return a view.

        The buffer goes back to the pool when the view (and all views of it) are dropped.
        """
        self._check()
        size = self._worker.peek(self._id, self._timeout)
        buf = native.default_pool().alloc(size)
        got = self._worker.recv_into(self._id, buf, self._timeout)
        return memoryview(buf)[:got]

    def put(self, data: Buffer, region: str, offset: int = 0) -> None:
        """Write ``data`` into the peer's ``region`` at ``offset``; returns once it is there."""
        self._check()
        if offset < 0:
            raise ConfigError(f"ucx: put offset must be >= 0, got {offset}")
        self._worker.rma(self._id, _as_bytes(data), region, offset, True, self._timeout)

    def get(self, buf: Buffer, region: str, offset: int = 0) -> int:
        """Read ``len(buf)`` bytes of the peer's ``region`` at ``offset`` into ``buf``."""
        self._check()
        if offset < 0:
            raise ConfigError(f"ucx: get offset must be >= 0, got {offset}")
        dst = _writable(buf, "get buffer")
        return self._worker.rma(self._id, dst, region, offset, False, self._timeout)

    def register(self, region: str, buf: Buffer) -> None:
        """Expose writable ``buf`` as ``region`` to the peer's put/get.

        On a comm from ``accept`` this registers on the listener's worker, i.e. for every
        peer of that listener. Region names are write-once per worker.
        """
        self._check()
        self._worker.register(region, _writable(buf, f"region {region!r}"))

    def close(self) -> None:
        """Say goodbye to the peer, close the endpoint and the monitor socket; idempotent."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        try:
            if not self._worker.closed:
                self._worker.close_conn(self._id, 5.0)
        finally:
            with contextlib.suppress(OSError):
                self._monitor.close()
            if self._owns_worker:
                self._worker.close()


class UcxListener(Listener):
    """Accepts authenticated UCX peers on one worker and serves put/get on its regions.

    Built by :func:`listen`. Each incoming bootstrap connection is handled on its own
    thread; a peer that fails the handshake is logged and dropped while the listener
    keeps serving.
    """

    def __init__(self, host: str, port: int, *, secret: bytes, options: TransportOptions) -> None:
        _refuse_tls(options)
        _native = _require_ucx()
        sock = bind_server("ucx", host, port, options)
        try:
            self._worker = _native.UcxWorker()
        except BaseException:
            sock.close()
            raise
        self.options = options
        self.transport = "ucx"
        self._peer_mode = _want_peer_failure_mode()
        self._queue: queue.Queue[UcxComm] = queue.Queue()
        self._open = OpenComms()
        self._acceptor = SocketAcceptor(
            "ucx",
            sock,
            host,
            secret=secret,
            options=options,
            channels=(preamble.UCX,),
            handler=self._take,
            log=log,
        )
        self.address = self._acceptor.address
        _OPEN.add(self)

    def _take(self, conn: socket.socket, peer: str, channel: bytes, tags: FrameAuth) -> bool:
        """Exchange worker addresses with an authenticated peer; queue its comm."""
        conn_id = self._worker.new_conn()
        try:
            peer_worker, peer_id = _recv_hello(conn, tags, peer)
            self._worker.connect(conn_id, peer_worker, peer_id, self._peer_mode)
            _send_hello(conn, tags, self._worker.address, conn_id)
            if _recv(conn, 1, "confirmation") != _READY:
                raise FrameError("ucx: peer did not confirm the connection")
            comm = _comm(self._worker, conn_id, conn, peer, False, self.options)
        except BaseException:
            if not self._worker.closed:
                self._worker.close_conn(conn_id, 1.0)
            raise
        self._open.keep(comm)
        self.transport = comm.transport
        self._queue.put(comm)
        return True

    def accept(self, timeout: float | None = None) -> UcxComm:
        """Return the next authenticated peer's comm.

        Raises
        ------
        TransportError
            No peer connected within ``timeout`` seconds, or the listener is closed.
        """
        if self._acceptor.closed:
            raise TransportError(f"listener {self.address} is closed")
        try:
            return self._queue.get(timeout=timeout)
        except queue.Empty:
            raise TransportError(
                f"no peer connected to {self.address} within {timeout} s"
            ) from None

    def register(self, region: str, buf: Buffer) -> None:
        """Expose writable ``buf`` as ``region`` to every peer's put/get (names are write-once)."""
        if self._acceptor.closed:
            raise TransportError(f"listener {self.address} is closed")
        self._worker.register(region, _writable(buf, f"region {region!r}"))

    def close(self) -> None:
        """Stop accepting, close every comm and the worker (regions too); idempotent."""
        if self._acceptor.closed:
            return
        self._acceptor.close()
        self._open.close_all()
        while True:  # comms accepted but never picked up
            try:
                self._queue.get_nowait().close()
            except queue.Empty:
                break
        self._worker.close()


def _comm(
    worker: Any,
    conn_id: int,
    sock: socket.socket,
    peer: str,
    owns_worker: bool,
    options: TransportOptions,
) -> UcxComm:
    """Start monitoring the bootstrap socket and wrap the connection in a comm."""
    sock.settimeout(None)
    worker.monitor(conn_id, sock.fileno())
    return UcxComm(
        worker,
        conn_id,
        sock,
        peer_address=peer,
        owns_worker=owns_worker,
        op_timeout=options.op_timeout,
    )


def _dial(host: str, port: int, secret: bytes, options: TransportOptions) -> UcxComm:
    """Bootstrap connection, preamble, worker-address exchange: the client side."""
    _refuse_tls(options)
    _native = _require_ucx()
    address = _format(host, port)
    try:
        sock = socket.create_connection((host, port), timeout=options.connect_timeout)
    except OSError as exc:
        raise TransportError(f"ucx: cannot connect to {address}: {exc}") from exc
    worker = None
    try:
        tags = preamble.open_channel(sock, secret, preamble.UCX, options.connect_timeout)
        sock.settimeout(options.connect_timeout)
        worker = _native.UcxWorker()
        conn_id = worker.new_conn()
        _send_hello(sock, tags, worker.address, conn_id)
        peer_worker, peer_id = _recv_hello(sock, tags, address)
        worker.connect(conn_id, peer_worker, peer_id, _want_peer_failure_mode())
        sock.sendall(_READY)
        return _comm(worker, conn_id, sock, address, True, options)
    except BaseException as exc:
        if worker is not None:
            worker.close()
        sock.close()
        if isinstance(exc, OSError):
            raise TransportError(f"ucx: connecting to {address} failed: {exc}") from exc
        raise


class UcxBackend(Backend):
    """The ucx backend: :class:`UcxListener` and :class:`UcxComm`.

    Options (:class:`~tfyarn.transport.options.TransportOptions`): ``connect_timeout``
    (bootstrap connection, preamble and address exchange), ``handshake_timeout``,
    ``op_timeout`` (each blocking send/recv/put/get), ``reuse_port``, ``backlog``,
    ``max_pending`` and ``ucx_env`` (UCX library settings, e.g. ``UCX_TLS``).

    Raises
    ------
    TransportUnavailableError
        tfyarn was built without UCX, or UCX cannot initialise here.
    """

    scheme = "ucx"
    listener_type = UcxListener

    def dial(self, host: str, port: int, *, secret: bytes, options: TransportOptions) -> UcxComm:
        """Connect to a UCX listener; the comm has its own UCP worker (and progress thread)."""
        return _dial(host, port, secret, options)


BACKEND = UcxBackend()
#: ``listen(address, *, secret, options=None, **changes)``: see :func:`tfyarn.transport.listen`.
listen = BACKEND.listen
#: ``connect(address, *, secret, timeout=None, options=None, **changes)``.
connect = BACKEND.connect
