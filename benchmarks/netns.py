"""Several "hosts" on one machine for the benchmarks: network namespaces on a bridge.

:func:`bridged_hosts` makes a *switch* namespace holding a Linux bridge and one namespace
per host, each linked to the bridge by a veth pair (the host's NIC inside it, the
bridge port in the switch). Nothing touches the root namespace's network. Deleting the
namespaces deletes the veth pairs, the bridge and every qdisc with them, which
:func:`bridged_hosts` does on the way out, also on failure.

:func:`limit_links` puts ``tc qdisc ... tbf`` on both directions of every host's link
(the NIC's egress is the host's uplink, the bridge port's egress its downlink), as a
link of that rate would limit a real host. :func:`parse_rate` reads tc's rate syntax;
:func:`tbf_burst` chooses the token bucket.

Needs root and iproute2 (``ip``, ``tc``): :func:`missing_privileges` says what is
missing. ``tfyarn bench links`` (two hosts) and ``tfyarn bench scaling`` (up to one
host per trainer) use it.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

__all__ = [
    "Hosts",
    "bridged_hosts",
    "host_addresses",
    "limit_links",
    "missing_privileges",
    "parse_rate",
    "refusal",
    "run_command",
    "tbf_burst",
]

#: Seconds one ``ip``/``tc`` command may take.
COMMAND_TIMEOUT = 60.0
_RATE_UNITS = {"kbit": 1e3, "mbit": 1e6, "gbit": 1e9, "bit": 1.0}


def parse_rate(text: str) -> float | None:
    """``"10gbit"`` -> bits per second; ``"none"`` -> None (no limit).

    Raises
    ------
    ValueError
        Not a positive number followed by bit, kbit, mbit or gbit.
    """
    t = text.strip().lower()
    if t == "none":
        return None
    for unit, scale in _RATE_UNITS.items():
        if t.endswith(unit):
            number = t[: -len(unit)]
            try:
                value = float(number)
            except ValueError:
                break
            if value > 0:
                return value * scale
            break
    raise ValueError(f"bad rate {text!r}: use e.g. 1gbit, 500mbit, or none")


def tbf_burst(bits_per_second: float) -> int:
    """tbf's bucket in bytes: 10 ms at the rate, at least 256 KiB.

    A bucket smaller than one kernel tick's worth of bytes (rate / HZ, HZ up to 1000)
    keeps tbf below its rate; 10 ms covers any HZ, and over the seconds an all-reduce
    takes the burst changes the average by well under 1 %.
    """
    return max(256 << 10, int(bits_per_second / 8 * 0.010))


def host_addresses(count: int, subnet: str) -> list[str]:
    """The hosts' addresses in ``subnet`` (its first three octets): ``.10``, ``.11`` ...

    Raises
    ------
    ValueError
        Fewer than one host, or more than the /24 holds.
    """
    if not 1 <= count <= 240:
        raise ValueError(f"between 1 and 240 hosts fit a /24, not {count}")
    return [f"{subnet}.{10 + i}" for i in range(count)]


def missing_privileges() -> list[str]:
    """What this process lacks to make namespaces and qdiscs: ``root``, ``ip``, ``tc``."""
    missing = [] if os.geteuid() == 0 else ["root"]
    return missing + [tool for tool in ("ip", "tc") if shutil.which(tool) is None]


def refusal(command: str) -> str | None:
    """Why ``command`` cannot make namespaces and qdiscs here (None: it can)."""
    missing = missing_privileges()
    if not missing:
        return None
    return (
        f"{command} creates network namespaces and qdiscs: it needs root and iproute2 "
        f"(missing: {', '.join(missing)})"
    )


def run_command(cmd: Sequence[str]) -> None:
    """Run ``cmd`` (bounded by :data:`COMMAND_TIMEOUT`).

    Raises
    ------
    RuntimeError
        It exited non-zero (with its error output).
    subprocess.TimeoutExpired
        It did not finish in time.
    """
    proc = subprocess.run(
        list(cmd), capture_output=True, text=True, timeout=COMMAND_TIMEOUT, check=False
    )
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)}: {proc.stderr.strip() or proc.stdout.strip()}")


@dataclass(frozen=True)
class Hosts:
    """Host namespaces on one bridge (see :func:`bridged_hosts`).

    Attributes
    ----------
    switch : str
        The namespace holding the bridge and the bridge ends of the veth pairs.
    namespaces : tuple of str
        One network namespace per host.
    nics : tuple of str
        Each host's interface on the bridge's network (inside its namespace).
    ports : tuple of str
        The bridge end of each host's veth pair (inside ``switch``).
    addresses : tuple of str
        Each host's address (a /24 shared by all hosts).
    """

    switch: str
    namespaces: tuple[str, ...]
    nics: tuple[str, ...]
    ports: tuple[str, ...]
    addresses: tuple[str, ...]

    def netns(self, host: int, *cmd: str) -> list[str]:
        """``cmd`` run inside host ``host``'s namespace."""
        return ["ip", "netns", "exec", self.namespaces[host], *cmd]


