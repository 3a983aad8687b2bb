"""The tcp backend between two processes over loopback (cases in transport_cases.py)."""

from __future__ import annotations

from transport_cases import BackendCases


class TestTcp(BackendCases):
    scheme = "tcp"
