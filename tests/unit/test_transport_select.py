"""Transport selection: every rule, given devices and UCX availability explicitly."""

from __future__ import annotations

from pathlib import Path

import pytest

from tfyarn.errors import ConfigError, TransportUnavailableError
from tfyarn.transport.select import SHM_UCX_TLS, choose_transport, probe

ONE_HOST = {"peer_hosts": ["127.0.0.1", "localhost", "127.0.0.1"], "local_host": "127.0.0.1"}
TWO_HOSTS = {"peer_hosts": ["node-a", "node-b"], "local_host": "node-a"}


def test_auto_prefers_rdma_when_devices_and_ucx() -> None:
    sel = choose_transport("auto", **TWO_HOSTS, rdma_devices=["mlx5_0"], have_ucx=True)
    assert (sel.scheme, sel.transport) == ("ucx", "ucx/rdma")
    assert "mlx5_0" in sel.reason and "auto" in sel.reason


def test_auto_uses_shared_memory_on_one_host() -> None:
    sel = choose_transport("auto", **ONE_HOST, rdma_devices=[], have_ucx=True)
    assert (sel.scheme, sel.transport) == ("ucx", "ucx/shm")
    assert sel.options["UCX_TLS"] == SHM_UCX_TLS
    assert "shared memory" in sel.reason and "no RDMA devices" in sel.reason


def test_auto_falls_to_tcp_and_says_why() -> None:
    sel = choose_transport("AUTO ", **TWO_HOSTS, rdma_devices=[], have_ucx=True)
    assert sel.scheme == "tcp"
    assert "2 hosts" in sel.reason and "no RDMA devices" in sel.reason
    sel = choose_transport("auto", **ONE_HOST, rdma_devices=["mlx5_0"], have_ucx=False)
    assert sel.scheme == "tcp" and "native UCX not built" in sel.reason


def test_rdma_without_devices_is_an_error_never_a_fallback() -> None:
    with pytest.raises(TransportUnavailableError, match="no RDMA devices"):
        choose_transport("rdma", **ONE_HOST, rdma_devices=[], have_ucx=True)
    with pytest.raises(TransportUnavailableError, match="native UCX not built"):
        choose_transport("rdma", **ONE_HOST, rdma_devices=["mlx5_0"], have_ucx=False)
    sel = choose_transport("rdma", **TWO_HOSTS, rdma_devices=["mlx5_0"], have_ucx=True)
    assert sel.transport == "ucx/rdma"


@pytest.mark.parametrize("name", ["tcp", "grpc"])
def test_explicit_tcp_grpc_are_honoured(name: str) -> None:
    sel = choose_transport(name, **ONE_HOST, rdma_devices=["mlx5_0"], have_ucx=True)
    assert sel.scheme == name and "requested" in sel.reason


def test_explicit_ucx_needs_native_ucx() -> None:
    assert choose_transport("ucx", **TWO_HOSTS, rdma_devices=[], have_ucx=True).scheme == "ucx"
    with pytest.raises(TransportUnavailableError, match="libucx-dev"):
        choose_transport("ucx", **TWO_HOSTS, rdma_devices=[], have_ucx=False)


def test_shm_needs_one_host() -> None:
    assert choose_transport("shm", **ONE_HOST, rdma_devices=[], have_ucx=True).transport == (
        "ucx/shm"
    )
    with pytest.raises(TransportUnavailableError, match="one host"):
        choose_transport("shm", **TWO_HOSTS, rdma_devices=[], have_ucx=True)


def test_unknown_request_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="infiniband"):
        choose_transport("infiniband", **ONE_HOST, rdma_devices=[], have_ucx=True)


def test_probe_reports_this_host() -> None:
    devices, have_ucx, note = probe()
    assert isinstance(devices, list) and isinstance(have_ucx, bool) and isinstance(note, str)
    sel = choose_transport("auto", **TWO_HOSTS)  # probed: never raises for auto
    assert sel.scheme in ("ucx", "tcp") and sel.reason.startswith("auto: ")


_SELECT_AND_CONNECT = """
import sys
from tfyarn import transport
from tfyarn.transport.select import choose_transport
sel = choose_transport("auto", peer_hosts=["127.0.0.1"] * 3, local_host="127.0.0.1")
secret = b"k" * 32
opts = sel.transport_options(transport.TransportOptions(op_timeout=60.0))
assert opts.op_timeout == 60.0 and dict(opts.ucx_env) == dict(sel.options)
with transport.listen(f"{sel.scheme}://127.0.0.1:0", secret=secret, options=opts) as lis:
    c = transport.connect(lis.address, secret=secret, options=opts)
    s = lis.accept(timeout=30)
    c.send(b"ping")
    assert bytes(s.recv()) == b"ping"
    print(sel.transport, c.transport, sel.reason)
    c.close()
    s.close()
"""


