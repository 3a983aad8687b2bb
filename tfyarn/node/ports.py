"""Port reservation: hold a port from the moment it is chosen until the server binds it.

Choosing a free port, closing it and binding it later from another process races with
every other program on the host (TensorFlowOnSpark's most reported failure). We bind a
socket to port 0 on the role's address with ``SO_REUSEPORT`` and keep it open; the socket
is never put into the listening state, so it receives no connections while held.

Servers that also set ``SO_REUSEPORT`` (tfyarn's own transports) bind while the
reservation is held. TensorFlow's gRPC server does not: it turns reuse-port *off*, so a
held port makes it fail to bind. For TensorFlow the reservation is therefore handed to the
role's process and closed immediately before the server is created in that same process
(:meth:`ReservedPort.release`), which shrinks the race from seconds to microseconds.
"""

from __future__ import annotations

import contextlib
import socket

__all__ = ["ReservedPort", "reserve_port"]


class ReservedPort:
    """A port held by a bound, non-listening socket.

    Parameters
    ----------
    sock : socket.socket
        The bound socket holding the port.
    """

    def __init__(self, sock: socket.socket) -> None:
        self._sock: socket.socket | None = sock
        self.host, self.port = sock.getsockname()[:2]

    @property
    def held(self) -> bool:
        """Whether the port is still held."""
        return self._sock is not None

    def fileno(self) -> int:
        """The holding socket's descriptor (to hand it to a child process)."""
        if self._sock is None:
            raise ValueError(f"port {self.port} is no longer held")
        return self._sock.fileno()

    def release(self) -> None:
        """Stop holding the port; idempotent."""
        sock, self._sock = self._sock, None
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.close()

    def __enter__(self) -> ReservedPort:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    def __repr__(self) -> str:
        state = "held" if self.held else "released"
        return f"ReservedPort({self.host}:{self.port}, {state})"

    @classmethod
    def from_fd(cls, fd: int) -> ReservedPort:
        """Adopt a reservation inherited from the parent process."""
        return cls(socket.socket(fileno=fd))


def reserve_port(host: str, port: int = 0) -> ReservedPort:
    """Reserve a TCP port on ``host`` (``port=0``: any free one) and hold it.

    Parameters
    ----------
    host : str
        Address to bind (the role's address, never a wildcard guess).
    port : int
        A specific port, or 0 to let the kernel choose.

    Returns
    -------
    ReservedPort
        Holding the port until released.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.set_inheritable(True)
        sock.bind((host, port))
    except BaseException:
        sock.close()
        raise
    return ReservedPort(sock)
