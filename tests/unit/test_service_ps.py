"""A service's parameter server: snapshots, model kept between jobs, restart after a kill.

Real servers on 127.0.0.1 (in this process, or as ``python -m tfyarn.service.ps_server``
subprocesses that are SIGKILLed), real tcp transport and authentication. Only the
ResourceManager lookup of a restarted ps is replaced (the tests/yarn service test covers
it against the real RM): here the ps always comes back on 127.0.0.1.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import ml_dtypes
import numpy as np
import pytest

from tfyarn import transport
from tfyarn.errors import ConfigError, TransportError
from tfyarn.exchange.buckets import TensorSpec
from tfyarn.exchange.ps import PSClient, optimizer_config
from tfyarn.exchange.ps.wire import Header, Op
from tfyarn.service.attach import ServiceAttachment, ServiceConnector
from tfyarn.service.ps_server import HELLO, ServicePSServer
from tfyarn.service.state import (
    BucketState,
    Snapshot,
    ensure_certificate,
    ensure_secret,
    latest_snapshot,
    ps_dir,
    read_certificate,
    read_secret,
    write_snapshot,
)
from tfyarn.yarn.devcluster import free_ports

SPECS = [TensorSpec("w", (4,), "float32")]
SGD1 = optimizer_config("sgd", learning_rate=1.0)
MINUS_ONE = [-np.ones(4, np.float32)]  # with sgd(lr=1) each update adds exactly 1


class LocalConnector(ServiceConnector):
    """The real connector and reconnect loop; the ps is always found on 127.0.0.1."""

    def _where(self, ps: str) -> str | None:
        return "127.0.0.1"


def _attachment(port: int, secret: bytes, timeout: float = 60.0) -> ServiceAttachment:
    return ServiceAttachment(
        name="unit-svc",
        rm_url="http://127.0.0.1:9",
        user="tester",
        transport="tcp",
        port=port,
        hosts={"ps-0": "127.0.0.1"},
        secret=secret,
        reconnect_timeout=timeout,
    )


def _client(att: ServiceAttachment, trainer: str, specs: list[TensorSpec] = SPECS) -> PSClient:
    conn = LocalConnector(att, trainer)
    return PSClient(conn.connect, att.ps, specs, reconnect=conn)


# -- the state dir ---------------------------------------------------------------------------


def test_secret_is_created_once_private_and_checked(tmp_path: Path) -> None:
    first = ensure_secret(tmp_path / "svc")
    assert ensure_secret(tmp_path / "svc") == first == read_secret(tmp_path / "svc")
    assert (tmp_path / "svc" / "secret").stat().st_mode & 0o777 == 0o600
    with pytest.raises(ConfigError, match="cannot read the service secret"):
        read_secret(tmp_path / "elsewhere")


def test_snapshots_round_trip_prune_and_skip_torn_files(tmp_path: Path) -> None:
    folder = tmp_path / "ps-0"
    bf = np.arange(6, dtype=np.float32).astype(ml_dtypes.bfloat16)
    adam = optimizer_config("adam", learning_rate=0.001)
    for seq in (1, 2, 3):
        snap = Snapshot(seq)
        snap.buckets[0] = BucketState(
            np.full(3, seq, np.float32), [], 0, seq * 10, optimizer_config("sgd")
        )
        snap.buckets[1] = BucketState(bf * seq, [bf.copy(), bf.copy()], seq, seq, adam)
        write_snapshot(folder, snap, keep=2)
    assert sorted(p.name for p in folder.iterdir()) == [
        "snapshot-00000002.npz",
        "snapshot-00000003.npz",
    ]
    got, problems = latest_snapshot(folder)
    assert got is not None and got.seq == 3 and problems == []
    assert got.updates == {0: 30, 1: 3}
    np.testing.assert_array_equal(got.buckets[0].values, np.full(3, 3, np.float32))
    assert got.buckets[1].values.dtype == ml_dtypes.bfloat16
    np.testing.assert_array_equal(got.buckets[1].values, bf * 3)
    assert len(got.buckets[1].slots) == 2 and got.buckets[1].optimizer == adam
    # A torn newer file (a crash mid-write elsewhere, a copy gone wrong) is skipped.
    (folder / "snapshot-00000004.npz").write_bytes(b"PK\x03\x04 torn")
    got, problems = latest_snapshot(folder)
    assert got is not None and got.seq == 3
    assert len(problems) == 1 and problems[0].startswith("snapshot-00000004.npz")
    assert latest_snapshot(tmp_path / "nothing") == (None, [])


# -- a server in this process ------------------------------------------------------------------


@contextlib.contextmanager
def _serving(listener: transport.Listener, state_dir: Path) -> Iterator[ServicePSServer]:
    """A service ps on ``listener``, serving on a thread of this process until the end."""
    server = ServicePSServer(
        listener, name="ps-0", folder=ps_dir(state_dir, 0), snapshot_interval=60.0, keep=2
    )
    thread = threading.Thread(target=server.serve, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.stop()
        thread.join(timeout=10)
        listener.close()
    assert not thread.is_alive()


@pytest.fixture
def in_process(tmp_path: Path) -> Iterator[tuple[ServicePSServer, ServiceAttachment]]:
    secret = ensure_secret(tmp_path)
    listener = transport.listen("tcp://127.0.0.1:0", secret=secret)
    port = int(listener.address.rsplit(":", 1)[1])
    with _serving(listener, tmp_path) as server:
        yield server, _attachment(port, secret)


def test_successive_jobs_continue_the_model_and_a_foreign_model_is_refused(
    in_process: tuple[ServicePSServer, ServiceAttachment],
) -> None:
    server, att = in_process
    job1 = _client(att, "job1/chief:0")
    assert job1.init([np.zeros(4, np.float32)], SGD1) is True  # stored: a fresh service
    for _ in range(5):
        values = job1.push_gradients(MINUS_ONE)
    np.testing.assert_array_equal(values[0], np.full(4, 5.0, np.float32))
    job1.close()
    job2 = _client(att, "job2/chief:0")
    assert job2.init([np.full(4, 99.0, np.float32)], SGD1) is False  # kept the held model
    np.testing.assert_array_equal(job2.pull()[0], np.full(4, 5.0, np.float32))
    job2.push_gradients(MINUS_ONE)
    job2.close()
    assert server.updates() == {0: 6}
    other = _client(att, "job3/chief:0", [TensorSpec("w", (7,), "float32")])
    with pytest.raises(ConfigError, match="holds bucket 0 with 4 float32 values"):
        other.init([np.zeros(7, np.float32)], SGD1)
    other.close()


def test_a_vanished_trainer_or_a_stranger_does_not_stop_the_service(
    in_process: tuple[ServicePSServer, ServiceAttachment],
) -> None:
    server, att = in_process
    job = _client(att, "job1/chief:0")
    job.init([np.zeros(4, np.float32)], SGD1)
    job.comms["ps-0"].close()  # the job died: no goodbye
    stranger = transport.connect(att.address("ps-0"), secret=att.secret)
    stranger.send(b"GET / HTTP/1.0\r\n\r\n")  # authenticated, but not a trainer's hello
    with pytest.raises(TransportError, match="closed"):  # the server dropped it
        stranger.recv()
    stranger.close()
    old = transport.connect(att.address("ps-0"), secret=att.secret)  # a future/old tfyarn
    old.send(HELLO + json.dumps({"trainer": "old/chief:0", "protocol": 0}).encode())
    refused = json.loads(bytes(old.recv()))
    assert "speaks ps protocol 0" in refused["error"] and "upgrade" in refused["error"]
    old.close()
    with socket.create_connection(("127.0.0.1", att.port)) as raw:  # no secret at all
        raw.sendall(b"\x00" * 64)
    later = _client(att, "job2/worker:0")
    assert later.init([np.zeros(4, np.float32)], SGD1) is False
    np.testing.assert_array_equal(later.push_gradients(MINUS_ONE)[0], np.ones(4, np.float32))
    later.close()
    assert server.snapshot() is not None  # something changed: written
    assert server.snapshot() is None  # nothing since: skipped


def test_stop_ends_open_requests_at_once_and_takes_a_last_snapshot(
    in_process: tuple[ServicePSServer, ServiceAttachment], tmp_path: Path
) -> None:
    server, att = in_process
    job = _client(att, "job1/chief:0")
    job.init([np.zeros(4, np.float32)], SGD1)
    job.push_gradients(MINUS_ONE)
    waiter = LocalConnector(att, "job2/worker:0").connect("ps-0")
    waiter.send(Header(Op.GET, 5, 4).pack())  # bucket 5 is never initialised
    outcome: list[BaseException] = []

    def wait_for_reply() -> None:
        try:
            waiter.recv()
        except BaseException as exc:
            outcome.append(exc)

    replier = threading.Thread(target=wait_for_reply, daemon=True)
    replier.start()
    started = time.monotonic()
    server.stop()
    replier.join(timeout=10)
    # Closed by the stop, not left waiting for the bucket's INIT (180 s).
    assert len(outcome) == 1 and isinstance(outcome[0], TransportError)
    assert time.monotonic() - started < 10
    waiter.close()
    _wait_snapshot_updates(ps_dir(tmp_path, 0), 1)  # the update is in a snapshot
    job.close()


# -- a server process killed and restarted ---------------------------------------------------


def _start_ps(state_dir: Path, port: int) -> subprocess.Popen[bytes]:
    cmd = [sys.executable, "-m", "tfyarn.service.ps_server", "--service", "unit-svc"]
    cmd += ["--instance", "0", "--port", str(port), "--state-dir", str(state_dir)]
    cmd += ["--snapshot-interval", "2", "--host", "127.0.0.1"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.stdout.read().decode() if proc.stdout else ""
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return proc
        time.sleep(0.1)
    proc.kill()
    raise AssertionError("the ps process did not listen within 60 s")


def _wait_snapshot_updates(folder: Path, updates: int) -> int:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        snap, _ = latest_snapshot(folder)
        if snap is not None and snap.updates.get(0) == updates:
            return snap.seq
        time.sleep(0.05)
    raise AssertionError(f"no snapshot with {updates} updates in {folder}")


def test_a_killed_ps_restarts_from_its_snapshot_and_the_trainer_reconnects(
    tmp_path: Path,
) -> None:
    secret = ensure_secret(tmp_path)
    (port,) = free_ports(1)
    first = _start_ps(tmp_path, port)
    second = None
    try:
        job = _client(_attachment(port, secret), "job1/chief:0")
        job.init([np.zeros(4, np.float32)], SGD1)
        for _ in range(10):
            job.push_gradients(MINUS_ONE)
        seq = _wait_snapshot_updates(ps_dir(tmp_path, 0), 10)
        for _ in range(5):  # acknowledged after the snapshot: lost unless another one follows
            job.push_gradients(MINUS_ONE)
        first.kill()
        first.wait(timeout=10)
        second_box: list[subprocess.Popen[bytes]] = []
        starter = threading.Thread(
            target=lambda: second_box.append(_start_ps(tmp_path, port)), daemon=True
        )
        starter.start()
        values = job.push_gradients(MINUS_ONE)  # waits in the reconnect loop, then repeats
        # The trainer may reconnect before the starter's own port probe sees the listener.
        starter.join(timeout=60)
        second = second_box[0]
        assert job.reconnects == [
            {
                "ps": "ps-0",
                "acked_at_break": {0: 15},
                "restored_seq": job.reconnects[0]["restored_seq"],
                "restored_updates": {0: job.reconnects[0]["restored_updates"][0]},
            }
        ]
        restored = job.reconnects[0]["restored_updates"][0]
        assert job.reconnects[0]["restored_seq"] >= seq and 10 <= restored <= 15
        # Only the acknowledged updates after the last snapshot are gone.
        np.testing.assert_array_equal(values[0], np.full(4, restored + 1.0, np.float32))
        job.close()
        second.send_signal(signal.SIGTERM)  # an orderly stop takes a last snapshot
        assert second.wait(timeout=30) == 0
        assert _wait_snapshot_updates(ps_dir(tmp_path, 0), restored + 1) > seq
    finally:
        for proc in (first, second):
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.wait(timeout=10)
    assert not any(
        "tfyarn.service.ps_server" in _cmdline(pid) and str(tmp_path) in _cmdline(pid)
        for pid in _pids()
    )


def _pids() -> list[int]:
    return [int(p) for p in os.listdir("/proc") if p.isdigit()]


def _cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().decode(errors="replace")
    except OSError:
        return ""


def test_a_tls_service_serves_its_certificate_to_jobs_that_trust_it(tmp_path: Path) -> None:
    """``tls: true``: the ps serve the state dir's certificate (``tfyarn.service.ps_server
    --tls``), an attachment carrying it trains, one without it cannot connect."""
    secret = ensure_secret(tmp_path)
    certificate = ensure_certificate(tmp_path)
    assert ensure_certificate(tmp_path) == certificate  # made once
    assert (tmp_path / "tls.pem").stat().st_mode & 0o777 == 0o600
    assert "key_pem" not in repr(certificate)
    options = read_certificate(tmp_path).apply(transport.TransportOptions())
    # A plain client waits for the TLS listener's handshake_timeout: keep it short here.
    listener = transport.listen(
        "tcp://127.0.0.1:0", secret=secret, options=options.replace(handshake_timeout=2.0)
    )
    assert listener.transport == "tcp+tls"
    port = int(listener.address.rsplit(":", 1)[1])
    with _serving(listener, tmp_path):
        att = dataclasses.replace(_attachment(port, secret), certificate=certificate)
        job = _client(att, "job1/chief:0")
        job.init([np.zeros(4, np.float32)], SGD1)
        for _ in range(3):
            values = job.push_gradients(MINUS_ONE)
        np.testing.assert_array_equal(values[0], np.full(4, 3.0, np.float32))
        job.close()
        plain = LocalConnector(_attachment(port, secret, timeout=1.0), "job2/chief:0")
        with pytest.raises(TransportError):
            plain.connect("ps-0")  # no TLS: the ps never gets past its TLS handshake
