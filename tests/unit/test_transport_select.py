"""Transport selection: every rule, given devices and UCX availability explicitly."""

from __future__ import annotations

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
