"""Backend registry and address parsing."""

from __future__ import annotations

import os

import pytest

import tfyarn.transport as transport
from tfyarn.errors import ConfigError, TransportUnavailableError


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("tcp://127.0.0.1:5000", ("tcp", "127.0.0.1", 5000)),
        ("TCP://localhost:0", ("tcp", "localhost", 0)),
        ("grpc://[::1]:65535", ("grpc", "::1", 65535)),
        ("ucx://node-7.example:1234/", ("ucx", "node-7.example", 1234)),
    ],
)
def test_parse_address(url: str, expected: tuple[str, str, int]) -> None:
    assert transport.parse_address(url) == expected


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("127.0.0.1:5000", "scheme://host:port"),
        ("tcp://127.0.0.1", "no port"),
        ("tcp://127.0.0.1:70000", "invalid port"),
        ("tcp://:5000", "no scheme or no host"),
        ("tcp://h:1/path", "only"),
        ("tcp://user@h:1", "only"),
    ],
)
def test_parse_address_errors(url: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        transport.parse_address(url)


def test_builtin_schemes_are_registered() -> None:
    assert {"tcp", "grpc", "ucx"} <= set(transport.registered_schemes())
    assert transport.backend("tcp").__name__ == "tfyarn.transport.tcp"


def test_unknown_scheme_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="no transport backend for scheme 'carrier-pigeon'"):
        transport.connect("carrier-pigeon://h:1", secret=b"s" * 32)


def test_register_backend_imports_lazily_and_reports_missing_modules() -> None:
    transport.register_backend("test-missing", "tfyarn.transport.no_such_backend_module")
    try:
        assert "test-missing" in transport.registered_schemes()
        with pytest.raises(TransportUnavailableError, match="no_such_backend_module"):
            transport.listen("test-missing://127.0.0.1:0", secret=b"s" * 32)
    finally:
        transport._BACKENDS.pop("test-missing", None)


def test_register_backend_validates_its_arguments() -> None:
    with pytest.raises(ConfigError):
        transport.register_backend("bad scheme", "x")
    with pytest.raises(ConfigError):
        transport.register_backend("ok", "")


def test_ucx_library_settings_go_to_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("UCX_TLS", raising=False)
    # tcp.listen has no UCX_TLS parameter: the registry must not pass it through.
    with transport.listen("tcp://127.0.0.1:0", secret=b"s" * 32, UCX_TLS="posix,self") as lis:
        assert lis.transport == "tcp"
    assert os.environ["UCX_TLS"] == "posix,self"
    # An operator's explicit setting wins over the selection's.
    with transport.listen("tcp://127.0.0.1:0", secret=b"s" * 32, UCX_TLS="tcp"):
        pass
    assert os.environ["UCX_TLS"] == "posix,self"


@pytest.mark.parametrize("scheme", ["tcp", "grpc"])
def test_ipv6_loopback(scheme: str) -> None:
    secret = b"s" * 32
    with transport.listen(f"{scheme}://[::1]:0", secret=secret) as lis:
        assert lis.address.startswith(f"{scheme}://[::1]:")
        assert transport.parse_address(lis.address)[1] == "::1"
        with transport.connect(lis.address, secret=secret, timeout=10) as c:
            srv = lis.accept(timeout=10)
            c.send(b"over v6")
            assert bytes(srv.recv()) == b"over v6"
            srv.close()
