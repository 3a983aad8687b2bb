"""The driver's heartbeat server: authentication, role state, silent-role warnings."""

from __future__ import annotations

import logging
import socket
import ssl
import time

import pytest

from tfyarn.cluster.progress import ProgressServer
from tfyarn.errors import AuthenticationError
from tfyarn.node.heartbeat import HeartbeatClient
from tfyarn.node.task import gpu_env
from tfyarn.transport.auth import client_handshake, new_job_secret
from tfyarn.transport.integrity import TaggedLines
from tfyarn.transport.options import TransportOptions
from tfyarn.transport.tls import new_job_certificate


def _wait(predicate, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return predicate()


def test_heartbeats_update_role_state_and_errors_surface() -> None:
    secret = new_job_secret()
    server = ProgressServer("127.0.0.1", secret, ["chief:0", "worker:0"])
    try:
        chief = HeartbeatClient(server.address, secret, "chief:0", interval=0.1)
        chief.send("ready", host="127.0.0.1", tf_port=1234)
        chief.report(step=10, loss=0.5, samples=320)
        chief.report(step=20, loss=0.25, samples=320)
        assert _wait(lambda: server.snapshot()[0].step == 20)
        state = server.snapshot()[0]
        assert state.state == "running" and state.loss == 0.25
        assert state.samples_per_s is not None and state.samples_per_s > 0
        assert server.failed_role() is None
        worker = HeartbeatClient(server.address, secret, "worker:0", interval=0.1)
        worker.send("error", error="ValueError: boom", traceback="Traceback ...\nValueError: boom")
        assert _wait(lambda: server.failed_role() is not None)
        failed = server.failed_role()
        assert failed is not None and failed.task_id == "worker:0"
        assert "ValueError: boom" in (failed.traceback or "")
        chief.close()
        worker.close()
    finally:
        server.close()


def test_the_driver_tells_serving_roles_to_finish() -> None:
    import threading

    secret = new_job_secret()
    server = ProgressServer("127.0.0.1", secret, ["chief:0", "ps:0"])
    finished = threading.Event()
    try:
        chief = HeartbeatClient(server.address, secret, "chief:0", interval=10)
        ps = HeartbeatClient(server.address, secret, "ps:0", interval=10, on_finish=finished.set)
        ps.send("ready")
        assert _wait(lambda: server.snapshot()[1].state == "running")
        assert not server.all_done(["chief:0"])
        chief.send("done")
        assert _wait(lambda: server.all_done(["chief:0"]))
        assert server.tell(["ps:0", "nobody:0"], {"kind": "finish"}) == ["nobody:0"]
        assert finished.wait(10)
        chief.close()
        ps.close()
    finally:
        server.close()


def test_a_silent_role_is_named_once() -> None:
    secret = new_job_secret()
    server = ProgressServer("127.0.0.1", secret, ["worker:0", "worker:1"])
    try:
        beating = HeartbeatClient(server.address, secret, "worker:0", interval=0.05)
        time.sleep(0.6)
        silent = server.silent_roles(after=0.5)
        assert [s.task_id for s in silent] == ["worker:1"]
        assert server.silent_roles(after=0.5) == []  # named once, not on every refresh
        beating.close()
    finally:
        server.close()


def test_a_peer_without_the_secret_is_refused_and_the_server_keeps_serving() -> None:
    secret = new_job_secret()
    server = ProgressServer("127.0.0.1", secret, ["worker:0"])
    try:
        with (
            socket.create_connection(server.address, timeout=5) as intruder,
            pytest.raises(AuthenticationError),
        ):
            client_handshake(intruder, new_job_secret(), timeout=5)
        good = HeartbeatClient(server.address, secret, "worker:0", interval=10)
        good.report(step=1)
        assert _wait(lambda: server.snapshot()[0].step == 1)
        good.close()
    finally:
        server.close()


def test_a_line_without_its_tag_or_replayed_is_refused_and_the_server_keeps_serving(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A peer of the job (it has the secret) whose lines an on-path attacker altered or
    replayed: each such line ends that connection, unread; others go on."""
    secret = new_job_secret()
    server = ProgressServer("127.0.0.1", secret, ["worker:0", "worker:1"])
    try:
        with caplog.at_level(logging.WARNING, "tfyarn.cluster.progress"):
            for forge in ("untagged", "altered", "replayed"):
                with socket.create_connection(server.address, timeout=5) as sock:
                    tags = TaggedLines(client_handshake(sock, secret).frame_auth(), "driver")
                    sealed = tags.seal(b'{"task": "worker:1", "kind": "metrics", "step": 7}')
                    sock.sendall(sealed)  # a good line is taken
                    assert _wait(lambda: server.snapshot()[1].step == 7)
                    forged = {
                        "untagged": b'{"task": "worker:1", "kind": "metrics", "step": 99}\n',
                        "altered": sealed.replace(b'"step": 7', b'"step": 9'),  # old tag
                        "replayed": sealed,  # its number is spent
                    }[forge]
                    sock.sendall(forged)
                    assert sock.recv(1) == b""  # the server hung up
                assert server.snapshot()[1].step == 7, forge  # never 99 or 9
            assert caplog.text.count("dropped a progress connection") == 3
        good = HeartbeatClient(server.address, secret, "worker:0", interval=10)
        good.report(step=3)
        assert _wait(lambda: server.snapshot()[0].step == 3)
        good.close()
    finally:
        server.close()


def test_with_the_jobs_certificate_the_channel_is_tls_and_plain_peers_are_refused(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """``tfyarn.run(tls=True)``: the driver serves the job's certificate, roles trust it."""
    secret = new_job_secret()
    job_tls = new_job_certificate().apply(TransportOptions())
    server = ProgressServer("127.0.0.1", secret, ["worker:0"], tls=job_tls)
    try:
        with caplog.at_level(logging.WARNING, "tfyarn.cluster.progress"):
            with (
                socket.create_connection(server.address, timeout=5) as plain,
                pytest.raises(AuthenticationError),  # the server waits for a TLS ClientHello
            ):
                client_handshake(plain, secret, timeout=2)
            assert _wait(lambda: "TLS" in caplog.text)
        role = HeartbeatClient(server.address, secret, "worker:0", interval=10, tls=job_tls)
        assert isinstance(role._sock, ssl.SSLSocket)
        role.report(step=5)
        assert _wait(lambda: server.snapshot()[0].step == 5)
        role.close()
    finally:
        server.close()


def test_gpus_come_from_the_task_resources_only() -> None:
    class Info:
        addresses = ["2", "3"]

    assert gpu_env({"gpu": Info()}) == {"CUDA_VISIBLE_DEVICES": "2,3"}
    assert gpu_env({}) == {}
