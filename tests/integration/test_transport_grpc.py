"""The grpc backend between two processes over loopback, plain and over TLS.

The shared cases are in transport_cases.py; TLS runs them all again with a self-signed
certificate made here with the ``cryptography`` package.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import tempfile
from collections.abc import Iterator
from typing import Any, ClassVar

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from transport_cases import BackendCases
from transport_peer import Peer

from tfyarn.errors import TransportError
from tfyarn.transport import connect


def self_signed_cert(directory: str) -> tuple[str, str]:
    """Write a certificate for 127.0.0.1/localhost and its key; return their paths."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = os.path.join(directory, "cert.pem"), os.path.join(directory, "key.pem")
    with open(cert_path, "wb") as f:
        f.write(cert.public_bytes(serialization.Encoding.PEM))
    with open(key_path, "wb") as f:
        f.write(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
    return cert_path, key_path


class TestGrpc(BackendCases):
    scheme = "grpc"


class TestGrpcTls(BackendCases):
    scheme = "grpc"
    cert_path: ClassVar[str] = ""
    key_path: ClassVar[str] = ""

    @pytest.fixture(scope="class", autouse=True)
    @classmethod
    def certificate(cls) -> Iterator[None]:
        with tempfile.TemporaryDirectory(prefix="tfyarn-tls-") as d:
            cls.cert_path, cls.key_path = self_signed_cert(d)
            yield

    @classmethod
    def peer_listen_args(cls) -> tuple[str, ...]:
        return (f"tls_cert_chain=@{cls.cert_path}", f"tls_private_key=@{cls.key_path}")

    @classmethod
    def peer_connect_args(cls) -> tuple[str, ...]:
        return (f"tls_root_certs=@{cls.cert_path}",)

    def connect_options(self) -> dict[str, Any]:
        return {"tls_root_certs": self.cert_path}

    def listen_options(self) -> dict[str, Any]:
        return {"tls_cert_chain": self.cert_path, "tls_private_key": self.key_path}

    def test_transport_name_says_tls(self, server: Peer, secret: bytes) -> None:
        with connect(server.address, secret=secret, **self.connect_options()) as c:
            assert c.transport == "grpc+tls"

    def test_plaintext_client_cannot_talk_to_tls_server(self, server: Peer, secret: bytes) -> None:
        with pytest.raises(TransportError, match="TLS mismatch"):
            connect(server.address, secret=secret, timeout=1)

    def test_client_with_other_root_refuses_server(self, server: Peer, secret: bytes) -> None:
        with tempfile.TemporaryDirectory(prefix="tfyarn-tls-") as d:
            other_cert, _ = self_signed_cert(d)
            with pytest.raises(TransportError):
                connect(server.address, secret=secret, timeout=1, tls_root_certs=other_cert)
