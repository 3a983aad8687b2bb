"""The accepting side every socket listener shares (tcp, and the bootstrap socket of ucx).

A :class:`SocketAcceptor` binds a TCP socket, accepts connections on a thread, runs the
:mod:`~tfyarn.transport.preamble` of each on a thread of its own (so a slow or hostile
peer delays nobody), and hands the authenticated connection and its channel to the
backend's handler. A peer that fails is logged (:func:`peer_errors`) and closed, while
the listener keeps serving.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import socket
import ssl
import threading
import time
from collections.abc import Callable, Collection, Iterator
from typing import Any, Protocol

from tfyarn.errors import AuthenticationError, FrameError, TransportError
from tfyarn.transport import preamble
from tfyarn.transport.integrity import FrameAuth
from tfyarn.transport.options import TransportOptions
from tfyarn.transport.streams import close_stream, format_address

__all__ = ["Handler", "OpenComms", "SocketAcceptor", "bind_server", "peer_errors"]

#: Takes over one authenticated connection ``(conn, peer URL, channel, frame auth)``;
#: returns True when something now owns ``conn`` (a comm), False when it is done with it.
Handler = Callable[[socket.socket, str, bytes, FrameAuth], bool]


@contextlib.contextmanager
def peer_errors(log: logging.Logger, peer: str, closing: Callable[[], bool]) -> Iterator[None]:
    """Log what ends a peer's connection (a refused secret, a broken stream) and swallow it.

    A listener must survive any one peer; errors while the listener is ``closing`` are
    expected and not logged.
    """
    try:
        yield
    except AuthenticationError as exc:
        log.warning("refused connection from %s: %s", peer, exc)
    except (FrameError, TransportError, OSError) as exc:
        if not closing():
            log.warning("dropped connection from %s: %s", peer, exc)


def bind_server(scheme: str, host: str, port: int, options: TransportOptions) -> socket.socket:
    """A listening TCP socket at ``host:port`` (IPv6 when the host is).

    Raises
    ------
    TransportError
        The address cannot be bound (in use, not local...).
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        return socket.create_server(
            (host, port), family=family, backlog=options.backlog, reuse_port=options.reuse_port
        )
    except OSError as exc:
        raise TransportError(f"{scheme}: cannot listen on {host}:{port}: {exc}") from exc


