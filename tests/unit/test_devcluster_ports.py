"""How the dev YARN chooses its ports (the race CI once lost) and when it retries."""

from __future__ import annotations

import socket

from tfyarn.errors import YarnError
from tfyarn.yarn import devcluster


def test_free_ports_are_distinct_bindable_and_outside_the_ephemeral_range() -> None:
    low, high = devcluster._ephemeral_range()
    ports = devcluster.free_ports(12)
    assert len(set(ports)) == 12
    # Outside the kernel's own range: no outgoing connection can be handed one of them.
    assert all(not (low <= p <= high) for p in ports), (ports, low, high)
    for port in ports:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind(("127.0.0.1", port))


def test_free_ports_skips_a_port_in_use() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as held:
        held.bind(("127.0.0.1", devcluster._LOWEST_FREE_PORT))
        held.listen()
        # Many draws: the held port is in the pool each time and never handed out.
        drawn = {p for _ in range(20) for p in devcluster.free_ports(50)}
        assert devcluster._LOWEST_FREE_PORT not in drawn


def test_only_a_lost_port_makes_up_try_again() -> None:
    bind = YarnError("the dev YARN's nodemanager exited at start-up\njava.net.BindException: x")
    taken = YarnError("port(s) rm_web=15001 on 127.0.0.1 are in use (another YARN?)")
    other = YarnError("the dev YARN's NodeManager was not RUNNING in time")
    assert devcluster._lost_a_port(bind) and devcluster._lost_a_port(taken)
    assert not devcluster._lost_a_port(other)
