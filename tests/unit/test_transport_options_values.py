"""TransportOptions: one validated vocabulary of transport settings."""

from __future__ import annotations

import pickle
import re
from pathlib import Path

import pytest

from tfyarn.errors import ConfigError
from tfyarn.transport import Keepalive, TransportOptions
from tfyarn.transport.frames import Limits


def test_defaults_are_those_the_backends_had() -> None:
    o = TransportOptions()
    assert o.connect_timeout == 30.0
    assert o.handshake_timeout == 10.0
    assert o.op_timeout is None
    assert o.keepalive == Keepalive(30, 10, 3)
    assert o.keepalive is not None and o.keepalive.timeout_s == 30
    assert o.chunk_bytes == 4 << 20
    assert (o.backlog, o.max_pending, o.max_streams, o.reuse_port) == (128, 64, 128, False)
    assert o.ucx_env == {}


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        (
            {"connect_timeout": 0},
            "TransportOptions.connect_timeout must be positive seconds, got 0",
        ),
        ({"handshake_timeout": -1.0}, "TransportOptions.handshake_timeout must be positive"),
        (
            {"op_timeout": float("nan")},
            "TransportOptions.op_timeout must be positive seconds or None",
        ),
        ({"op_timeout": True}, "TransportOptions.op_timeout"),
        ({"keepalive": (1, 2)}, "TransportOptions.keepalive must be a Keepalive"),
        ({"keepalive": (1, 0, 3)}, "Keepalive.interval_s must be a positive int, got 0"),
        ({"backlog": 0}, "TransportOptions.backlog must be a positive int, got 0"),
        ({"max_pending": 2.5}, "TransportOptions.max_pending must be a positive int"),
        ({"max_streams": True}, "TransportOptions.max_streams must be a positive int"),
        ({"chunk_bytes": 100}, "TransportOptions.chunk_bytes must be >= 1024, got 100"),
        ({"reuse_port": 1}, "TransportOptions.reuse_port must be a bool, got 1"),
        ({"limits": {}}, "TransportOptions.limits must be a tfyarn.transport.frames.Limits"),
        ({"tls_root_certs": 42}, "TransportOptions.tls_root_certs must be PEM bytes or the path"),
        ({"tls_cert_chain": b"pem"}, "tls_cert_chain and tls_private_key go together"),
        ({"tls_server_name": ""}, "TransportOptions.tls_server_name must be a non-empty str"),
        ({"ucx_env": {"TLS": "tcp"}}, "TransportOptions.ucx_env: 'TLS' is not a UCX_* setting"),
        ({"ucx_env": {"UCX_TLS": 1}}, "TransportOptions.ucx_env['UCX_TLS'] must be a str"),
    ],
)
def test_a_bad_field_is_named(changes: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)):
        TransportOptions(**changes)  # type: ignore[arg-type]


def test_keepalive_triple_becomes_a_keepalive() -> None:
    assert TransportOptions(keepalive=(1, 2, 3)).keepalive == Keepalive(1, 2, 3)  # type: ignore[arg-type]
    assert TransportOptions(keepalive=None).keepalive is None


def test_replace_validates_and_refuses_unknown_names() -> None:
    o = TransportOptions().replace(op_timeout=2.5, keepalive=(5, 1, 2))
    assert o.op_timeout == 2.5 and o.keepalive == Keepalive(5, 1, 2)
    with pytest.raises(
        ConfigError, match=re.escape("unknown transport option(s) keepalive_s, nope; ")
    ):
        TransportOptions().replace(keepalive_s=1, nope=2)
    with pytest.raises(ConfigError, match=re.escape("TransportOptions.op_timeout")):
        o.replace(op_timeout=-1)


def test_ucx_env_merges_with_ours_winning() -> None:
    o = TransportOptions(ucx_env={"UCX_TLS": "tcp"}).with_ucx_env(
        {"UCX_TLS": "posix,self", "UCX_NET_DEVICES": "eth0"}
    )
    assert o.ucx_env == {"UCX_TLS": "tcp", "UCX_NET_DEVICES": "eth0"}


def test_options_are_frozen_hashable_and_picklable() -> None:
    o = TransportOptions(op_timeout=3.0, ucx_env={"UCX_TLS": "tcp"}, limits=Limits(max_alloc=1))
    with pytest.raises(AttributeError):
        o.op_timeout = 1.0  # type: ignore[misc]
    assert pickle.loads(pickle.dumps(o)) == o  # the job spec ships it to executors
    assert hash(o) == hash(
        TransportOptions(op_timeout=3.0, ucx_env={"UCX_TLS": "tcp"}, limits=Limits(max_alloc=1))
    )


def test_read_pem_from_bytes_or_file(tmp_path: Path) -> None:
    pem = tmp_path / "ca.pem"
    pem.write_bytes(b"-----BEGIN CERTIFICATE-----\n")
    assert TransportOptions(tls_root_certs=str(pem)).read_pem("tls_root_certs") == pem.read_bytes()
    assert TransportOptions(tls_root_certs=b"x").read_pem("tls_root_certs") == b"x"
    missing = TransportOptions(tls_root_certs=str(tmp_path / "missing.pem"))
    with pytest.raises(
        ConfigError, match=re.escape("cannot read TransportOptions.tls_root_certs from")
    ):
        missing.read_pem("tls_root_certs")