@contextlib.contextmanager
def bridged_hosts(
    count: int, mtu: int = 1500, *, prefix: str = "tfb", subnet: str = "10.219.8"
) -> Iterator[Hosts]:
    """``count`` host namespaces on a bridge in a switch namespace; all deleted after.

    Parameters
    ----------
    count : int
        Number of hosts.
    mtu : int
        MTU of every veth (both ends) and of the bridge.
    prefix : str
        Start of every namespace and interface name (with this process's id after it,
        so that runs of different processes do not collide; at most 4 characters keeps
        interface names within Linux's 15).
    subnet : str
        The hosts' /24, as its first three octets (:func:`host_addresses`).

    Yields
    ------
    Hosts
        The namespaces, interfaces and addresses.
    """
    addresses = host_addresses(count, subnet)
    tag = f"{prefix}{os.getpid() % 100000}"
    hosts = Hosts(
        switch=f"{tag}s",
        namespaces=tuple(f"{tag}h{i}" for i in range(count)),
        nics=tuple(f"{tag}n{i}" for i in range(count)),
        ports=tuple(f"{tag}p{i}" for i in range(count)),
        addresses=tuple(addresses),
    )
    made: list[str] = []
    try:
        run_command(["ip", "netns", "add", hosts.switch])
        made.append(hosts.switch)
        sw = ["ip", "-n", hosts.switch]
        run_command([*sw, "link", "add", "br0", "mtu", str(mtu), "type", "bridge"])
        run_command([*sw, "link", "set", "br0", "up"])
        for ns, nic, port, addr in zip(
            hosts.namespaces, hosts.nics, hosts.ports, addresses, strict=True
        ):
            run_command(["ip", "netns", "add", ns])
            made.append(ns)
            run_command(["ip", "-n", ns, "link", "set", "lo", "up"])
            pair = ["type", "veth", "peer", "name", port, "mtu", str(mtu), "netns", hosts.switch]
            run_command(["ip", "link", "add", nic, "mtu", str(mtu), "netns", ns, *pair])
            run_command([*sw, "link", "set", port, "master", "br0", "up"])
            run_command(["ip", "-n", ns, "addr", "add", f"{addr}/24", "dev", nic])
            run_command(["ip", "-n", ns, "link", "set", nic, "up"])
        yield hosts
    finally:
        # deleting a namespace deletes its interfaces (and so each veth pair) and qdiscs
        for ns in reversed(made):
            with contextlib.suppress(RuntimeError, subprocess.TimeoutExpired):
                run_command(["ip", "netns", "del", ns])


def limit_links(hosts: Hosts, bits: float | None) -> None:
    """Limit every host's link to ``bits`` per second each way (None: remove the limits).

    A tbf on the host's NIC limits what it sends; one on its bridge port what it
    receives (from all other hosts together, as a real switch port would).
    """
    ends = [(ns, nic) for ns, nic in zip(hosts.namespaces, hosts.nics, strict=True)]
    ends += [(hosts.switch, port) for port in hosts.ports]
    for ns, dev in ends:
        tc = ["ip", "netns", "exec", ns, "tc", "qdisc"]
        if bits is None:
            with contextlib.suppress(RuntimeError):  # no qdisc of ours: nothing to remove
                run_command([*tc, "del", "dev", dev, "root"])
            continue
        run_command(
            [
                *tc,
                "replace",
                "dev",
                dev,
                "root",
                "tbf",
                "rate",
                f"{int(bits)}bit",
                "burst",
                str(tbf_burst(bits)),
                "latency",
                "50ms",
            ]
        )
