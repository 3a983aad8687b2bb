"""Frames forged, altered or replayed by another process on the network path are refused.

The attacker is ``onpath_proxy.py``, a process of its own between a tcp client and a
listener: it sees every byte, never the job secret. The handshake passes through it
untouched (the peers hold the secret); what it changes afterwards must never reach the
receiver as a message, must be logged, and must close only that connection.

Byte offsets of the client's stream: the client's proof (72 bytes), the HELLO frame (24 +
4 + 16), then the first message's frame at 116: a 24-byte header, the payload, a 16-byte
tag.
"""

from __future__ import annotations

import logging
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tfyarn.errors import ForgedFrameError
from tfyarn.transport import auth, tcp
from tfyarn.transport.base import Comm, Listener

SECRET = auth.new_job_secret()
_PROXY = Path(__file__).with_name("onpath_proxy.py")
_FIRST_FRAME = 72 + 24 + 4 + 16
_HEADER, _TAG = 24, 16


@pytest.fixture
def listener() -> Iterator[Listener]:
    with tcp.listen("tcp://127.0.0.1:0", secret=SECRET, handshake_timeout=5) as lis:
        yield lis


def _through_proxy(listener: Listener, mode: str) -> tuple[Comm, Comm, subprocess.Popen[str]]:
    """A client comm that reaches ``listener`` through the proxy, and the accepted comm."""
    upstream = listener.address.rsplit(":", 1)[1]
    proxy = subprocess.Popen(
        [sys.executable, str(_PROXY), upstream, mode], stdout=subprocess.PIPE, text=True
    )
    assert proxy.stdout is not None
    port = int(proxy.stdout.readline())
    client = tcp.connect(f"tcp://127.0.0.1:{port}", secret=SECRET, timeout=10)
    return client, listener.accept(timeout=10), proxy


def _end(proxy: subprocess.Popen[str], *comms: Comm) -> None:
    for comm in comms:
        comm.close()
    proxy.wait(timeout=30)


def _refused(comm: Comm, caplog: pytest.LogCaptureFixture) -> None:
    with pytest.raises(ForgedFrameError, match="failed its authentication tag"):
        comm.recv_into(bytearray(1 << 10))
    assert "refused a frame" in caplog.text
    assert comm.closed  # only this connection


def test_an_untouched_relay_delivers_every_message(listener: Listener) -> None:
    """The control: the proxy itself breaks nothing."""
    client, server, proxy = _through_proxy(listener, "relay")
    for i in range(3):
        client.send(f"message {i}".encode())
        assert bytes(server.recv()) == f"message {i}".encode()
    _end(proxy, client, server)


@pytest.mark.parametrize("where", ["header", "payload", "tag"])
def test_a_changed_bit_is_refused_and_logged(
    listener: Listener, caplog: pytest.LogCaptureFixture, where: str
) -> None:
    """``header`` changes a reserved byte (7), which the header parser does not read: only
    the tag can tell."""
    payload = b"weights of step 1"
    at = {"header": 7, "payload": _HEADER + 3, "tag": _HEADER + len(payload)}[where]
    client, server, proxy = _through_proxy(listener, f"flip:{_FIRST_FRAME + at}")
    with caplog.at_level(logging.WARNING, "tfyarn.transport"):
        client.send(payload)
        _refused(server, caplog)
    _end(proxy, client, server)
    # The listener serves on: a new peer, not through the attacker, is fine.
    with tcp.connect(listener.address, secret=SECRET, timeout=10) as direct:
        other = listener.accept(timeout=10)
        direct.send(b"still here")
        assert bytes(other.recv()) == b"still here"
        other.close()


@pytest.mark.parametrize("mode", ["replay", "inject"])
def test_a_replayed_frame_is_refused_and_logged(
    listener: Listener, caplog: pytest.LogCaptureFixture, mode: str
) -> None:
    """``replay`` sends the first message's frame twice; ``inject`` puts it in place of the
    second (same length: the byte stream stays in step, only the frame count betrays it)."""
    first = b"grad A"
    end = _FIRST_FRAME + _HEADER + len(first) + _TAG
    client, server, proxy = _through_proxy(listener, f"{mode}:{_FIRST_FRAME}:{end}")
    with caplog.at_level(logging.WARNING, "tfyarn.transport"):
        client.send(first)
        assert bytes(server.recv()) == first
        client.send(b"grad B")  # what inject replaces
        _refused(server, caplog)
    _end(proxy, client, server)
