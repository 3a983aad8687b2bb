"""RDMA discovery: which InfiniBand/RoCE devices and which UCX transports this host has.

Devices come from pyverbs (Debian ``python3-pyverbs``, part of rdma-core). pyverbs is a
compiled extension for the *system* Python and lives in ``/usr/lib/python3/dist-packages``,
which the project's virtual environment does not see. Rather than put that directory on
``sys.path`` (it would also expose Debian's own NumPy and friends to our process, and its
extension modules only load into a Python of the same minor version), the probe runs in
a short-lived subprocess of the system interpreter and reports JSON. It costs about a
tenth of a second and only ``tfyarn doctor`` and transport selection call it.

UCX transports come from ``ucx_info -d`` (Debian ``ucx-utils``).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field

from tfyarn.diagnosis import Check
from tfyarn.errors import TransportUnavailableError

__all__ = [
    "RdmaDevice",
    "RdmaPort",
    "check_rdma",
    "list_devices",
    "ucx_transport_devices",
    "ucx_transports",
]

#: The interpreter pyverbs was built for; overridable for other distributions.
SYSTEM_PYTHON = os.environ.get("TFYARN_SYSTEM_PYTHON", "/usr/bin/python3")
#: At most this many GIDs per port are reported (tables hold up to 256 entries).
MAX_GIDS = 16
_PROBE_TIMEOUT = 30.0

# Runs under the system Python; prints one JSON object.
_PROBE = r"""
import json, sys
try:
    from pyverbs import device as d
    from pyverbs.pyverbs_error import PyverbsError
except ImportError as exc:
    print(json.dumps({"error": "pyverbs", "detail": str(exc)}))
    sys.exit(0)
try:
    found = d.get_device_list()
except PyverbsError as exc:  # raised when the kernel exposes no RDMA device at all
    print(json.dumps({"devices": [], "detail": str(exc)}))
    sys.exit(0)
MAX_GIDS = int(sys.argv[1])
out = []
for dev in found:
    name = dev.name.decode() if isinstance(dev.name, bytes) else str(dev.name)
    entry = {"name": name, "ports": []}
    try:
        with d.Context(name=name) as ctx:
            attr = ctx.query_device()
            entry["fw_ver"] = str(attr.fw_ver)
            for num in range(1, attr.phys_port_cnt + 1):
                pa = ctx.query_port(num)
                gids = []
                for idx in range(pa.gid_tbl_len):
                    if len(gids) >= MAX_GIDS:
                        break
                    try:
                        gid = str(ctx.query_gid(num, idx))
                    except PyverbsError:
                        continue
                    if gid.replace("0", "").replace(":", ""):
                        gids.append(gid)
                entry["ports"].append({
                    "number": num,
                    "state": d.port_state_to_str(pa.state),
                    "link_layer": d.translate_link_layer(pa.link_layer),
                    "gids": gids,
                })
    except PyverbsError as exc:
        entry["error"] = str(exc)
    out.append(entry)
