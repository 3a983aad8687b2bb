"""ucx backend pieces that need no second process, and RDMA/UCX discovery on this host."""

from __future__ import annotations

import socket
import subprocess
import sys
import time

import pytest

from tfyarn import transport
from tfyarn.doctor import CHECKS, run_checks
from tfyarn.errors import ConfigError, TransportError, TransportUnavailableError
from tfyarn.transport import rdma, ucx

SECRET = b"s" * 32

TCP_INFO = """#
# UCP endpoint
#               peer: <no debug data>
#                 lane[0]:  1:tcp/lo.0 md[1]                -> md[1]/tcp/sysdev[255] am am_bw#0
#                 am_send: 0..<egr/short>..8185..<egr/zcopy>..20553..<rndv>..(inf)
#                  rma_bw: mds rndv_rkey_size 9
"""
SHM_INFO = """#
#                 lane[0]:  1:posix/memory.0 md[1]          -> md[1]/posix/sysdev[255] am am_bw#0
#                 lane[1]:  2:cma/memory.0 md[2]            -> md[2]/cma/sysdev[255] rma_bw#0
#                 lane[2]:  1:posix/memory.0 md[1]          -> md[1]/posix/sysdev[255] rma#0
#                  put[0]: 0..<short>..4294967296..<bcopy>..(inf)
"""


def test_registry_maps_the_ucx_scheme_to_this_backend():
    assert transport.backend("ucx") is ucx.BACKEND


def test_describe_lanes_names_the_transports_in_lane_order():
    assert ucx.describe_lanes(TCP_INFO) == "ucx/tcp"
    assert ucx.describe_lanes(SHM_INFO) == "ucx/posix+cma"
    assert ucx.describe_lanes("# no lanes") == "ucx"


@pytest.mark.parametrize(
    ("tls", "peer_mode"),
    [
        ("", True),
        ("tcp,self", True),
        ("posix,self", False),
        ("sm,self", False),
        ("rc,sm", True),
        ("^tcp", True),
    ],
)
def test_peer_failure_mode_only_where_ucx_supports_it(monkeypatch, tls, peer_mode):
    monkeypatch.setenv("UCX_TLS", tls)
    assert ucx._want_peer_failure_mode() is peer_mode


def test_bad_addresses_and_secrets_are_config_errors():
    with pytest.raises(ConfigError, match="ucx://"):
        ucx.listen("tcp://127.0.0.1:0", secret=SECRET)
    with pytest.raises(ConfigError, match="at least"):
        ucx.listen("ucx://127.0.0.1:0", secret=b"short")


def test_connect_to_nothing_fails_fast():
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(TransportError, match="cannot connect"):
        ucx.connect(f"ucx://127.0.0.1:{port}", secret=SECRET, timeout=5)


def test_listener_accept_times_out_and_closes_cleanly():
    lst = ucx.listen("ucx://127.0.0.1:0", secret=SECRET)
    assert lst.address.startswith("ucx://127.0.0.1:")
    with pytest.raises(TransportError, match=r"within 0\.2 s"):
        lst.accept(timeout=0.2)
    lst.close()
    lst.close()
    with pytest.raises(TransportError, match="closed"):
        lst.accept(timeout=0.1)


def test_region_names_are_write_once():
    with ucx.listen("ucx://127.0.0.1:0", secret=SECRET) as lst:
        lst.register("a", bytearray(64))
        with pytest.raises(ValueError, match="write-once"):
            lst.register("a", bytearray(64))
        with pytest.raises(ConfigError, match="read-only"):
            lst.register("b", b"read-only bytes")


def test_rdma_devices_here():
    devices = rdma.list_devices()
    assert isinstance(devices, list)
    assert all(isinstance(d, rdma.RdmaDevice) for d in devices)
    checks = list(rdma.check_rdma())
    first = checks[0]
    assert first.name == "RDMA devices" and not first.required
    if not devices:  # this host: pyverbs raises "Failed to get devices list", reported as none
        assert first.ok
        assert first.detail.startswith("none found")
    else:
        assert all(d.name in first.detail for d in devices)


def test_missing_pyverbs_interpreter_is_reported(tmp_path):
    with pytest.raises(TransportUnavailableError, match="TFYARN_SYSTEM_PYTHON"):
        rdma.list_devices(system_python=str(tmp_path / "no-python"))


def test_ucx_transports_here():
    tls = rdma.ucx_transports()
    # libucx0 always has these; RDMA ones (rc, ud, dc) appear only with devices.
    assert {"self", "tcp", "posix"} <= set(tls)
    devices = rdma.ucx_transport_devices()
    assert "lo" in devices["tcp"]
    ucx_check = list(rdma.check_rdma())[1]
    assert ucx_check.name == "UCX transports" and ucx_check.ok
    assert "tcp" in ucx_check.detail and "1." in ucx_check.detail


