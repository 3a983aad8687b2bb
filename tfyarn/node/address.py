"""Which address a role advertises: a setting, never a guess.

By default a role uses the address Spark itself uses for its executor (from the barrier
task infos). Multi-NIC and IPoIB hosts name an interface (``"ib0"``), a network
(``"10.20.0.0/16"``: each host's own address in it, for clusters whose NIC names differ
from host to host) or an address instead. Nothing here ever connects to a public
address to "discover" the host's IP.
"""

from __future__ import annotations

import fcntl
import ipaddress
import socket
import struct

from tfyarn.errors import ConfigError

__all__ = ["interface_address", "network_address", "resolve_address"]

_SIOCGIFADDR = 0x8915


def interface_address(name: str) -> str:
    """Return the IPv4 address of network interface ``name``.

    Raises
    ------
    ConfigError
        The interface does not exist or has no IPv4 address.
    """
    known = [n for _, n in socket.if_nameindex()]
    if name not in known:
        raise ConfigError(
            f"network interface {name!r} does not exist on host {socket.gethostname()}; "
            f"interfaces here: {', '.join(known)}. Set interface= to one of them or to an address."
        )
    try:
        return _ipv4_of(name)
    except OSError as exc:
        raise ConfigError(
            f"network interface {name!r} has no IPv4 address ({exc.strerror}); "
            "bring it up or choose another interface"
        ) from None


def _ipv4_of(name: str) -> str:
    """The (primary) IPv4 address of interface ``name``; OSError when it has none."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        packed = fcntl.ioctl(s.fileno(), _SIOCGIFADDR, struct.pack("256s", name.encode()[:15]))
    return socket.inet_ntoa(packed[20:24])


def _host_addresses() -> dict[str, str]:
    """Interface name -> its IPv4 address, for the interfaces that have one."""
    found = {}
    for _, name in socket.if_nameindex():
        try:
            found[name] = _ipv4_of(name)
        except OSError:  # down or without IPv4
            continue
    return found


def network_address(network: str, addresses: dict[str, str] | None = None) -> str:
    """This host's one IPv4 address inside ``network`` (CIDR, e.g. ``"10.20.0.0/16"``).

    Parameters
    ----------
    network : str
        The network, in CIDR notation.
    addresses : dict, optional
        Interface name -> IPv4 address (default: this host's).

    Raises
    ------
    ConfigError
        ``network`` is not a network, or no interface or several are in it.
    """
    try:
        net = ipaddress.ip_network(network, strict=False)
    except ValueError:
        raise ConfigError(
            f"interface={network!r} is neither an interface name, an address nor a network "
            "in CIDR notation (10.20.0.0/16)"
        ) from None
    known = _host_addresses() if addresses is None else addresses
    inside = sorted((n, a) for n, a in known.items() if ipaddress.ip_address(a) in net)
    listed = ", ".join(f"{n} {a}" for n, a in sorted(known.items())) or "none"
    host = socket.gethostname()
    if not inside:
        raise ConfigError(
            f"no interface of host {host} has an address in {net} (interface={network!r}); "
            f"its IPv4 addresses: {listed}. Name the network this host's cluster NIC is on."
        )
    if len(inside) > 1:
        raise ConfigError(
            f"several interfaces of host {host} have an address in {net}: "
            f"{', '.join(f'{n} {a}' for n, a in inside)}; name one (interface='{inside[0][0]}') "
            "or a narrower network"
        )
    return inside[0][1]


def resolve_address(interface: str | None, spark_host: str) -> str:
    """The address a role binds and advertises.

    Parameters
    ----------
    interface : str or None
        ``None``: use ``spark_host``. An IP address literal: use it. A network in CIDR
        notation: this host's address in it (:func:`network_address`). Otherwise the name
        of a network interface whose IPv4 address is used.
    spark_host : str
        The host Spark uses for this executor (``BarrierTaskInfo.address`` without port).
    """
    if interface is None or interface == "":
        return spark_host
    try:
        return str(ipaddress.ip_address(interface))
    except ValueError:
        pass
    if "/" in interface:
        return network_address(interface)
    return interface_address(interface)
