"""Per-frame authentication: every frame after the handshake carries a tag that proves
it comes from the peer that passed the handshake, unaltered, in order, and only once.

The handshake of :mod:`tfyarn.transport.auth` proves, once, that the peer holds the job
secret. Without more, anyone on the path of the connection (another tenant's process on
a shared network, a compromised switch) could inject, alter, drop or replay frames after
it. So the two ends derive a key per direction from the secret and both handshake nonces
(:func:`session_keys`), and every frame that follows is tagged with::

    frame key = HMAC-SHA256(direction key, seq (u64 LE))
    tag       = Poly1305(frame key, header || extension || payload)

sent right after the frame's payload (the header format is unchanged; see
:mod:`tfyarn.transport.frames`). ``seq`` counts the frames of one direction of one
connection from 0 and is never sent: both ends count. Poly1305 is a one-time
authenticator: each frame key is used for one frame only, which the sequence number
guarantees (the Wegman-Carter construction of ChaCha20-Poly1305, with HMAC as the
key generator). Hence

* an altered byte anywhere in a frame fails its tag;
* a frame replayed on the same connection, or one dropped or reordered, is checked
  against the wrong ``seq`` and fails;
* a frame recorded on another connection (or in another job, or in the other direction)
  was tagged with another key and fails.

A failed tag raises :class:`~tfyarn.errors.ForgedFrameError`; the stream's position can
no longer be trusted, so the caller closes the connection (and logs it).

Why Poly1305 rather than HMAC over the whole frame: measured here on 64 MiB, OpenSSL's
Poly1305 (through ``cryptography``) runs at about 9 GB/s per core, HMAC-SHA256 at 1.6:
with HMAC the tcp backend fell to 0.3x of a raw socket, while the one HMAC per frame
that derives the frame key costs about a microsecond whatever the frame's size. The
receiver feeds each chunk to the tag right after it arrived, while it is in cache. TLS
(``TransportOptions.tls_*``) adds encryption on top; it does not replace the tags.
"""

from __future__ import annotations

import hashlib
import hmac
import struct
import threading
from dataclasses import dataclass, field
from typing import Protocol

from cryptography.hazmat.primitives.poly1305 import Poly1305

from tfyarn.errors import ForgedFrameError, FrameError
from tfyarn.transport.base import Buffer

__all__ = [
    "TAG_BYTES",
    "FrameAuth",
    "FrameMac",
    "FrameSigner",
    "FrameVerifier",
    "SessionKeys",
    "TaggedLines",
    "session_keys",
]

#: What a frame's parts may be.
Bytes = bytes | bytearray | memoryview
#: Bytes of the tag that follows every frame's payload.
TAG_BYTES = 16
_SEQ = struct.Struct("<Q")
_CLIENT_TO_SERVER = b"tfyarn-frames-c2s"
_SERVER_TO_CLIENT = b"tfyarn-frames-s2c"


@dataclass(frozen=True)
class SessionKeys:
    """The two frame keys of one connection, seen from one end of it.

    Derived by :func:`session_keys`; never printed (``repr`` hides them).
    """

    send: bytes = field(repr=False)
    recv: bytes = field(repr=False)

    def frame_auth(self) -> FrameAuth:
        """A fresh tagger and checker for the frames of this connection (both from 0)."""
        return FrameAuth(FrameSigner(self.send), FrameVerifier(self.recv))


def session_keys(
    secret: bytes, server_nonce: bytes, client_nonce: bytes, *, client: bool
) -> SessionKeys:
    """The frame keys of one connection, for its client (``client=True``) or its server.

    Both ends compute the same two keys from the secret and the two fresh nonces of the
    handshake: a key is used by one connection, in one direction, and nowhere else.
    """
    nonces = server_nonce + client_nonce
    c2s = hmac.new(secret, _CLIENT_TO_SERVER + nonces, hashlib.sha256).digest()
    s2c = hmac.new(secret, _SERVER_TO_CLIENT + nonces, hashlib.sha256).digest()
    return SessionKeys(send=c2s, recv=s2c) if client else SessionKeys(send=s2c, recv=c2s)


class FrameMac(Protocol):
    """The tag of one frame while its bytes arrive."""

    def update(self, data: Bytes) -> None: ...

    def finalize(self) -> bytes: ...


