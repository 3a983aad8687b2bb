"""Behaviour every transport backend must show, between two real processes.

A backend's test module subclasses :class:`BackendCases` (as ``TestXxx``) and sets
``scheme``; the peer process (``transport_peer.py``) listens or dials with the same
backend. Used by test_transport_tcp.py and test_transport_grpc.py.
"""

from __future__ import annotations

import os
import socket
import tempfile
import threading
import time
from collections.abc import Iterator
from typing import Any, ClassVar

import numpy as np
import pytest
from transport_peer import SEND_TENSOR, Peer, start_dialer, start_server, tensor

from tfyarn.errors import AuthenticationError, FrameError, TransportError
from tfyarn.transport import Comm, connect, listen
from tfyarn.transport.auth import new_job_secret
from tfyarn.transport.tls import new_job_certificate

MiB = 1 << 20
REGION_BYTES = 1 * MiB


def region_content(offset: int, nbytes: int) -> bytes:
    """What the peer's region ``"r"`` holds before anyone writes to it."""
    return bytes((i % 251) for i in range(offset, offset + nbytes))


def wait_for_log(peer: Peer, text: str, timeout: float = 10.0) -> str:
    """Poll the peer's stderr until ``text`` appears (bounded)."""
    deadline = time.monotonic() + timeout
    log = peer.log()
    while text not in log and time.monotonic() < deadline:
        time.sleep(0.05)
        log = peer.log()
    return log


class BackendCases:
    """The shared cases; subclasses set :attr:`scheme` and may add options."""

    scheme: ClassVar[str]
    #: ``key=value`` options for the peer's listen(), as command-line words.
    peer_listen_options: ClassVar[tuple[str, ...]] = ()
    #: ``key=value`` options for the peer's connect().
    peer_connect_options: ClassVar[tuple[str, ...]] = ()

    def connect_options(self) -> dict[str, Any]:
        """Options for our own connect() calls."""
        return {}

    def listen_options(self) -> dict[str, Any]:
        """Options for our own listen() calls."""
        return {}

    @pytest.fixture(scope="class")
    @classmethod
    def secret(cls) -> bytes:
        return new_job_secret()

    @classmethod
    def peer_listen_args(cls) -> tuple[str, ...]:
        """Options for the peer's listen(); override for options known only at run time."""
        return cls.peer_listen_options

    @classmethod
    def peer_connect_args(cls) -> tuple[str, ...]:
        """Options for the peer's connect()."""
        return cls.peer_connect_options

    @pytest.fixture(scope="class")
    @classmethod
    def server(cls, secret: bytes) -> Iterator[Peer]:
        peer = start_server(
            f"{cls.scheme}://127.0.0.1:0", secret, REGION_BYTES, *cls.peer_listen_args()
        )
        yield peer
        peer.stop()

    @pytest.fixture
    def comm(self, server: Peer, secret: bytes) -> Iterator[Comm]:
        c = connect(server.address, secret=secret, timeout=20, **self.connect_options())
        yield c
        c.close()

    def test_echo_of_many_sizes(self, comm: Comm) -> None:
        rng = np.random.default_rng(0)
        for n in (0, 1, 4096, 3 * MiB + 7, 16 * MiB):
            payload = rng.integers(0, 256, n, dtype=np.uint8).tobytes()
            comm.send(payload)
            buf = bytearray(n + 5)  # a larger buffer is fine; the length tells the size
            assert comm.recv_into(buf) == n
            assert buf[:n] == payload

    def test_recv_allocates_a_buffer(self, comm: Comm) -> None:
        comm.send(b"abc" * 1000)
        assert bytes(comm.recv()) == b"abc" * 1000

    def test_tensor_round_trip_and_mismatch_error(self, comm: Comm) -> None:
        arr = tensor()
        comm.send(SEND_TENSOR)  # the peer answers with an array, dtype and shape attached
        out = np.empty((4, 5), np.float32)
        assert comm.recv_into(out) == arr.nbytes  # type: ignore[attr-defined]
        np.testing.assert_array_equal(out, arr)
        comm.send(SEND_TENSOR)
        with pytest.raises(FrameError, match="mismatch"):
            comm.recv_into(np.empty((5, 4), np.float32))
        comm.send(SEND_TENSOR)
        with pytest.raises(FrameError, match="mismatch"):
            comm.recv_into(np.empty((4, 5), np.int32))
        comm.send(b"still usable")  # the refused messages were discarded, not the comm
        assert bytes(comm.recv()) == b"still usable"

    def test_message_larger_than_buffer_is_refused(self, comm: Comm) -> None:
        comm.send(b"x" * 1000)
        with pytest.raises(FrameError, match="does not fit"):
            comm.recv_into(bytearray(999))
        comm.send(b"next")
        buf = bytearray(4)
        assert comm.recv_into(buf) == 4 and buf == b"next"

    def test_full_duplex_keeps_order(self, comm: Comm) -> None:
        count, size = 24, 256 * 1024
        errors: list[BaseException] = []

        def sender() -> None:
            try:
                for i in range(count):
                    comm.send(np.full(size, i % 256, np.uint8))
            except BaseException as exc:
                errors.append(exc)

        t = threading.Thread(target=sender)
        t.start()
        out = np.empty(size, np.uint8)
        for i in range(count):
            assert comm.recv_into(out) == size
            assert out[0] == out[-1] == i % 256
        t.join(30)
        assert not t.is_alive() and not errors

    def test_put_and_get(self, comm: Comm) -> None:
        data = os.urandom(100_000)
        comm.put(data, "r", offset=5000)
        got = bytearray(100_010)
        assert comm.get(got, "r", offset=4995) == len(got)
        assert got[5:100_005] == data
        assert got[:5] == region_content(4995, 5)
        arr = np.empty(16, np.uint8)
        comm.get(arr, "r", offset=REGION_BYTES - 16)
        assert arr.tobytes() == region_content(REGION_BYTES - 16, 16)

    def test_put_get_errors_are_per_request(self, comm: Comm) -> None:
        with pytest.raises(TransportError, match="no region"):
            comm.put(b"x", "nope")
        with pytest.raises(TransportError, match="outside"):
            comm.get(bytearray(10), "r", offset=REGION_BYTES - 5)
        with pytest.raises(TransportError, match="outside"):
            comm.put(b"x" * 10, "r", offset=REGION_BYTES)
        comm.put(b"ok", "r", offset=0)  # the RMA path still works afterwards
        got = bytearray(2)
        comm.get(got, "r")
        assert got == b"ok"
        comm.send(b"data path too")
        assert bytes(comm.recv()) == b"data path too"

    def test_wrong_secret_is_refused_and_logged_server_keeps_serving(
        self, server: Peer, secret: bytes
    ) -> None:
        with pytest.raises(AuthenticationError):
            connect(server.address, secret=new_job_secret(), timeout=20, **self.connect_options())
        assert "refused" in wait_for_log(server, "refused")
        with connect(server.address, secret=secret, timeout=20, **self.connect_options()) as c:
            c.send(b"after")
            assert bytes(c.recv()) == b"after"

    def test_garbage_peer_does_not_hurt_server(self, server: Peer, secret: bytes) -> None:
        host, port = server.address.split("://")[1].rsplit(":", 1)
        for junk in (b"", b"GET / HTTP/1.1\r\n\r\n", os.urandom(5000)):
            with socket.create_connection((host, int(port)), timeout=10) as s:
                s.sendall(junk)
        with connect(server.address, secret=secret, timeout=20, **self.connect_options()) as c:
            c.send(b"fine")
            assert bytes(c.recv()) == b"fine"

    def test_reverse_direction_listener_here(self, secret: bytes) -> None:
        with listen(f"{self.scheme}://127.0.0.1:0", secret=secret, **self.listen_options()) as lis:
            peer = start_dialer(lis.address, secret, *self.peer_connect_args())
            try:
                comm = lis.accept(timeout=30)
                payload = os.urandom(2 * MiB + 3)
                comm.send(payload)
                assert bytes(comm.recv()) == payload
                with pytest.raises(TransportError, match="accept"):
                    comm.put(b"x", "r")
            finally:
                peer.stop()

    def test_accept_timeout_and_unreachable_peer(self, secret: bytes) -> None:
        with listen(f"{self.scheme}://127.0.0.1:0", secret=secret, **self.listen_options()) as lis:
            with pytest.raises(TransportError, match="within"):
                lis.accept(timeout=0.2)
            address = lis.address
        with pytest.raises(TransportError):
            connect(address, secret=secret, timeout=1, **self.connect_options())


