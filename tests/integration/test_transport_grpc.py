"""The grpc backend between two processes over loopback, plain and over TLS.

The shared cases are in transport_cases.py; TLS runs them all again with a self-signed
certificate (transport_cases.TlsCases).
"""

from __future__ import annotations

import pytest
from transport_cases import BackendCases, TlsCases
from transport_peer import Peer

from tfyarn.errors import TransportError
from tfyarn.transport import connect


class TestGrpc(BackendCases):
    scheme = "grpc"


class TestGrpcTls(TlsCases):
    scheme = "grpc"

    def test_plaintext_client_is_told_of_a_tls_mismatch(self, server: Peer, secret: bytes) -> None:
        with pytest.raises(TransportError, match="TLS mismatch"):
            connect(server.address, secret=secret, timeout=1)
