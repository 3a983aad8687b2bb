"""Backend registry and address parsing."""

from __future__ import annotations

import os
import re

import pytest

import tfyarn.transport as transport
from tfyarn.errors import ConfigError, TransportUnavailableError
from tfyarn.transport import Comm, Listener, TransportOptions
from tfyarn.transport.tcp import TcpBackend


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
    from tfyarn.transport import grpc_transport, tcp

    assert {"tcp", "grpc", "ucx"} <= set(transport.registered_schemes())
    assert transport.backend("tcp") is tcp.BACKEND
    assert transport.backend("GRPC") is grpc_transport.BACKEND
    for scheme in ("tcp", "grpc"):
        b = transport.backend(scheme)
        assert isinstance(b, transport.Backend) and b.scheme == scheme


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
        transport.unregister_backend("test-missing")
    assert "test-missing" not in transport.registered_schemes()


def test_a_module_without_backend_is_refused_by_name() -> None:
    transport.register_backend("test-nobackend", "tfyarn.transport.frames")
    try:
        with pytest.raises(ConfigError, match=re.escape("tfyarn.transport.frames registered for ")):
            transport.connect("test-nobackend://127.0.0.1:1", secret=b"s" * 32)
    finally:
        transport.unregister_backend("test-nobackend")


class _Recording(TcpBackend):
    """A real tcp backend under another scheme that records what the registry hands it."""

    scheme = "rec"

    def __init__(self) -> None:
        self.calls: list[tuple[str, str, int, bytes, TransportOptions]] = []

    def open_listener(
        self, host: str, port: int, *, secret: bytes, options: TransportOptions
    ) -> Listener:
        self.calls.append(("listen", host, port, secret, options))
        return super().open_listener(host, port, secret=secret, options=options)

    def dial(self, host: str, port: int, *, secret: bytes, options: TransportOptions) -> Comm:
        self.calls.append(("dial", host, port, secret, options))
        return super().dial(host, port, secret=secret, options=options)


def test_a_registered_backend_gets_parsed_address_checked_secret_and_options() -> None:
    rec = _Recording()
    transport.register_backend("rec", rec)
    secret = bytearray(b"s" * 32)
    try:
        opts = TransportOptions(op_timeout=4.0, keepalive=(5, 2, 2))
        with transport.listen("rec://127.0.0.1:0", secret=secret, options=opts) as lis:
            port = int(lis.address.rsplit(":", 1)[1])
            with transport.connect(
                f"rec://127.0.0.1:{port}", secret=secret, timeout=7, max_pending=3
            ) as c:
                srv = lis.accept(timeout=10)
                c.send(b"via rec")
                assert bytes(srv.recv()) == b"via rec"
                assert srv.op_timeout == 4.0  # the listener's options reach its comms
                assert c.op_timeout is None
                srv.close()
    finally:
        transport.unregister_backend("rec")
    (kind, host, p0, key, seen), (kind2, _, p1, _, dialed) = rec.calls
    assert (kind, host, p0, key, seen) == ("listen", "127.0.0.1", 0, b"s" * 32, opts)
    assert type(key) is bytes  # checked and converted once, by the registry
    assert (kind2, p1) == ("dial", port)
    assert dialed == TransportOptions(connect_timeout=7, max_pending=3)


def test_options_are_one_vocabulary_for_every_backend() -> None:
    for scheme in ("tcp", "grpc", "ucx"):
        with pytest.raises(ConfigError, match=re.escape("unknown transport option(s) keepalive_s")):
            transport.listen(f"{scheme}://127.0.0.1:0", secret=b"s" * 32, keepalive_s=1)
        with pytest.raises(
            ConfigError, match=re.escape("TransportOptions.op_timeout must be positive")
        ):
            transport.connect(f"{scheme}://127.0.0.1:1", secret=b"s" * 32, op_timeout=0)
    with pytest.raises(
        ConfigError, match=re.escape("options must be a tfyarn.transport.TransportOptions")
    ):
        transport.listen("tcp://127.0.0.1:0", secret=b"s" * 32, options={"op_timeout": 1})  # type: ignore[arg-type]


def test_a_backend_refuses_another_scheme() -> None:
    from tfyarn.transport import tcp

    with pytest.raises(
        ConfigError, match=re.escape("tcp.listen needs a tcp:// address, got 'grpc://h:1'")
    ):
        tcp.listen("grpc://h:1", secret=b"s" * 32)


def test_register_backend_validates_its_arguments() -> None:
    with pytest.raises(ConfigError):
        transport.register_backend("bad scheme", "x")
    with pytest.raises(ConfigError, match="needs a Backend or a module name"):
        transport.register_backend("ok", "")
    with pytest.raises(ConfigError, match="needs a Backend or a module name"):
        transport.register_backend("ok", object())  # type: ignore[arg-type]


def test_ucx_library_settings_go_to_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("UCX_TLS", raising=False)
    # tcp has no use for UCX_TLS: it becomes a UCX library setting, not a tcp option.
    with transport.listen("tcp://127.0.0.1:0", secret=b"s" * 32, UCX_TLS="posix,self") as lis:
        assert lis.transport == "tcp"
        assert lis.options.ucx_env == {"UCX_TLS": "posix,self"}  # type: ignore[attr-defined]
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
