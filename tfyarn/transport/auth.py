"""Mutual HMAC-SHA256 challenge-response on the job secret, run first on every connection.

Every tfyarn job has a random secret (:func:`new_job_secret`) that the driver hands to
its executors. Before a connection carries a single frame, both ends prove they hold
that secret without ever sending it:

====  ==========  ==========================================================
step  direction   bytes
====  ==========  ==========================================================
1     S -> C      ``MAGIC`` (8) + server nonce ``ns`` (32)
2     C -> S      ``MAGIC`` (8) + client nonce ``nc`` (32)
                  + ``HMAC(secret, b"tfyarn-client" + ns + nc)`` (32)
3     S -> C      status byte: ``0x01`` accepted, then
                  ``HMAC(secret, b"tfyarn-server" + nc + ns)`` (32);
                  ``0x00`` refused (nothing follows, the server closes)
====  ==========  ==========================================================

Both ends return the connection's :class:`~tfyarn.transport.integrity.SessionKeys`,
derived from the secret and both nonces, with which every later frame is tagged
(:mod:`tfyarn.transport.integrity`).

Both nonces come from :func:`secrets.token_bytes`, so a recorded exchange cannot be
replayed; the role labels differ between the two MACs, so a server's answer cannot be
reflected back to it as a client proof. MACs are compared with
:func:`hmac.compare_digest` (constant time).

The functions work over any connected object with ``sendall`` and ``recv_into``
(a :class:`socket.socket`, or a UCX endpoint wrapped to look like one). When the object
has ``settimeout``/``gettimeout``, the handshake runs under ``timeout`` and the previous
timeout is restored afterwards.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import secrets
import socket
from collections.abc import Iterator
from typing import Protocol

from tfyarn.errors import AuthenticationError, ConfigError, TransportError
from tfyarn.transport.base import Buffer, recv_exactly
from tfyarn.transport.integrity import SessionKeys, session_keys

__all__ = [
    "MIN_SECRET_BYTES",
    "SECRET_BYTES",
    "check_secret",
    "client_handshake",
    "new_job_secret",
    "server_handshake",
]

#: Identifies the handshake and its version; a peer speaking anything else is refused.
MAGIC = b"TFYAUTH1"
#: Length of each nonce and of each MAC (SHA-256 digest size).
NONCE_BYTES = 32
MAC_BYTES = hashlib.sha256().digest_size
#: Length of the secrets :func:`new_job_secret` makes.
SECRET_BYTES = 32
#: Shortest secret accepted: shorter keys make the HMAC guessable.
MIN_SECRET_BYTES = 16

_ACCEPT = b"\x01"
_REFUSE = b"\x00"
_CLIENT_LABEL = b"tfyarn-client"
_SERVER_LABEL = b"tfyarn-server"


class SocketLike(Protocol):
    """What the handshake needs from a connection."""

    def sendall(self, data: Buffer, /) -> object: ...

    def recv_into(self, buffer: Buffer, nbytes: int = 0, /) -> int: ...


def new_job_secret() -> bytes:
    """Return a fresh random job secret of :data:`SECRET_BYTES` bytes.

    Returns
    -------
    bytes
        Cryptographically random bytes from :func:`secrets.token_bytes`.
    """
    return secrets.token_bytes(SECRET_BYTES)


def check_secret(secret: Buffer) -> bytes:
    """Return ``secret`` as bytes.

    Raises
    ------
    ConfigError
        ``secret`` is a str, not bytes-like, or shorter than :data:`MIN_SECRET_BYTES`.
    """
    if isinstance(secret, str):
        raise ConfigError(
            "the job secret must be bytes, not str; use tfyarn.transport.auth.new_job_secret() "
            "or encode it (e.g. bytes.fromhex(...))"
        )
    try:
        key = bytes(memoryview(secret))
    except TypeError:
        raise ConfigError(
            f"the job secret must be a bytes-like object, got {type(secret).__name__}"
        ) from None
    if len(key) < MIN_SECRET_BYTES:
        raise ConfigError(
            f"the job secret is {len(key)} bytes; at least {MIN_SECRET_BYTES} are needed "
            "(use tfyarn.transport.auth.new_job_secret())"
        )
    return key


def _mac(key: bytes, label: bytes, first: bytes, second: bytes) -> bytes:
    return hmac.new(key, label + first + second, hashlib.sha256).digest()


def _recv(sock: SocketLike, nbytes: int, what: str) -> bytes:
    """Read exactly ``nbytes``; a peer that closes early fails the handshake."""
    buf = bytearray(nbytes)
    try:
        recv_exactly(sock, buf, what=what)
    except TransportError:
        raise AuthenticationError(
            f"peer closed the connection during the handshake (while reading the {what}); "
            "it probably refused our secret or is not a tfyarn endpoint"
        ) from None
    return bytes(buf)


@contextlib.contextmanager
def _handshaking(sock: SocketLike, timeout: float | None) -> Iterator[None]:
    """Run the handshake under ``timeout`` (restored afterwards); socket errors fail it.

    The timeout applies when ``sock`` has ``settimeout``/``gettimeout``.
    """
    applies = hasattr(sock, "settimeout") and hasattr(sock, "gettimeout")
    previous = sock.gettimeout() if applies else None  # type: ignore[attr-defined]
    if applies:
        sock.settimeout(timeout)  # type: ignore[attr-defined]
    try:
        yield
    except OSError as exc:
        if isinstance(exc, TimeoutError | socket.timeout):
            raise AuthenticationError(
                f"peer did not complete the authentication handshake within {timeout} s"
            ) from exc
        raise AuthenticationError(
            f"connection failed during the authentication handshake: {exc}"
        ) from exc
    finally:
        if applies:
            # An already closed socket has nothing to restore.
            with contextlib.suppress(OSError):
                sock.settimeout(previous)  # type: ignore[attr-defined]


def _refuse(sock: SocketLike) -> None:
    """Tell the client it was refused; a client already gone changes nothing."""
    with contextlib.suppress(OSError):
        sock.sendall(_REFUSE)


def server_handshake(
    sock: SocketLike, secret: Buffer, *, timeout: float | None = 10.0
) -> SessionKeys:
    """Authenticate the peer of an accepted connection, and prove our own identity.

    Parameters
    ----------
    sock : socket-like
        A connected object with ``sendall`` and ``recv_into``.
    secret : bytes-like
        The job secret (at least :data:`MIN_SECRET_BYTES` bytes).
    timeout : float or None
        Seconds the whole handshake may take, when ``sock`` supports timeouts.

    Returns
    -------
    SessionKeys
        This end's keys for the frames of this connection.

    Raises
    ------
    AuthenticationError
        The peer does not hold the secret, speaks another protocol, closed the
        connection or was too slow. The caller should log it and close ``sock``.
    ConfigError
        ``secret`` is not bytes or too short.
    """
    key = check_secret(secret)
    server_nonce = secrets.token_bytes(NONCE_BYTES)
    with _handshaking(sock, timeout):
        sock.sendall(MAGIC + server_nonce)
        reply = _recv(sock, len(MAGIC) + NONCE_BYTES + MAC_BYTES, "client proof")
        magic = reply[: len(MAGIC)]
        client_nonce = reply[len(MAGIC) : len(MAGIC) + NONCE_BYTES]
        proof = reply[len(MAGIC) + NONCE_BYTES :]
        if magic != MAGIC:
            _refuse(sock)
            raise AuthenticationError(
                f"peer is not a tfyarn endpoint (handshake magic {magic!r}, expected {MAGIC!r})"
            )
        expected = _mac(key, _CLIENT_LABEL, server_nonce, client_nonce)
        if not hmac.compare_digest(proof, expected):
            _refuse(sock)
            raise AuthenticationError(
                "peer failed the HMAC challenge: it does not hold this job's secret"
            )
        sock.sendall(_ACCEPT + _mac(key, _SERVER_LABEL, client_nonce, server_nonce))
    return session_keys(key, server_nonce, client_nonce, client=False)


def client_handshake(
    sock: SocketLike, secret: Buffer, *, timeout: float | None = 10.0
) -> SessionKeys:
    """Prove we hold the job secret to the server, and check that the server holds it too.

    The parameters and the result are those of :func:`server_handshake`, on the
    connecting side.

    Raises
    ------
    AuthenticationError
        The server refused our secret, answered with a wrong proof (it does not hold the
        secret), speaks another protocol, closed the connection or was too slow.
    ConfigError
        ``secret`` is not bytes or too short.
    """
    key = check_secret(secret)
    with _handshaking(sock, timeout):
        hello = _recv(sock, len(MAGIC) + NONCE_BYTES, "server challenge")
        if hello[: len(MAGIC)] != MAGIC:
            raise AuthenticationError(
                f"server is not a tfyarn endpoint (handshake magic {hello[: len(MAGIC)]!r}, "
                f"expected {MAGIC!r})"
            )
        server_nonce = hello[len(MAGIC) :]
        client_nonce = secrets.token_bytes(NONCE_BYTES)
        sock.sendall(MAGIC + client_nonce + _mac(key, _CLIENT_LABEL, server_nonce, client_nonce))
        status = _recv(sock, 1, "server verdict")
        if status != _ACCEPT:
            raise AuthenticationError(
                "server refused the connection: our job secret does not match its secret"
            )
        proof = _recv(sock, MAC_BYTES, "server proof")
        expected = _mac(key, _SERVER_LABEL, client_nonce, server_nonce)
        if not hmac.compare_digest(proof, expected):
            raise AuthenticationError(
                "server failed the HMAC challenge: it does not hold this job's secret"
            )
    return session_keys(key, server_nonce, client_nonce, client=True)
