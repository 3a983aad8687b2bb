"""Which address a role advertises: a setting, never a guess.

By default a role uses the address Spark itself uses for its executor (from the barrier
task infos). Multi-NIC and IPoIB hosts name an interface (``"ib0"``) or an address
instead. Nothing here ever connects to a public address to "discover" the host's IP.
"""

from __future__ import annotations

import fcntl
import ipaddress
import socket
import struct

from tfyarn.errors import ConfigError

__all__ = ["interface_address", "resolve_address"]

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
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            packed = fcntl.ioctl(s.fileno(), _SIOCGIFADDR, struct.pack("256s", name.encode()[:15]))
        except OSError as exc:
            raise ConfigError(
                f"network interface {name!r} has no IPv4 address ({exc.strerror}); "
                "bring it up or choose another interface"
            ) from None
    return socket.inet_ntoa(packed[20:24])


def resolve_address(interface: str | None, spark_host: str) -> str:
    """The address a role binds and advertises.

    Parameters
    ----------
    interface : str or None
        ``None``: use ``spark_host``. An IP address literal: use it. Otherwise the name of a
        network interface whose IPv4 address is used.
    spark_host : str
        The host Spark uses for this executor (``BarrierTaskInfo.address`` without port).
    """
    if interface is None or interface == "":
        return spark_host
    try:
        return str(ipaddress.ip_address(interface))
    except ValueError:
        return interface_address(interface)
