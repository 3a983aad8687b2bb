"""The ``ucx://`` backend: UCP active messages and one-sided put/get (RDMA where present).

Connection establishment (address exchange over a bootstrap TCP socket)
-----------------------------------------------------------------------
A listener binds a plain TCP socket at ``HOST:PORT`` (the address in ``ucx://HOST:PORT``)
and owns one UCP worker. For each peer:

1. the mutual HMAC challenge of :mod:`tfyarn.transport.auth` runs on the TCP socket;
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
    AuthenticationError,
    ConfigError,
    FrameError,
    TransportError,
    TransportUnavailableError,
)
from tfyarn.transport import auth
from tfyarn.transport.base import Buffer, Comm, Listener

__all__ = ["UcxComm", "UcxListener", "connect", "describe_lanes", "listen"]

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


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    buf = bytearray(n)
    view = memoryview(buf)
    got = 0
    while got < n:
        k = sock.recv_into(view[got:], n - got)
        if not k:
            raise TransportError("ucx: the peer closed the bootstrap connection")
        got += k
    return bytes(buf)


def _send_hello(sock: socket.socket, address: bytes, conn_id: int) -> None:
    sock.sendall(_HELLO.pack(_MAGIC, len(address), conn_id) + address)


def _recv_hello(sock: socket.socket) -> tuple[bytes, int]:
    magic, length, conn_id = _HELLO.unpack(_recv_exact(sock, _HELLO.size))
    if magic != _MAGIC:
        raise FrameError(f"ucx: peer is not a tfyarn ucx endpoint (magic {magic!r})")
    if not 0 < length <= _MAX_WORKER_ADDRESS:
        raise FrameError(f"ucx: peer sent a worker address of {length} bytes")
    return _recv_exact(sock, length), conn_id


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

    def __init__(
        self,
        host: str,
        port: int,
        *,
        secret: bytes,
        handshake_timeout: float,
        reuse_port: bool,
        backlog: int,
        max_pending: int,
        op_timeout: float | None,
    ) -> None:
        _native = _require_ucx()
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        try:
            self._sock = socket.create_server(
                (host, port), family=family, backlog=backlog, reuse_port=reuse_port
            )
        except OSError as exc:
            raise TransportError(f"ucx: cannot listen on {host}:{port}: {exc}") from exc
        try:
            self._worker = _native.UcxWorker()
        except BaseException:
            self._sock.close()
            raise
        self.address = _format(host, self._sock.getsockname()[1])
        self.transport = "ucx"
        self._secret = secret
        self._handshake_timeout = handshake_timeout
        self._op_timeout = op_timeout
        self._peer_mode = _want_peer_failure_mode()
        self._queue: queue.Queue[UcxComm] = queue.Queue()
        self._lock = threading.Lock()
        self._comms: list[UcxComm] = []
        self._threads: set[threading.Thread] = set()
        self._handshaking: set[socket.socket] = set()
        self._pending = threading.BoundedSemaphore(max_pending)
        self._closed = False
        self._acceptor = threading.Thread(
            target=self._accept_loop, name=f"tfyarn-ucx-accept-{self.address}", daemon=True
        )
        self._acceptor.start()
        _OPEN.add(self)

    def _accept_loop(self) -> None:
        while not self._closed:
            try:
                conn, addr = self._sock.accept()
            except OSError:
                return  # listening socket closed
            if not self._pending.acquire(blocking=False):
                log.warning("ucx: refused connection from %s: too many pending handshakes", addr)
                conn.close()
                continue
            t = threading.Thread(
                target=self._serve, args=(conn, addr), daemon=True, name=f"tfyarn-ucx-{addr}"
            )
            with self._lock:
                if self._closed:
                    self._pending.release()
                    conn.close()
                    return
                self._threads.add(t)
                self._handshaking.add(conn)
            t.start()

    def _serve(self, conn: socket.socket, addr: tuple[Any, ...]) -> None:
        peer = _format(str(addr[0]), int(addr[1]))
        handed_over = False
        conn_id: int | None = None
        try:
            auth.server_handshake(conn, self._secret, timeout=self._handshake_timeout)
            conn.settimeout(self._handshake_timeout)
            peer_worker, peer_id = _recv_hello(conn)
            conn_id = self._worker.new_conn()
            self._worker.connect(conn_id, peer_worker, peer_id, self._peer_mode)
            _send_hello(conn, self._worker.address, conn_id)
            if _recv_exact(conn, 1) != _READY:
                raise FrameError("ucx: peer did not confirm the connection")
            conn.settimeout(None)
            self._worker.monitor(conn_id, conn.fileno())
            comm = UcxComm(
                self._worker,
                conn_id,
                conn,
                peer_address=peer,
                owns_worker=False,
                op_timeout=self._op_timeout,
            )
            with self._lock:
                if self._closed:
                    raise TransportError("listener closed")
                self._comms = [c for c in self._comms if not c._closed]
                self._comms.append(comm)
            self.transport = comm.transport
            self._queue.put(comm)
            handed_over = True
        except AuthenticationError as exc:
            log.warning("ucx: refused connection from %s: %s", peer, exc)
        except (FrameError, TransportError, OSError) as exc:
            if not self._closed:
                log.warning("ucx: dropped connection from %s: %s", peer, exc)
        finally:
            self._pending.release()
            with self._lock:
                self._threads.discard(threading.current_thread())
                self._handshaking.discard(conn)
            if not handed_over:
                if conn_id is not None and not self._worker.closed:
                    self._worker.close_conn(conn_id, 1.0)
                with contextlib.suppress(OSError):
                    conn.close()

    def accept(self, timeout: float | None = None) -> UcxComm:
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
        """Expose writable ``buf`` as ``region`` to every peer's put/get (names are write-once)."""
        if self._closed:
            raise TransportError(f"listener {self.address} is closed")
        self._worker.register(region, _writable(buf, f"region {region!r}"))

    def close(self) -> None:
        """Stop accepting, close every comm and the worker (regions too); idempotent."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            comms, threads = list(self._comms), list(self._threads)
            pending = list(self._handshaking)
        with contextlib.suppress(OSError):
            self._sock.shutdown(socket.SHUT_RDWR)
        self._sock.close()
        for conn in pending:  # wake handshakes blocked on a silent peer
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
        self._acceptor.join(5)
        for t in threads:
            t.join(5)
        for comm in comms:
            comm.close()
        while True:  # comms accepted but never picked up
            try:
                self._queue.get_nowait().close()
            except queue.Empty:
                break
        self._worker.close()


def _parse(address: str, what: str) -> tuple[str, int]:
    from tfyarn.transport import parse_address

    scheme, host, port = parse_address(address)
    if scheme != "ucx":
        raise ConfigError(f"ucx.{what} needs a ucx:// address, got {address!r}")
    return host, port


def listen(
    address: str,
    *,
    secret: Buffer,
    handshake_timeout: float = 10.0,
    reuse_port: bool = False,
    backlog: int = 128,
    max_pending: int = 64,
    op_timeout: float | None = None,
) -> UcxListener:
    """Listen for UCX peers at ``address`` (``ucx://host:port``, port 0 for any).

    Parameters
    ----------
    address : str
        Where the bootstrap TCP socket binds; the listener's ``address`` has the real port.
    secret : bytes-like
        The job secret every peer must prove it holds.
    handshake_timeout : float
        Seconds a new peer has to authenticate and exchange worker addresses.
    reuse_port : bool
        Bind with ``SO_REUSEPORT`` (to take over a port the node layer reserved).
    backlog : int
        ``listen()`` backlog of the bootstrap socket.
    max_pending : int
        Most peers authenticating at once; more are closed and logged.
    op_timeout : float or None
        Limit, in seconds, on each blocking operation of accepted comms.

    Raises
    ------
    TransportUnavailableError
        tfyarn was built without UCX, or UCX cannot initialise here.
    """
    host, port = _parse(address, "listen")
    _require_ucx()
    return UcxListener(
        host,
        port,
        secret=auth.check_secret(secret),
        handshake_timeout=handshake_timeout,
        reuse_port=reuse_port,
        backlog=backlog,
        max_pending=max_pending,
        op_timeout=op_timeout,
    )


def connect(
    address: str,
    *,
    secret: Buffer,
    timeout: float = 30.0,
    op_timeout: float | None = None,
) -> UcxComm:
    """Connect to a UCX listener, authenticate, and return the comm.

    The comm has its own UCP worker (and progress thread).

    Parameters
    ----------
    address : str
        ``ucx://host:port`` of the listener.
    secret : bytes-like
        The job secret.
    timeout : float
        Seconds for the bootstrap connection, the handshake and the address exchange.
    op_timeout : float or None
        Limit, in seconds, on each blocking send/recv/put/get.

    Raises
    ------
    TransportUnavailableError
        tfyarn was built without UCX, or UCX cannot initialise here.
    TransportError
        The listener is unreachable.
    AuthenticationError
        The listener refused our secret or does not hold it.
    """
    host, port = _parse(address, "connect")
    _native = _require_ucx()
    key = auth.check_secret(secret)
    try:
        sock = socket.create_connection((host, port), timeout=timeout)
    except OSError as exc:
        raise TransportError(f"ucx: cannot connect to {address}: {exc}") from exc
    worker = None
    try:
        auth.client_handshake(sock, key, timeout=timeout)
        sock.settimeout(timeout)
        worker = _native.UcxWorker()
        conn_id = worker.new_conn()
        _send_hello(sock, worker.address, conn_id)
        peer_worker, peer_id = _recv_hello(sock)
        worker.connect(conn_id, peer_worker, peer_id, _want_peer_failure_mode())
        sock.sendall(_READY)
        sock.settimeout(None)
        worker.monitor(conn_id, sock.fileno())
        return UcxComm(
            worker,
            conn_id,
            sock,
            peer_address=_format(host, port),
            owns_worker=True,
            op_timeout=op_timeout,
        )
    except BaseException as exc:
        if worker is not None:
            worker.close()
        sock.close()
        if isinstance(exc, OSError):
            raise TransportError(f"ucx: connecting to {address} failed: {exc}") from exc
        raise
