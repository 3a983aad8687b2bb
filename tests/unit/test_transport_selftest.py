"""The transport checks of ``tfyarn doctor`` run real loopback self-tests."""

from __future__ import annotations

from tfyarn import doctor
from tfyarn.transport.selftest import check_transports, loopback_round_trip


def test_doctor_lists_the_transport_checks() -> None:
    assert check_transports in doctor.CHECKS


def test_checks_pass_on_this_host() -> None:
    checks = {c.name: c for c in check_transports()}
    assert set(checks) == {"transport tcp", "transport grpc", "transport auto"}
    for name in ("transport tcp", "transport grpc"):
        assert checks[name].ok, checks[name].detail
        assert "1 MiB" in checks[name].detail
    assert checks["transport auto"].ok and "one host ->" in checks["transport auto"].detail


def test_loopback_round_trip_moves_the_bytes() -> None:
    assert loopback_round_trip("tcp", 4096) > 0
