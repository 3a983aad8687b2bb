"""tcp and grpc between two network namespaces joined by a veth pair (a real two-host link).

The test creates both namespaces itself (we run as root), puts one end of a veth pair in
each, and runs the server peer in one and a checking client in the other: the traffic
never touches the root namespace. Both namespaces are deleted at the end.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from transport_peer import start_dialer, start_server

from tfyarn.transport.auth import new_job_secret

PEER = Path(__file__).with_name("transport_peer.py")
SERVER_IP, CLIENT_IP = "10.213.7.1", "10.213.7.2"
VETH_SERVER = "tfy{}s"


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, text=True, timeout=30)


@pytest.fixture(scope="module")
def namespaces() -> Iterator[tuple[str, str, str]]:
    """Two fresh namespaces ``(server_ns, client_ns, server_veth)`` linked by a veth pair."""
    if shutil.which("ip") is None or os.geteuid() != 0:
        pytest.fail("these tests create network namespaces: they need iproute2 and root")
    tag = f"{os.getpid() % 100000}"
    server_ns, client_ns = f"tfy-{tag}-srv", f"tfy-{tag}-cli"
    created: list[str] = []
    try:
        for ns in (server_ns, client_ns):
            _ip("netns", "add", ns)
            created.append(ns)
            _ip("-n", ns, "link", "set", "lo", "up")
        veth_s, veth_c = VETH_SERVER.format(tag), f"tfy{tag}c"
        _ip(
            "link",
            "add",
            veth_s,
            "netns",
            server_ns,
            "type",
            "veth",
            "peer",
            "name",
            veth_c,
            "netns",
            client_ns,
        )
        _ip("-n", server_ns, "addr", "add", f"{SERVER_IP}/30", "dev", veth_s)
        _ip("-n", client_ns, "addr", "add", f"{CLIENT_IP}/30", "dev", veth_c)
        _ip("-n", server_ns, "link", "set", veth_s, "up")
        _ip("-n", client_ns, "link", "set", veth_c, "up")
        yield server_ns, client_ns, veth_s
    finally:
        for ns in created:  # deleting a namespace deletes its end of the veth pair
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=30)


def _check_from(
    client_ns: str, address: str, secret: bytes, env: dict[str, str] | None = None
) -> dict[str, object]:
    """Run the checking client inside ``client_ns``; return its observations."""
    done = subprocess.run(
        [
            "ip",
            "netns",
            "exec",
            client_ns,
            sys.executable,
            str(PEER),
            "check",
            address,
            secret.hex(),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    for line in done.stdout.splitlines():
        if line.startswith("CHECKED "):
            return json.loads(line[len("CHECKED ") :])
    raise AssertionError(f"client failed (exit {done.returncode}): {done.stderr[-3000:]}")


def _ucx_env() -> dict[str, str]:
    """UCX over TCP only: the veth link is all there is between the namespaces."""
    return {**os.environ, "UCX_TLS": "tcp,self"}


@pytest.mark.parametrize("scheme", ["tcp", "grpc", "ucx"])
def test_backend_across_namespaces(namespaces: tuple[str, str, str], scheme: str) -> None:
    server_ns, client_ns, _ = namespaces
    env = None
    if scheme == "ucx":
        from tfyarn.transport.select import probe

        if not probe()[1]:
            pytest.fail("tfyarn.native was built without UCX; run make setup (libucx-dev)")
        env = _ucx_env()
    secret = new_job_secret()
    server = start_server(
        f"{scheme}://{SERVER_IP}:0",
        secret,
        1 << 20,
        env=env,
        prefix=("ip", "netns", "exec", server_ns),
    )
    try:
        assert server.address.startswith(f"{scheme}://{SERVER_IP}:")
        facts = _check_from(client_ns, server.address, secret, env)
    finally:
        log = server.stop()
    # ucx reports what UCX actually used; over the veth link that must be its tcp transport
    assert facts["transport"] == ("ucx/tcp" if scheme == "ucx" else scheme)
    assert facts["echo_ok"] == [True, True, True, True]
    assert facts["tensor_ok"] is True
    assert facts["put_get_ok"] is True
    assert str(facts["wrong_secret"]).startswith("refused")
    assert f"refused connection from {scheme}://{CLIENT_IP}:" in log  # logged with the peer


@pytest.mark.parametrize(
    ("scheme", "option"), [("tcp", "keepalive=1,1,2"), ("grpc", "keepalive=1,1,1")]
)
def test_keepalive_detects_a_vanished_host(
    namespaces: tuple[str, str, str], scheme: str, option: str
) -> None:
    """Cut the link under a receiver blocked in recv: keepalive must end the wait.

    Without keepalive, a host that vanishes (no FIN, no RST) leaves the receiver blocked
    for hours. With TCP keepalive probes (tcp) or HTTP/2 pings (grpc) every second it
    must give up within seconds. The link is restored afterwards for the other tests.
    """
    server_ns, client_ns, veth_s = namespaces
    secret = new_job_secret()
    prefix = ("ip", "netns", "exec")
    server = start_server(f"{scheme}://{SERVER_IP}:0", secret, 1024, prefix=(*prefix, server_ns))
    watcher = None
    try:
        watcher = start_dialer(
            server.address, secret, option, prefix=(*prefix, client_ns), mode="watch"
        )
        _ip("-n", server_ns, "link", "set", veth_s, "down")
        line = watcher.next_line(timeout=30)
        assert line.startswith("LOST"), f"receiver still blocked 30 s after the cut: {line!r}"
        assert float(line.split()[1]) < 20, line
    finally:
        _ip("-n", server_ns, "link", "set", veth_s, "up")
        if watcher is not None:
            watcher.stop()
        server.stop()