def self_signed_cert(directory: str) -> tuple[str, str]:
    """Write a certificate for localhost/127.0.0.1 and its key (as a site's PKI would give,
    checked against the address's host); return their paths."""
    made = new_job_certificate(1, names=("localhost",), addresses=("127.0.0.1",))
    cert_path, key_path = os.path.join(directory, "cert.pem"), os.path.join(directory, "key.pem")
    with open(cert_path, "wb") as f:
        f.write(made.cert_pem)
    with open(key_path, "wb") as f:
        f.write(made.key_pem)
    return cert_path, key_path


class TlsCases(BackendCases):
    """The shared cases again over TLS (a certificate for 127.0.0.1 made here), and TLS's own;
    subclasses set ``scheme``."""

    cert_path: ClassVar[str] = ""
    key_path: ClassVar[str] = ""

    @pytest.fixture(scope="class", autouse=True)
    @classmethod
    def certificate(cls) -> Iterator[None]:
        with tempfile.TemporaryDirectory(prefix="tfyarn-tls-") as d:
            cls.cert_path, cls.key_path = self_signed_cert(d)
            yield

    @classmethod
    def peer_listen_args(cls) -> tuple[str, ...]:
        return (f"tls_cert_chain=@{cls.cert_path}", f"tls_private_key=@{cls.key_path}")

    @classmethod
    def peer_connect_args(cls) -> tuple[str, ...]:
        return (f"tls_root_certs=@{cls.cert_path}",)

    def connect_options(self) -> dict[str, Any]:
        return {"tls_root_certs": self.cert_path}

    def listen_options(self) -> dict[str, Any]:
        return {"tls_cert_chain": self.cert_path, "tls_private_key": self.key_path}

    def test_transport_name_says_tls(self, server: Peer, secret: bytes) -> None:
        with connect(server.address, secret=secret, **self.connect_options()) as c:
            assert c.transport == f"{self.scheme}+tls"

    def test_plaintext_client_cannot_talk_to_tls_server(self, server: Peer, secret: bytes) -> None:
        with pytest.raises(TransportError):
            connect(server.address, secret=secret, timeout=1)

    def test_client_with_other_root_refuses_server(self, server: Peer, secret: bytes) -> None:
        with tempfile.TemporaryDirectory(prefix="tfyarn-tls-") as d:
            other_cert, _ = self_signed_cert(d)
            with pytest.raises(TransportError):
                connect(server.address, secret=secret, timeout=1, tls_root_certs=other_cert)