class _FrameKeys:
    """The one-time Poly1305 key of each frame of one direction, in order."""

    def __init__(self, key: bytes) -> None:
        self._keyed = hmac.new(key, digestmod=hashlib.sha256)
        self.seq = 0

    def next(self) -> Poly1305:
        """A fresh authenticator keyed for frame ``seq`` (the counter is not advanced)."""
        prf = self._keyed.copy()
        prf.update(_SEQ.pack(self.seq))
        return Poly1305(prf.digest())


@dataclass(frozen=True)
class FrameAuth:
    """What one end of a connection tags its frames with, and checks the peer's with."""

    signer: FrameSigner
    verifier: FrameVerifier


class FrameSigner:
    """Tags the frames one end sends, in the order it sends them.

    One sender at a time (the comm's send lock); each :meth:`tag` numbers one frame.
    """

    def __init__(self, key: bytes) -> None:
        self._keys = _FrameKeys(key)

    def tag(self, *parts: Bytes) -> bytes:
        """The tag of the next frame, made of ``parts`` (header, extension, payload)."""
        mac = self._keys.next()
        for part in parts:
            mac.update(part)
        self._keys.seq += 1
        return mac.finalize()


class FrameVerifier:
    """Checks the tags of the frames one end receives, in order.

    Use: ``mac = v.start(header)``, ``mac.update(chunk)`` as the extension and payload
    arrive, then ``v.check(mac, tag)``. One receiver at a time (the comm's receive lock).
    """

    def __init__(self, key: bytes) -> None:
        self._keys = _FrameKeys(key)

    @property
    def frames(self) -> int:
        """How many frames passed their check so far."""
        return self._keys.seq

    def start(self, *parts: Bytes) -> FrameMac:
        """Begin the tag of the next frame with its first ``parts`` (the header)."""
        mac = self._keys.next()
        for part in parts:
            mac.update(part)
        return mac

    def check(self, mac: FrameMac, tag: Buffer, *, peer: str) -> None:
        """Compare the received ``tag`` with the one computed in ``mac``; count the frame.

        Raises
        ------
        ForgedFrameError
            The tag differs: the frame was forged, replayed, reordered or altered.
        """
        if not hmac.compare_digest(mac.finalize(), bytes(tag)):
            raise ForgedFrameError(
                f"frame {self._keys.seq} from {peer} failed its authentication tag: forged, "
                "replayed, reordered or altered in transit (someone else on the network "
                "path, or a peer of another job or tfyarn version)"
            )
        self._keys.seq += 1


class TaggedLines:
    """Newline-delimited messages with a tag each, both ways over one connection.

    The driver's progress channel carries JSON lines rather than frames; each line is
    ``payload SP hex(tag) LF``, tagged and checked like a frame (one counter per
    direction), so that a line injected, altered or replayed on the network path is
    refused. Sending is serialised by a lock: the heartbeat thread and the caller's
    reports share it.

    Parameters
    ----------
    tags : FrameAuth
        From the handshake of this connection (``SessionKeys.frame_auth()``).
    peer : str
        Who is at the other end, for errors.
    max_line : int
        Longest line :meth:`feed` waits for the end of; more is a FrameError.
    """

    def __init__(self, tags: FrameAuth, peer: str, max_line: int = 1 << 20) -> None:
        self._tags = tags
        self._peer = peer
        self._max_line = max_line
        self._lock = threading.Lock()
        self._pending = b""

    def seal(self, payload: bytes) -> bytes:
        """The line to send for ``payload`` (which holds no newline)."""
        with self._lock:
            return payload + b" " + self._tags.signer.tag(payload).hex().encode() + b"\n"

    def feed(self, chunk: bytes) -> list[bytes]:
        """The checked payloads of the lines ``chunk`` completes (one reader at a time).

        Raises
        ------
        ForgedFrameError
            A line has no tag, or a wrong one.
        FrameError
            A line runs past ``max_line`` bytes without its end.
        """
        *lines, self._pending = (self._pending + chunk).split(b"\n")
        if len(self._pending) > self._max_line:
            raise FrameError(f"{self._peer} sent a line of over {self._max_line} bytes")
        return [self.open(line) for line in lines]

    def open(self, line: bytes) -> bytes:
        """The payload of one received line (without its newline), checked.

        Raises
        ------
        ForgedFrameError
            The line has no tag, or a wrong one.
        """
        payload, _, tag = line.rpartition(b" ")
        try:
            raw = bytes.fromhex(tag.decode("ascii"))
        except (UnicodeDecodeError, ValueError):
            raw = b""
        verifier = self._tags.verifier
        verifier.check(verifier.start(payload), raw, peer=self._peer)
        return payload