print(json.dumps({"devices": out}))
"""


@dataclass(frozen=True)
class RdmaPort:
    """One port of an RDMA device.

    Parameters
    ----------
    number : int
        Port number (from 1).
    state : str
        Link state as rdma-core names it, e.g. ``"PORT_ACTIVE"``, ``"PORT_DOWN"``.
    link_layer : str
        ``"InfiniBand"`` or ``"Ethernet"`` (RoCE).
    gids : list of str
        Non-zero GIDs of the port's table (at most :data:`MAX_GIDS`).
    """

    number: int
    state: str
    link_layer: str
    gids: list[str] = field(default_factory=list)

    @property
    def active(self) -> bool:
        """Whether the link is up (ACTIVE)."""
        return "ACTIVE" in self.state.upper()


@dataclass(frozen=True)
class RdmaDevice:
    """An RDMA device (HCA or RoCE NIC) and its ports.

    Parameters
    ----------
    name : str
        Device name, e.g. ``"mlx5_0"``.
    ports : list of RdmaPort
        Its ports.
    error : str
        Why the device could not be queried (empty when it could).
    """

    name: str
    ports: list[RdmaPort] = field(default_factory=list)
    error: str = ""


def _probe(system_python: str) -> dict:
    if not os.path.exists(system_python):
        raise TransportUnavailableError(
            f"cannot look for RDMA devices: {system_python} (the interpreter pyverbs is built "
            "for) does not exist; set TFYARN_SYSTEM_PYTHON to the system python3"
        )
    try:
        proc = subprocess.run(
            [system_python, "-c", _PROBE, str(MAX_GIDS)],
            capture_output=True,
            text=True,
            timeout=_PROBE_TIMEOUT,
            env={k: v for k, v in os.environ.items() if not k.startswith("PYTHON")},
        )
    except subprocess.TimeoutExpired:
        raise TransportUnavailableError(
            f"the RDMA device probe did not finish within {_PROBE_TIMEOUT:.0f} s"
        ) from None
    except OSError as exc:
        # There but not runnable (a node whose Python is hidden or not executable): no
        # probe, so no RDMA; the caller falls back to TCP as for a missing pyverbs.
        raise TransportUnavailableError(
            f"cannot look for RDMA devices: {system_python} does not run ({exc}); set "
            "TFYARN_SYSTEM_PYTHON to the system python3 that has pyverbs"
        ) from None
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        raise TransportUnavailableError(
            f"the RDMA device probe failed (exit {proc.returncode}): {proc.stderr.strip()[-500:]}"
        )
    return json.loads(lines[-1])


def list_devices(system_python: str | None = None) -> list[RdmaDevice]:
    """Return this host's RDMA devices with their ports, link states and GIDs.

    Parameters
    ----------
    system_python : str, optional
        Interpreter with pyverbs (default :data:`SYSTEM_PYTHON`).

    Returns
    -------
    list of RdmaDevice
        Empty when the host has no RDMA device (pyverbs raises then; that is not an error).

    Raises
    ------
    TransportUnavailableError
        pyverbs is not installed (``apt-get install python3-pyverbs``) or the probe failed.
    """
    report = _probe(system_python or SYSTEM_PYTHON)
    if report.get("error") == "pyverbs":
        raise TransportUnavailableError(
            "pyverbs is not installed for the system Python ("
            f"{report.get('detail', '')}); install it with: apt-get install python3-pyverbs "
            "rdma-core"
        )
    return [
        RdmaDevice(
            name=d["name"],
            ports=[
                RdmaPort(p["number"], p["state"], p["link_layer"], list(p["gids"]))
                for p in d.get("ports", [])
            ],
            error=d.get("error", ""),
        )
        for d in report.get("devices", [])
    ]


def ucx_transport_devices() -> dict[str, list[str]]:
    """Return UCX's transports and the devices each runs on, from ``ucx_info -d``.

    Returns
    -------
    dict
        ``{"tcp": ["lo", "eth0"], "posix": ["memory"], ...}`` in ``ucx_info`` order.

    Raises
    ------
    TransportUnavailableError
        ``ucx_info`` is missing (``apt-get install ucx-utils``) or failed.
    """
    exe = shutil.which("ucx_info")
    if exe is None:
        raise TransportUnavailableError(
            "ucx_info not found: install UCX's tools (apt-get install ucx-utils)"
        )
    try:
        out = subprocess.run(
            [exe, "-d"], capture_output=True, text=True, timeout=_PROBE_TIMEOUT, check=True
        ).stdout
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as exc:
        raise TransportUnavailableError(f"ucx_info -d failed: {exc}") from exc
    found: dict[str, list[str]] = {}
    transport = None
    for line in out.splitlines():
        m = re.match(r"#\s+Transport:\s+(\S+)", line)
        if m:
            transport = m.group(1)
            found.setdefault(transport, [])
            continue
        m = re.match(r"#\s+Device:\s+(\S+)", line)
        if m and transport is not None and m.group(1) not in found[transport]:
            found[transport].append(m.group(1))
    return found


def ucx_transports() -> list[str]:
    """Return the names of the UCX transports available here, e.g. ``["self", "tcp", ...]``.

    Raises
    ------
    TransportUnavailableError
        ``ucx_info`` is missing or failed.
    """
    return list(ucx_transport_devices())


def _describe_device(dev: RdmaDevice) -> str:
    if dev.error:
        return f"{dev.name}: cannot query ({dev.error})"
    ports = "; ".join(
        f"port {p.number} {p.state} {p.link_layer}"
        + (f" GID {', '.join(p.gids[:2])}" + (" ..." if len(p.gids) > 2 else "") if p.gids else "")
        for p in dev.ports
    )
    return f"{dev.name}: {ports or 'no ports'}"


def check_rdma() -> Iterator[Check]:
    """``tfyarn doctor`` checks: RDMA devices (optional) and the UCX transports.

    Yields
    ------
    tfyarn.diagnosis.Check
        One for the RDMA devices, one for UCX.
    """
    from tfyarn import native

    try:
        devices = list_devices()
    except TransportUnavailableError as exc:
        yield Check(
            "RDMA devices",
            False,
            str(exc),
            "apt-get install python3-pyverbs rdma-core",
            required=False,
        )
    else:
        if not devices:
            yield Check(
                "RDMA devices",
                True,
                "none found (InfiniBand/RoCE transports unavailable; tcp and shared memory "
                "still work)",
                required=False,
            )
        else:
            active = any(p.active for d in devices for p in d.ports)
            yield Check(
                "RDMA devices",
                active,
                "; ".join(_describe_device(d) for d in devices),
                ""
                if active
                else "no port is ACTIVE: check the cable and that a subnet "
                "manager runs (InfiniBand: opensm) or the RoCE interface is up",
                required=False,
            )
    if not native.HAVE_UCX:
        yield Check(
            "UCX transports",
            False,
            "tfyarn was built without UCX: the ucx transport is unavailable",
            "apt-get install libucx-dev, then reinstall tfyarn (pip install -e .)",
            required=False,
        )
        return
    from tfyarn import _native

    version = ".".join(map(str, _native.ucx_version()))
    try:
        tls = ucx_transport_devices()
    except TransportUnavailableError as exc:
        yield Check(
            "UCX transports",
            False,
            f"UCX {version}; {exc}",
            "apt-get install ucx-utils",
            required=False,
        )
        return
    detail = ", ".join(f"{t} ({'/'.join(devs)})" if devs else t for t, devs in tls.items())
    yield Check("UCX transports", bool(tls), f"UCX {version}: {detail}", required=False)
