"""tcp backend against hostile or broken peers, in one process (real sockets on loopback).

The two-process behaviour is in tests/integration/test_transport_tcp.py; here raw sockets
play peers that pass authentication and then misbehave.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import struct
import threading
import time
from collections.abc import Iterator

import numpy as np
import pytest

from tfyarn.errors import ConfigError, ForgedFrameError, FrameError, TransportError
from tfyarn.transport import auth, frames, preamble, tcp
from tfyarn.transport.base import Comm
from tfyarn.transport.frames import Kind, RmaDesc
from tfyarn.transport.integrity import TAG_BYTES, FrameAuth

SECRET = auth.new_job_secret()


@pytest.fixture
def listener() -> Iterator[tcp.TcpListener]:
    before = threading.active_count()
    lis = tcp.listen("tcp://127.0.0.1:0", secret=SECRET, handshake_timeout=2)
    yield lis
    lis.close()
    deadline = time.monotonic() + 5
    while threading.active_count() > before and time.monotonic() < deadline:
        time.sleep(0.02)
    assert threading.active_count() <= before, "listener left threads behind"


@contextlib.contextmanager
def _raw(
    lis: tcp.TcpListener, channel: bytes = b"data"
) -> Iterator[tuple[socket.socket, FrameAuth]]:
    """A socket that passed the handshake and opened ``channel``, and its frame tags: a
    peer of the job, free to misbehave."""
    port = int(lis.address.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        yield s, preamble.open_channel(s, SECRET, channel, 5)


def _frame(tags: FrameAuth, header: bytes, payload: bytes = b"") -> bytes:
    """A frame as a peer of the job sends it: header, payload, tag."""
    return header + payload + tags.signer.tag(header, payload)


def _good_round_trip(lis: tcp.TcpListener) -> None:
    with tcp.connect(lis.address, secret=SECRET, timeout=5) as c:
        srv = lis.accept(timeout=5)
        c.send(b"ping")
        assert bytes(srv.recv()) == b"ping"
        srv.close()


def test_bad_magic_mid_stream_closes_only_that_comm(listener: tcp.TcpListener) -> None:
    with _raw(listener) as (s, _):
        comm = listener.accept(timeout=5)
        s.sendall(b"XXXX" + bytes(frames.HEADER_SIZE - 4))
        with pytest.raises(FrameError, match="magic"):
            comm.recv_into(bytearray(10))
        with pytest.raises(TransportError, match="closed"):
            comm.recv()
    _good_round_trip(listener)


def test_absurd_length_is_refused_without_allocating(listener: tcp.TcpListener) -> None:
    with _raw(listener) as (s, _):
        comm = listener.accept(timeout=5)
        header = bytearray(frames.pack_frame_header(Kind.MSG, 0))
        struct.pack_into("<Q", header, 8, 2**62)
        s.sendall(header)
        with pytest.raises(FrameError, match="exceeds the limit"):
            comm.recv()
    _good_round_trip(listener)


def test_truncated_message_is_a_transport_error(listener: tcp.TcpListener) -> None:
    with _raw(listener) as (s, _):
        comm = listener.accept(timeout=5)
        s.sendall(frames.pack_frame_header(Kind.MSG, 100) + b"only ten b")
        s.shutdown(socket.SHUT_WR)
        with pytest.raises(TransportError, match="peer closed"):
            comm.recv_into(bytearray(100))


def test_rma_frame_on_data_stream_is_refused(listener: tcp.TcpListener) -> None:
    with _raw(listener) as (s, _):
        comm = listener.accept(timeout=5)
        s.sendall(frames.pack_frame_header(Kind.GET, 0, RmaDesc("r", 0, 1)))
        with pytest.raises(FrameError, match="GET frame on the data stream"):
            comm.recv()


def test_unknown_channel_is_dropped_and_logged(
    listener: tcp.TcpListener, caplog: pytest.LogCaptureFixture
) -> None:
    with (
        caplog.at_level(logging.WARNING, "tfyarn.transport.tcp"),
        _raw(listener, b"evil") as (s, _),
    ):
        assert s.recv(1) == b""  # the listener hung up
    assert "unknown channel" in caplog.text
    _good_round_trip(listener)


def test_hostile_rma_requests(listener: tcp.TcpListener) -> None:
    region = bytearray(64)
    listener.register("w", region)
    with _raw(listener, b"rma") as (s, tags):
        # A PUT that lies about its size is refused with an error frame, payload drained.
        header = bytearray(frames.pack_frame_header(Kind.PUT, 8, RmaDesc("w", 0, 8)))
        struct.pack_into("<Q", header, frames.HEADER_SIZE + 8, 4)  # nbytes 4 != length 8
        s.sendall(_frame(tags, bytes(header), b"12345678"))
        reply = s.recv(frames.HEADER_SIZE)
        assert frames.parse_header(reply).kind is Kind.ERROR
        # A data frame on the RMA channel closes the connection.
        s.sendall(_frame(tags, frames.pack_frame_header(Kind.MSG, 0)))
        deadline = time.monotonic() + 5
        rest = b""
        while time.monotonic() < deadline:
            chunk = s.recv(4096)
            if not chunk:
                break
            rest += chunk
        assert b"PUT announces 4 bytes, carries 8" in rest
    assert region == bytearray(64)  # nothing was written


def test_close_wakes_a_blocked_receiver(listener: tcp.TcpListener) -> None:
    c = tcp.connect(listener.address, secret=SECRET, timeout=5)
    srv = listener.accept(timeout=5)
    errors: list[BaseException] = []

    def receive() -> None:
        try:
            c.recv()
        except BaseException as exc:
            errors.append(exc)

    t = threading.Thread(target=receive)
    t.start()
    time.sleep(0.1)
    c.close()
    t.join(5)
    assert not t.is_alive() and isinstance(errors[0], TransportError)
    assert "closed locally" in str(errors[0])
    with pytest.raises(TransportError):
        srv.recv()  # the other end sees the close too
    c.close()  # idempotent


def test_too_many_pending_handshakes_are_refused(caplog: pytest.LogCaptureFixture) -> None:
    with tcp.listen("tcp://127.0.0.1:0", secret=SECRET, max_pending=1, handshake_timeout=1) as lis:
        port = int(lis.address.rsplit(":", 1)[1])
        with (
            caplog.at_level(logging.WARNING, "tfyarn.transport.tcp"),
            socket.create_connection(("127.0.0.1", port), timeout=5) as silent,
        ):
            silent.recv(40)  # its handshake is pending now
            with socket.create_connection(("127.0.0.1", port), timeout=5) as second:
                assert second.recv(100) == b""  # closed at once
            assert "too many pending handshakes" in caplog.text
        # Once the silent peer is gone (its handshake failed and was logged), service resumes.
        deadline = time.monotonic() + 5
        while "client proof" not in caplog.text and time.monotonic() < deadline:
            time.sleep(0.02)
        _good_round_trip(lis)


def test_send_refuses_non_contiguous_arrays(listener: tcp.TcpListener) -> None:
    with tcp.connect(listener.address, secret=SECRET, timeout=5) as c:
        with pytest.raises(ConfigError, match="contiguous"):
            c.send(np.zeros((4, 4))[:, 1])
        with pytest.raises(ConfigError, match="read-only"):
            c.recv_into(b"immutable")


def test_reuse_port_lets_a_reserved_port_be_taken_over() -> None:
    reserve = socket.socket()
    reserve.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    reserve.bind(("127.0.0.1", 0))
    port = reserve.getsockname()[1]
    try:
        with tcp.listen(f"tcp://127.0.0.1:{port}", secret=SECRET, reuse_port=True) as lis:
            assert lis.address == f"tcp://127.0.0.1:{port}"
    finally:
        reserve.close()


@pytest.mark.parametrize("scheme", ["tcp", "grpc"])
def test_close_wakes_a_thread_waiting_in_accept(scheme: str) -> None:
    from tfyarn import transport

    lis = transport.listen(f"{scheme}://127.0.0.1:0", secret=SECRET)
    errors: list[BaseException] = []

    def wait() -> None:
        try:
            lis.accept()  # no timeout: only close() can end this
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=wait) for _ in range(2)]
    for t in threads:
        t.start()
    time.sleep(0.1)
    lis.close()
    for t in threads:
        t.join(5)
        assert not t.is_alive()
    assert len(errors) == 2 and all("closed" in str(e) for e in errors)


def test_recv_allocates_no_more_than_max_alloc() -> None:
    limits = frames.Limits(max_alloc=1000)
    with (
        tcp.listen("tcp://127.0.0.1:0", secret=SECRET, limits=limits) as lis,
        tcp.connect(lis.address, secret=SECRET, timeout=5) as c,
    ):
        srv = lis.accept(timeout=5)
        c.send(b"x" * 1001)
        with pytest.raises(FrameError, match="max_alloc"):
            srv.recv()
        c.send(b"y" * 1001)  # the refused message was drained: the stream is in step
        assert srv.recv_into(bytearray(2000)) == 1001
        srv.close()


_EMFILE_SCRIPT = """
import resource, socket, sys
from tfyarn.transport import tcp
secret = b"k" * 32
lis = tcp.listen("tcp://127.0.0.1:0", secret=secret)
port = int(lis.address.rsplit(":", 1)[1])
"127.0.0.1".encode("idna")  # getaddrinfo imports this codec lazily: not with no fd left
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (128, hard))
hog = []
try:
    while True:  # use up every descriptor (bounded by the limit of 128)
        hog.append(socket.socket())