class SocketAcceptor:
    """Accepts connections on a bound socket and hands authenticated ones to ``handler``.

    Parameters
    ----------
    scheme : str
        URL scheme of the listener, for addresses and messages.
    sock : socket.socket
        The listening socket (see :func:`bind_server`); owned from now on.
    host : str
        The host bound, for :attr:`address`.
    secret : bytes
        The job secret peers must prove they hold.
    options : TransportOptions
        ``handshake_timeout``, ``max_pending`` and ``limits`` apply here.
    channels : collection of bytes
        Channels of the preamble this listener serves.
    handler : Handler
        Called on the connection's thread once its preamble succeeded.
    log : logging.Logger
        Where the backend logs refused and dropped peers.
    tls : ssl.SSLContext, optional
        Serve TLS with this context: the TLS handshake comes first, under
        ``handshake_timeout``, and the handler gets the TLS socket.
    """

    def __init__(
        self,
        scheme: str,
        sock: socket.socket,
        host: str,
        *,
        secret: bytes,
        options: TransportOptions,
        channels: Collection[bytes],
        handler: Handler,
        log: logging.Logger,
        tls: ssl.SSLContext | None = None,
    ) -> None:
        self._sock = sock
        self._tls = tls
        self._scheme = scheme
        self.address = format_address(scheme, host, sock.getsockname()[1])
        self._secret = secret
        self._options = options
        self._channels = frozenset(channels)
        self._handler = handler
        self._log = log
        self._pending = threading.BoundedSemaphore(options.max_pending)
        self._lock = threading.Lock()
        self._conns: set[socket.socket] = set()
        self._threads: set[threading.Thread] = set()
        self.closed = False
        self._thread = threading.Thread(
            target=self._accept_loop, name=f"tfyarn-{scheme}-accept-{self.address}", daemon=True
        )
        self._thread.start()

    def _accept_loop(self) -> None:
        while not self.closed:
            try:
                conn, addr = self._sock.accept()
            except OSError as exc:
                if self.closed or exc.errno in (errno.EBADF, errno.EINVAL):
                    return  # the listening socket was closed
                # e.g. EMFILE: keep serving once descriptors free up, instead of going deaf
                self._log.error("accept on %s failed: %s; retrying", self.address, exc)
                time.sleep(0.1)
                continue
            if not self._pending.acquire(blocking=False):
                self._log.warning("refused connection from %s: too many pending handshakes", addr)
                close_stream(conn)
                continue
            t = threading.Thread(
                target=self._serve,
                args=(conn, addr),
                daemon=True,
                name=f"tfyarn-{self._scheme}-conn-{addr}",
            )
            with self._lock:
                if self.closed:
                    self._pending.release()
                    close_stream(conn)
                    return
                self._conns.add(conn)
                self._threads.add(t)
            t.start()

    def _start_tls(self, conn: socket.socket) -> socket.socket:
        """Run the server side of the TLS handshake on ``conn``; return the TLS socket.

        The TLS socket replaces ``conn`` among the connections :meth:`close` wakes.

        Raises
        ------
        AuthenticationError
            The peer does not speak TLS, or the handshake failed or was too slow.
        """
        assert self._tls is not None
        conn.settimeout(self._options.handshake_timeout)
        wrapped = self._tls.wrap_socket(conn, server_side=True, do_handshake_on_connect=False)
        with self._lock:
            self._conns.discard(conn)
            self._conns.add(wrapped)
        try:
            wrapped.do_handshake()
        except (OSError, ValueError) as exc:
            # ``conn`` gave its descriptor to ``wrapped``: close this one, or the peer waits.
            with self._lock:
                self._conns.discard(wrapped)
            wrapped.close()
            raise AuthenticationError(
                f"TLS handshake failed ({exc}): the peer does not use TLS, or not with "
                "this job's certificate"
            ) from exc
        return wrapped

    def _serve(self, conn: socket.socket, addr: tuple[Any, ...]) -> None:
        peer = format_address(self._scheme, str(addr[0]), int(addr[1]))
        handed_over = False
        try:
            with peer_errors(self._log, peer, lambda: self.closed):
                try:
                    if self._tls is not None:
                        conn = self._start_tls(conn)
                    channel, tags = preamble.accept_channel(
                        conn,
                        self._secret,
                        self._options.handshake_timeout,
                        self._channels,
                        self._options.limits,
                    )
                finally:
                    self._pending.release()
                handed_over = self._handler(conn, peer, channel, tags)
        finally:
            with self._lock:
                self._threads.discard(threading.current_thread())
                self._conns.discard(conn)
            if not handed_over:
                close_stream(conn)

    def close(self) -> None:
        """Stop accepting, wake and end every connection not handed over, join the threads."""
        with self._lock:
            if self.closed:
                return
            self.closed = True
            conns, threads = list(self._conns), list(self._threads)
        close_stream(self._sock)
        for conn in conns:  # wakes handshakes blocked on a silent peer, and RMA service
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
        self._thread.join(5)
        for t in threads:
            t.join(5)


class _ClosableComm(Protocol):
    @property
    def closed(self) -> bool: ...

    def close(self) -> None: ...


class OpenComms:
    """The comms a listener handed out and must close when it closes."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._comms: list[_ClosableComm] = []
        self._closed = False

    def keep(self, comm: _ClosableComm) -> None:
        """Remember ``comm``; a listener closed meanwhile closes it and raises.

        Raises
        ------
        TransportError
            The listener was closed.
        """
        with self._lock:
            if not self._closed:
                # Forget comms the user closed, so a long-lived listener does not grow.
                self._comms = [c for c in self._comms if not c.closed]
                self._comms.append(comm)
                return
        comm.close()
        raise TransportError("listener closed")

    def close_all(self) -> None:
        """Close every comm kept, and any later one at once; idempotent."""
        with self._lock:
            self._closed = True
            comms, self._comms = self._comms, []
        for comm in comms:
            comm.close()
