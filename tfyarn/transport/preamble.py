"""The connection preamble every backend runs first: authenticate, then name the channel.

On every new connection (a TCP socket, a gRPC stream, the bootstrap socket of UCX):

1. the mutual HMAC challenge of :mod:`tfyarn.transport.auth` on the job secret;
2. one ``HELLO`` frame (:mod:`tfyarn.transport.frames`) from the connecting side whose
   payload names the channel it opens: ``b"data"`` (a message stream), ``b"rma"``
   (put/get requests) or ``b"ucx"`` (a UCX worker-address exchange follows). Like every
   frame after it, the HELLO carries its tag (:mod:`tfyarn.transport.integrity`): it
   is frame 0 of the client's direction.

Both ends return the connection's :class:`~tfyarn.transport.integrity.FrameAuth`, whose
counters go on from there for the frames of the channel.

A listener refuses a channel it does not serve with a :class:`~tfyarn.errors.FrameError`
naming it; the caller logs it and closes the connection.
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Protocol

from tfyarn.errors import FrameError
from tfyarn.transport import auth, frames
from tfyarn.transport.base import Buffer, Readable, recv_exactly
from tfyarn.transport.frames import HEADER_SIZE, Kind, Limits
from tfyarn.transport.integrity import TAG_BYTES, FrameAuth

__all__ = ["DATA", "MAX_CHANNEL", "RMA", "UCX", "accept_channel", "open_channel"]

#: The channels of the backends.
DATA = b"data"
RMA = b"rma"
UCX = b"ucx"
#: Longest channel name accepted.
MAX_CHANNEL = 16


class PreambleStream(Readable, Protocol):
    """What the preamble needs from a connection: read, write, and a timeout."""

    def sendall(self, data: Buffer, /) -> object: ...

    def settimeout(self, timeout: float | None, /) -> None: ...


def open_channel(sock: PreambleStream, secret: bytes, channel: bytes, timeout: float) -> FrameAuth:
    """Client side: authenticate on ``sock``, then open ``channel``; return the frame auth.

    Raises
    ------
    AuthenticationError
        The peer refused our secret or does not hold it, or was too slow.
    OSError
        The connection failed while naming the channel.
    """
    tags = auth.client_handshake(sock, secret, timeout=timeout).frame_auth()
    hello = frames.pack_frame_header(Kind.HELLO, len(channel)) + channel
    sock.sendall(hello + tags.signer.tag(hello))
    return tags


def accept_channel(
    sock: PreambleStream,
    secret: bytes,
    timeout: float,
    channels: Collection[bytes],
    limits: Limits = frames.DEFAULT_LIMITS,
) -> tuple[bytes, FrameAuth]:
    """Server side: authenticate the peer on ``sock``; return the channel it opens, and
    the connection's frame auth.

    ``sock`` keeps ``timeout`` afterwards: the caller sets what its channel needs.

    Raises
    ------
    AuthenticationError
        The peer does not hold the secret, or was too slow.
    FrameError
        The peer did not send a HELLO, or named a channel not in ``channels``.
    ForgedFrameError
        The HELLO's tag is wrong.
    TransportError
        The peer closed the connection.
    """
    tags = auth.server_handshake(sock, secret, timeout=timeout).frame_auth()
    sock.settimeout(timeout)
    hdr = bytearray(HEADER_SIZE)
    recv_exactly(sock, hdr, what="channel hello")
    header = frames.parse_header(hdr, limits)
    if header.kind is not Kind.HELLO or header.ext_len or header.length > MAX_CHANNEL:
        raise FrameError(f"expected a HELLO naming the channel, got {header.kind.name}")
    channel = bytearray(header.length)
    recv_exactly(sock, channel, what="channel name")
    tag = bytearray(TAG_BYTES)
    recv_exactly(sock, tag, what="channel hello's tag")
    tags.verifier.check(tags.verifier.start(hdr, channel), tag, peer="the connecting peer")
    if bytes(channel) not in channels:
        served = ", ".join(repr(c) for c in sorted(channels))
        raise FrameError(f"unknown channel {bytes(channel)!r} (this listener serves {served})")
    return bytes(channel), tags
