"""``tfyarn doctor`` checks of the transport layer: loopback self-tests and the auto pick.

Each built-in Python backend (tcp, grpc) opens a listener on 127.0.0.1, connects to it
with a fresh secret, and moves 1 MiB both ways plus a put/get, which exercises the
handshake, the frames and the RMA service on this host. The last check says which
transport ``transport="auto"`` would pick for a one-host and a multi-host job, and why.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator

from tfyarn.diagnosis import Check

__all__ = ["check_transports", "loopback_round_trip"]

_SELFTEST_BYTES = 1 << 20


def loopback_round_trip(scheme: str, nbytes: int = _SELFTEST_BYTES) -> float:
    """Send ``nbytes`` to a listener of ``scheme`` on 127.0.0.1 and back; return seconds.

    Raises
    ------
    TFYarnError
        Whatever the backend raises; or a TransportError if the bytes came back wrong.
    """
    from tfyarn import transport
    from tfyarn.errors import TransportError
    from tfyarn.transport.auth import new_job_secret

    secret = new_job_secret()
    payload = os.urandom(nbytes)
    t0 = time.perf_counter()
    with transport.listen(f"{scheme}://127.0.0.1:0", secret=secret) as lis:
        region = bytearray(nbytes)
        lis.register("selftest", region)
        with transport.connect(lis.address, secret=secret, timeout=10) as client:
            server = lis.accept(timeout=10)
            try:
                client.send(payload)
                server.send(server.recv())
                back = bytearray(nbytes)
                client.recv_into(back)
                client.put(payload, "selftest")
                got = bytearray(nbytes)
                client.get(got, "selftest")
            finally:
                server.close()
    if back != payload or region != payload or got != payload:
        raise TransportError(f"{scheme} loopback self-test: the bytes came back altered")
    return time.perf_counter() - t0


def check_transports() -> Iterator[Check]:
    """Yield one check per Python backend's loopback self-test, then the auto selection."""
    from tfyarn.errors import TFYarnError
    from tfyarn.transport.select import choose_transport

    for scheme in ("tcp", "grpc"):
        try:
            seconds = loopback_round_trip(scheme)
        except (TFYarnError, OSError) as exc:
            yield Check(
                f"transport {scheme}",
                False,
                f"loopback self-test failed: {exc}",
                "check that 127.0.0.1 works and no firewall blocks local ports",
            )
        else:
            yield Check(
                f"transport {scheme}",
                True,
                f"loopback send/recv/put/get of 1 MiB in {seconds * 1000:.0f} ms",
            )
    try:
        one = choose_transport("auto", peer_hosts=["127.0.0.1"], local_host="127.0.0.1")
        many = choose_transport("auto", peer_hosts=["host-a", "host-b"], local_host="host-a")
    except TFYarnError as exc:
        yield Check("transport auto", False, str(exc), "run `tfyarn doctor` checks above")
    else:
        yield Check(
            "transport auto",
            True,
            f"one host -> {one.transport}; several hosts -> {many.transport}",
            required=False,
        )
