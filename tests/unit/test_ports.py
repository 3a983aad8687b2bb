"""Port reservation and address resolution."""

from __future__ import annotations

import errno
import socket

import pytest

from tfyarn.errors import ConfigError
from tfyarn.node.address import interface_address, network_address, resolve_address
from tfyarn.node.ports import reserve_port


def test_reserved_port_blocks_plain_binds_and_admits_reuseport_binds() -> None:
    with reserve_port("127.0.0.1") as held:
        plain = socket.socket()
        with pytest.raises(OSError) as err:
            plain.bind(("127.0.0.1", held.port))
        assert err.value.errno == errno.EADDRINUSE
        plain.close()
        shared = socket.socket()
        shared.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        shared.bind(("127.0.0.1", held.port))
        shared.listen()
        shared.close()
    free = socket.socket()
    free.bind(("127.0.0.1", held.port))  # released: anyone may bind now
    free.close()
    assert not held.held


def test_address_is_a_setting_never_a_guess() -> None:
    assert resolve_address(None, "10.1.2.3") == "10.1.2.3"
    assert resolve_address("127.0.0.1", "10.1.2.3") == "127.0.0.1"
    assert resolve_address("lo", "10.1.2.3") == "127.0.0.1"
    assert interface_address("lo") == "127.0.0.1"
    with pytest.raises(ConfigError, match="'nosuch0' does not exist"):
        resolve_address("nosuch0", "10.1.2.3")


def test_a_network_picks_this_hosts_one_address_in_it() -> None:
    # Loopback is the one interface every host has: 127.0.0.1 in 127.0.0.0/8.
    assert resolve_address("127.0.0.0/8", "10.1.2.3") == "127.0.0.1"
    hosts = {"eth0": "192.168.1.5", "ib0": "10.20.3.4", "ib1": "10.21.3.4"}
    assert network_address("10.20.0.0/16", hosts) == "10.20.3.4"
    assert network_address("10.20.3.4/16", hosts) == "10.20.3.4"  # host bits are tolerated
    with pytest.raises(ConfigError, match=r"several interfaces .* ib0 10\.20\.3\.4, ib1"):
        network_address("10.0.0.0/8", hosts)
    with pytest.raises(ConfigError, match=r"no interface .* in 172\.16\.0\.0/12.*eth0 192"):
        network_address("172.16.0.0/12", hosts)
    with pytest.raises(ConfigError, match="CIDR notation"):
        network_address("10.20.0.0/99", hosts)
