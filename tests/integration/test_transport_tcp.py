"""The tcp backend between two processes over loopback, plain and over TLS (cases in
transport_cases.py)."""

from __future__ import annotations

from transport_cases import BackendCases, TlsCases


class TestTcp(BackendCases):
    scheme = "tcp"


class TestTcpTls(TlsCases):
    scheme = "tcp"