def test_auto_selection_opens_a_working_listener() -> None:
    """What the node layer does: choose, then listen/connect with the selection's options.

    Runs in a child process, because the shared-memory selection configures UCX for the
    whole process.
    """
    import subprocess
    import sys

    from tfyarn.transport.select import probe

    done = subprocess.run(
        [sys.executable, "-c", _SELECT_AND_CONNECT], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr[-3000:]
    picked, carried, reason = done.stdout.split(maxsplit=2)
    _, have_ucx, _ = probe()
    if have_ucx:  # one host, UCX built: shared memory, and UCX reports a shm transport
        assert picked == "ucx/shm"
        assert carried.startswith("ucx/") and any(t in carried for t in ("posix", "sysv", "cma"))
    else:
        assert (picked, carried) == ("tcp", "tcp")
    assert reason.startswith("auto:")


def test_devices_without_an_active_port_are_not_rdma() -> None:
    from tfyarn.transport.rdma import RdmaDevice, RdmaPort

    down = RdmaDevice("mlx5_0", [RdmaPort(1, "PORT_DOWN", "InfiniBand")])
    broken = RdmaDevice("mlx5_1", [], error="cannot open device")
    up = RdmaDevice("mlx5_2", [RdmaPort(1, "PORT_ACTIVE", "Ethernet")])
    sel = choose_transport("auto", **TWO_HOSTS, rdma_devices=[down, broken], have_ucx=True)
    assert sel.scheme == "tcp"
    assert "mlx5_0: no active port" in sel.reason and "cannot open device" in sel.reason
    with pytest.raises(TransportUnavailableError, match="no RDMA devices"):
        choose_transport("rdma", **TWO_HOSTS, rdma_devices=[down], have_ucx=True)
    sel = choose_transport("auto", **TWO_HOSTS, rdma_devices=[down, up], have_ucx=True)
    assert sel.transport == "ucx/rdma" and "mlx5_2" in sel.reason


def test_selection_folds_its_ucx_settings_into_the_job_options() -> None:
    from tfyarn.transport import TransportOptions

    sel = choose_transport("shm", **ONE_HOST, rdma_devices=[], have_ucx=True)
    assert sel.transport_options().ucx_env == {"UCX_TLS": SHM_UCX_TLS}
    job = TransportOptions(op_timeout=5.0, ucx_env={"UCX_TLS": "posix,self"})
    merged = sel.transport_options(job)
    assert merged.op_timeout == 5.0
    assert merged.ucx_env == {"UCX_TLS": "posix,self"}  # the job's explicit setting wins
    tcp = choose_transport("tcp", **ONE_HOST, rdma_devices=[], have_ucx=True)
    assert tcp.transport_options(job) is job


@pytest.mark.parametrize("mode", [0o644, None])
def test_a_system_python_that_cannot_run_means_no_rdma(tmp_path: Path, mode: int | None) -> None:
    # A node whose Python is hidden (the dev YARN's NodeManager sees /dev/null there) or
    # gone: no probe, so no RDMA, said as such; never an OSError out of the role.
    from tfyarn.transport.rdma import list_devices

    python = tmp_path / "python3"
    if mode is not None:
        python.write_text("")
        python.chmod(mode)
    with pytest.raises(TransportUnavailableError, match="cannot look for RDMA devices"):
        list_devices(str(python))


def test_tls_picks_tcp_or_grpc_and_refuses_ucx() -> None:
    facts = {"rdma_devices": ["mlx5_0"], "have_ucx": True, "tls": True}
    sel = choose_transport("auto", **ONE_HOST, **facts)  # RDMA and one host: still tcp
    assert (sel.scheme, sel.transport) == ("tcp", "tcp+tls")
    assert "UCX has no TLS" in sel.reason
    sel = choose_transport("grpc", **TWO_HOSTS, **facts)
    assert (sel.scheme, sel.transport) == ("grpc", "grpc+tls")
    for asked in ("ucx", "rdma", "shm"):
        with pytest.raises(ConfigError, match="cannot carry TLS"):
            choose_transport(asked, **ONE_HOST, **facts)