def test_doctor_runs_the_rdma_check():
    assert rdma.check_rdma in CHECKS
    names = [c.name for c in run_checks([rdma.check_rdma])]
    assert names == ["RDMA devices", "UCX transports"]


@pytest.fixture
def pair():
    """A listener and a connected comm pair inside this process (UCX's default transports)."""
    lst = ucx.listen("ucx://127.0.0.1:0", secret=SECRET, op_timeout=30)
    client = ucx.connect(lst.address, secret=SECRET, timeout=10, op_timeout=30)
    server = lst.accept(timeout=10)
    yield lst, client, server
    client.close()
    lst.close()


def test_receive_timeout_leaves_the_connection_usable(pair):
    _, client, server = pair
    assert server.op_timeout == 30
    server.op_timeout = 0.3
    with pytest.raises(TransportError, match="no message within"):
        server.recv_into(bytearray(10))
    server.op_timeout = None
    client.send(b"after the timeout")
    assert bytes(server.recv()) == b"after the timeout"


def test_close_unblocks_a_waiting_receive(pair):
    import threading

    _, client, _ = pair
    errors: list[BaseException] = []

    def wait() -> None:
        try:
            client.recv_into(bytearray(10))
        except BaseException as exc:  # recorded for the assertion
            errors.append(exc)

    t = threading.Thread(target=wait)
    t.start()
    t.join(0.3)
    assert t.is_alive()  # really blocked
    client.close()
    t.join(10)
    assert not t.is_alive()
    assert len(errors) == 1 and isinstance(errors[0], TransportError)


def test_peer_close_is_reported_to_the_receiver(pair):
    _, client, server = pair
    client.send(b"last words")
    client.close()
    assert bytes(server.recv()) == b"last words"  # sent before the goodbye: still delivered
    with pytest.raises(TransportError, match="peer closed"):
        server.recv()


def test_silent_peers_cannot_exhaust_the_listener():
    """Handshakes in flight are bounded; a silent peer is dropped after the handshake
    timeout, and the listener then serves a real peer."""
    with ucx.listen(
        "ucx://127.0.0.1:0", secret=SECRET, max_pending=1, handshake_timeout=1.0
    ) as lst:
        host, port = lst.address.removeprefix("ucx://").rsplit(":", 1)
        silent = socket.create_connection((host, int(port)), timeout=5)
        time.sleep(0.2)  # let the listener start the silent peer's handshake
        extra = socket.create_connection((host, int(port)), timeout=5)
        extra.settimeout(5)
        assert extra.recv(64) == b""  # refused at once: the one handshake slot is taken
        extra.close()
        silent.settimeout(5)
        silent.recv(64)  # the challenge
        assert silent.recv(64) == b""  # dropped after the 1 s handshake timeout
        silent.close()
        comm = ucx.connect(lst.address, secret=SECRET, timeout=10)
        peer = lst.accept(timeout=10)
        comm.send(b"served")
        assert bytes(peer.recv()) == b"served"
        comm.close()


REGISTRATION_PROBE = """
from tfyarn import native
from tfyarn.transport import ucx

secret = b"s" * 32
before = native.BufferPool(1 << 20)
old = before.alloc(4096)
# No UCX context yet: the pool has no registrar, nothing is registered.
assert before.registered_slabs == 0 and not old.registered, "registered before UCX was used"

lst = ucx.listen("ucx://127.0.0.1:0", secret=secret, op_timeout=30)
client = ucx.connect(lst.address, secret=secret, timeout=10, op_timeout=30)
server = lst.accept(timeout=10)
# The context exists now (ucx.c installed its registrar): a new pool's slab is registered
# as it is created; the older slab is registered the first time one of its buffers is sent.
after = native.BufferPool(1 << 20)
new = after.alloc(4096)
assert after.registered_slabs == after.nslabs == 1 and new.registered
assert not old.registered
memoryview(old)[:5] = b"hello"
client.send(old)
assert old.registered and before.registered_slabs == 1
into = after.alloc(4096)
assert server.recv_into(into) == 4096 and bytes(memoryview(into)[:5]) == b"hello"
# A registered slab is deregistered and unmapped when its pool is closed.
for buf in (old, new, into):
    buf.release()
before.close()
after.close()
assert before.nslabs == 0 and after.nslabs == 0
client.close()
lst.close()
print("ok")
"""


def test_pool_slabs_are_registered_once_ucx_is_in_use():
    # A fresh interpreter: the UCP context is process-wide, other tests may have made it.
    out = subprocess.run(
        [sys.executable, "-c", REGISTRATION_PROBE], capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr
