"""The gRPC stream-as-socket adapter, and a grpc listener facing a silent stream."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator

import grpc
import pytest

from tfyarn.transport import auth
from tfyarn.transport import grpc_transport as gt


def _collect(stream: gt.GrpcByteStream) -> tuple[threading.Thread, list[bytes]]:
    out: list[bytes] = []
    t = threading.Thread(target=lambda: out.extend(stream.outgoing()))
    t.start()
    return t, out


def test_sendmsg_cuts_chunks_and_keeps_order() -> None:
    stream = gt.GrpcByteStream(chunk_bytes=1024)
    t, out = _collect(stream)
    payload = bytes(range(256)) * 12  # 3072 bytes
    assert stream.sendmsg([b"head" * 3, memoryview(payload)]) == 12 + 3072
    stream.sendall(b"tail")
    stream.close()
    t.join(5)
    assert [len(m) for m in out] == [
        1024,
        1024,
        1024,
        12,
        4,
    ]  # one sendmsg never merges with the next
    assert b"".join(out) == b"head" * 3 + payload + b"tail"


def test_recv_into_spans_messages_and_reports_eof() -> None:
    stream = gt.GrpcByteStream()
    stream.start(iter([b"abc", b"defgh"]))
    buf = bytearray(4)
    assert stream.recv_into(buf) == 3 and buf[:3] == b"abc"  # never crosses a message
    assert stream.recv_into(buf, 2) == 2 and buf[:2] == b"de"
    assert stream.recv_into(buf) == 3 and buf[:3] == b"fgh"
    assert stream.recv_into(buf) == 0  # end of stream
    assert stream.recv_into(buf) == 0
    stream.close()


def _blocked(until: threading.Event) -> Iterator[bytes]:
    until.wait(10)
    return
    yield b""  # a generator that yields nothing until released


def test_timeout_and_close_wake_a_blocked_reader() -> None:
    release = threading.Event()
    stream = gt.GrpcByteStream()
    stream.start(_blocked(release))
    stream.settimeout(0.1)
    assert stream.gettimeout() == 0.1
    with pytest.raises(TimeoutError):
        stream.recv_into(bytearray(1))
    stream.settimeout(None)
    got: list[int] = []
    t = threading.Thread(target=lambda: got.append(stream.recv_into(bytearray(1))))
    t.start()
    time.sleep(0.05)
    stream.close()
    t.join(5)
    assert got == [0]
    release.set()
    with pytest.raises(BrokenPipeError):
        stream.sendall(b"x")


def test_a_failing_incoming_iterator_is_a_connection_error() -> None:
    def broken() -> Iterator[bytes]:
        yield b"ok"
        raise RuntimeError("boom")

    stream = gt.GrpcByteStream()
    stream.start(broken())
    buf = bytearray(8)
    assert stream.recv_into(buf) == 2
    with pytest.raises(ConnectionError, match="boom"):
        stream.recv_into(buf)
    stream.close()


def test_chunk_size_is_validated() -> None:
    from tfyarn.errors import ConfigError

    with pytest.raises(ConfigError, match="chunk_bytes"):
        gt.GrpcByteStream(chunk_bytes=10)


def test_silent_stream_times_out_and_listener_keeps_serving(
    caplog: pytest.LogCaptureFixture,
) -> None:
    secret = auth.new_job_secret()
    release = threading.Event()
    with (
        caplog.at_level(logging.WARNING, "tfyarn.transport.grpc_transport"),
        gt.listen("grpc://127.0.0.1:0", secret=secret, handshake_timeout=0.5) as lis,
    ):
        target = lis.address.removeprefix("grpc://")
        with grpc.insecure_channel(target) as channel:
            call = channel.stream_stream(gt._DATA_METHOD)(_blocked(release))
            challenge = next(call)  # the server speaks first ...
            assert challenge.startswith(auth.MAGIC)
            # ... and, when we say nothing, gives up and ends the stream.
            assert list(call) == []
            release.set()
        deadline = time.monotonic() + 5
        while "refused connection" not in caplog.text and time.monotonic() < deadline:
            time.sleep(0.02)
        assert "within 0.5 s" in caplog.text
        with gt.connect(lis.address, secret=secret, timeout=10) as c:
            srv = lis.accept(timeout=10)
            c.send(b"still serving")
            assert bytes(srv.recv()) == b"still serving"
            srv.close()


def test_listener_close_leaves_no_threads() -> None:
    before = {t.ident for t in threading.enumerate()}
    secret = auth.new_job_secret()
    lis = gt.listen("grpc://127.0.0.1:0", secret=secret)
    lis.register("r", bytearray(16))
    with gt.connect(lis.address, secret=secret, timeout=10) as c:
        srv = lis.accept(timeout=10)
        c.send(b"x")
        assert bytes(srv.recv()) == b"x"
        c.put(b"y", "r")
    lis.close()
    deadline = time.monotonic() + 10
    left = [t for t in threading.enumerate() if t.ident not in before]
    while left and time.monotonic() < deadline:
        time.sleep(0.05)
        left = [t for t in threading.enumerate() if t.ident not in before and t.is_alive()]
    assert not [t.name for t in left if t.name.startswith("tfyarn")]


def test_a_close_right_after_send_delivers_everything_and_ends_promptly() -> None:
    # A client's close used to cancel the call as soon as gRPC had taken the last
    # message from the queue: what gRPC had not yet written was lost. Now the server
    # ends the RPC once it has read the client's half-close, and the close waits for it.
    secret = auth.new_job_secret()
    payload = bytes(range(256)) * 4096  # 1 MiB: several chunks, some still in flight
    with gt.listen("grpc://127.0.0.1:0", secret=secret) as lis:
        for round_ in range(5):
            c = gt.connect(lis.address, secret=secret, timeout=10)
            srv = lis.accept(timeout=10)
            for i in range(4):
                c.send(payload[i:])
            started = time.monotonic()
            c.close()
            closed_in = time.monotonic() - started
            got = [bytes(srv.recv()) for _ in range(4)]
            assert got == [payload[i:] for i in range(4)], f"round {round_}"
            srv.close()
            # The server's side ended with the client's requests, without its user.
            assert closed_in < gt._FLUSH_TIMEOUT, closed_in


def test_a_server_close_right_after_send_delivers_everything_before_the_listener_goes() -> None:
    # The accepting side sends, closes and its process goes on to exit (the listener
    # stopped): the close must wait until gRPC has finished the RPC, or the last
    # messages, handed to gRPC but not yet written, are lost (seen in make test as a
    # peer's "0 of 24 bytes of the frame header received").
    secret = auth.new_job_secret()
    payload = bytes(range(256)) * 4096
    for round_ in range(5):
        with gt.listen("grpc://127.0.0.1:0", secret=secret) as lis:
            c = gt.connect(lis.address, secret=secret, timeout=10)
            srv = lis.accept(timeout=10)
            for i in range(4):
                srv.send(payload[i:])
            srv.close()
        try:
            got = [bytes(c.recv()) for _ in range(4)]
        finally:
            c.close()
        assert got == [payload[i:] for i in range(4)], f"round {round_}"