except OSError:
    pass
hog.pop().close()  # one left: the next connect() takes it, the listener's accept() cannot
try:
    c = socket.create_connection(("127.0.0.1", port), timeout=5)
    hog.append(c)
except OSError:
    pass
import time; time.sleep(0.5)  # the acceptor hits EMFILE meanwhile
for s in hog:
    s.close()
resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
with tcp.connect(lis.address, secret=secret, timeout=10) as c:
    srv = lis.accept(timeout=10)
    c.send(b"alive")
    print(bytes(srv.recv()).decode())
    srv.close()
lis.close()
"""


def test_listener_survives_running_out_of_descriptors() -> None:
    """EMFILE on accept() must not end the accept loop (a deaf listener is a hang)."""
    import subprocess
    import sys

    done = subprocess.run(
        [sys.executable, "-c", _EMFILE_SCRIPT], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "Too many open files; retrying" in done.stderr  # the EMFILE path really ran
    assert done.stdout.strip() == "alive"


def test_put_get_argument_errors(listener: tcp.TcpListener) -> None:
    listener.register("r", bytearray(8))
    with tcp.connect(listener.address, secret=SECRET, timeout=5) as c:
        for region, offset in (("r", -1), ("", 0), (7, 0), ("x" * 300, 0)):
            with pytest.raises(ConfigError):
                c.put(b"a", region, offset)  # type: ignore[arg-type]
            with pytest.raises(ConfigError):
                c.get(bytearray(1), region, offset)  # type: ignore[arg-type]
        c.put(b"ok", "r", 6)  # nothing was sent for the refused calls: the channel is fine
        got = bytearray(2)
        c.get(got, "r", 6)
        assert got == b"ok"


def test_bfloat16_tensors_round_trip_and_are_checked(listener: tcp.TcpListener) -> None:
    import ml_dtypes  # comes with TensorFlow

    arr = (np.arange(12, dtype=np.float32) / 3).astype(ml_dtypes.bfloat16).reshape(3, 4)
    with tcp.connect(listener.address, secret=SECRET, timeout=5) as c:
        srv = listener.accept(timeout=5)
        c.send(arr)
        out = np.empty((3, 4), ml_dtypes.bfloat16)
        assert srv.recv_into(out) == arr.nbytes
        assert (out == arr).all()
        c.send(arr)
        with pytest.raises(FrameError, match="mismatch"):
            srv.recv_into(np.empty((3, 4), np.float16))  # same size, different meaning
        with pytest.raises(ConfigError, match="Python objects"):
            c.send(np.array([object(), object()]))
        srv.close()


@pytest.mark.parametrize("scheme", ["tcp", "grpc"])
def test_op_timeout_ends_a_silent_receive_and_names_the_option(scheme: str) -> None:
    from tfyarn import transport

    with (
        transport.listen(f"{scheme}://127.0.0.1:0", secret=SECRET, op_timeout=0.3) as lis,
        transport.connect(lis.address, secret=SECRET, timeout=10) as c,
    ):
        srv = lis.accept(timeout=10)
        t0 = time.monotonic()
        with pytest.raises(TransportError) as err:
            srv.recv()  # the peer never sends
        assert 0.25 <= time.monotonic() - t0 < 5
        assert str(err.value) == (
            f"connection to {srv.peer_address}: no progress within op_timeout=0.3 s "
            "(TransportOptions.op_timeout); connection closed"
        )
        with pytest.raises(TransportError, match="is closed"):
            srv.recv()
        assert c.op_timeout is None  # only the listener was given a limit


def _refused(comm: Comm, caplog: pytest.LogCaptureFixture) -> ForgedFrameError:
    """Receive on ``comm``: the frame must be refused as forged, logged, and the comm closed."""
    with (
        caplog.at_level(logging.WARNING, "tfyarn.transport.streams"),
        pytest.raises(ForgedFrameError, match="failed its authentication tag") as err,
    ):
        comm.recv_into(bytearray(64))
    assert "refused a frame" in caplog.text
    with pytest.raises(TransportError, match="closed"):
        comm.recv()
    return err.value


def test_a_frame_with_a_changed_byte_is_refused(
    listener: tcp.TcpListener, caplog: pytest.LogCaptureFixture
) -> None:
    with _raw(listener) as (s, tags):
        comm = listener.accept(timeout=5)
        s.sendall(_frame(tags, frames.pack_frame_header(Kind.MSG, 5), b"hello"))
        assert bytes(comm.recv()) == b"hello"  # a good frame passes
        frame = bytearray(_frame(tags, frames.pack_frame_header(Kind.MSG, 5), b"hello"))
        frame[frames.HEADER_SIZE] ^= 1  # "iello": an on-path change of one bit
        s.sendall(frame)
        assert "frame 2 " in str(_refused(comm, caplog))  # HELLO was 0, "hello" 1
    _good_round_trip(listener)


def test_a_replayed_frame_is_refused(
    listener: tcp.TcpListener, caplog: pytest.LogCaptureFixture
) -> None:
    with _raw(listener) as (s, tags):
        comm = listener.accept(timeout=5)
        frame = _frame(tags, frames.pack_frame_header(Kind.MSG, 3), b"pay")
        s.sendall(frame)
        assert bytes(comm.recv()) == b"pay"
        s.sendall(frame)  # the same bytes again: its sequence number is spent
        _refused(comm, caplog)


def test_a_frame_from_another_connection_or_direction_is_refused(
    listener: tcp.TcpListener, caplog: pytest.LogCaptureFixture
) -> None:
    with _raw(listener) as (first, first_tags), _raw(listener) as (second, second_tags):
        comm_a = listener.accept(timeout=5)
        comm_b = listener.accept(timeout=5)
        header = frames.pack_frame_header(Kind.MSG, 4)
        # Same job, same secret, same position in the stream: tagged for the other
        # connection (its own nonces) it fails, whichever comm got which socket.
        first.sendall(_frame(second_tags, header, b"swap"))
        second.sendall(header + b"back" + first_tags.verifier.start(header, b"back").finalize())
        _refused(comm_a, caplog)
        _refused(comm_b, caplog)


def test_a_frame_without_a_tag_never_reaches_the_caller(
    listener: tcp.TcpListener, caplog: pytest.LogCaptureFixture
) -> None:
    """What a peer of tfyarn 0.1 (frames without tags) or a forger without the keys sends."""
    with _raw(listener) as (s, _):
        comm = listener.accept(timeout=5)
        s.sendall(frames.pack_frame_header(Kind.MSG, 4) + b"evil" + bytes(TAG_BYTES))
        _refused(comm, caplog)
