"""Choose the transport of a job, and say why.

``transport="auto"`` picks, in order:

1. ``ucx`` over RDMA when this host has InfiniBand/RoCE devices and the native UCX
   extension is built;
2. ``ucx`` over shared memory (``UCX_TLS=posix,sysv,cma,self``) when every peer runs on
   this host and the native UCX extension is built;
3. ``tcp`` otherwise.

With ``tls=True`` (the job's options carry TLS settings) only tcp and grpc qualify:
``auto`` picks ``tcp+tls``, and an explicit ``ucx``/``rdma``/``shm`` request is refused,
since UCX has no TLS.

Explicit requests are honoured or refused, never silently replaced: ``"rdma"`` without
devices (or without native UCX) and ``"ucx"``/``"shm"`` without native UCX raise
:class:`~tfyarn.errors.TransportUnavailableError` naming what is missing.
:func:`choose_transport` is pure given ``rdma_devices`` and ``have_ucx``; left out, they
are probed on this host.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from tfyarn.errors import ConfigError, TransportUnavailableError
from tfyarn.transport.options import DEFAULT_OPTIONS, TransportOptions

__all__ = ["CHOICES", "SHM_UCX_TLS", "Selection", "choose_transport", "probe", "usable_devices"]

#: What a job may ask for.
CHOICES = ("auto", "rdma", "shm", "ucx", "tcp", "grpc")
#: UCX transports of the shared-memory path (plus ``self`` for loopback to oneself).
SHM_UCX_TLS = "posix,sysv,cma,self"
#: UCX transports of the RDMA path: reliable and unreliable verbs, shared memory on-host.
RDMA_UCX_TLS = "rc,ud,sm,self"

_LOOPBACK_NAMES = frozenset({"localhost", "localhost.localdomain", "::1", "ip6-localhost"})


@dataclass(frozen=True)
class Selection:
    """The transport picked for a job.

    Parameters
    ----------
    scheme : str
        URL scheme of the backend (``"ucx"``, ``"tcp"``, ``"grpc"``).
    reason : str
        What was picked and why, for logs and the job report.
    options : Mapping[str, str]
        UCX library settings such as ``UCX_TLS`` (empty for tcp/grpc); see
        :meth:`transport_options`, which folds them into the job's TransportOptions
        (``listen``/``connect`` put them into the environment before UCX starts; an
        explicit setting already there wins).
    transport : str
        What carries the bytes: ``"ucx/rdma"``, ``"ucx/shm"``, ``"ucx"``, ``"tcp"``,
        ``"grpc"``.
    """

    scheme: str
    reason: str
    options: Mapping[str, str] = field(default_factory=dict)
    transport: str = ""

    def __post_init__(self) -> None:
        if not self.transport:
            object.__setattr__(self, "transport", self.scheme)

    def transport_options(self, base: TransportOptions | None = None) -> TransportOptions:
        """The options to listen and connect with: ``base`` plus this selection's UCX settings.

        ``base`` is the job's :class:`~tfyarn.transport.options.TransportOptions` (the
        defaults when None); a UCX setting the job gave explicitly in ``base.ucx_env``
        wins over the selection's.
        """
        return (base or DEFAULT_OPTIONS).with_ucx_env(self.options)


def _with_tls(choice: str) -> Selection:
    """The selection of a job that asked for TLS: tcp or grpc, never UCX."""
    if choice in ("tcp", "grpc"):
        return Selection(
            choice, f"{choice}+tls: requested explicitly, with TLS", {}, f"{choice}+tls"
        )
    if choice == "auto":
        return Selection("tcp", "auto: tcp+tls (TLS asked for; UCX has no TLS)", {}, "tcp+tls")
    raise ConfigError(
        f"transport={choice!r} cannot carry TLS (UCX bypasses the socket layer); ask for "
        "'tcp', 'grpc' or 'auto' with TLS, or drop TLS on an isolated fabric"
    )


def _host_key(host: str) -> str:
    """Normalize a host name so that spellings of the loopback compare equal."""
    h = host.strip().lower().strip("[]")
    if h in _LOOPBACK_NAMES or h.startswith("127."):
        return "localhost"
    return h


def _device_names(devices: Sequence[object]) -> str:
    return ", ".join(str(getattr(d, "name", d)) for d in devices)


def usable_devices(devices: Sequence[object]) -> tuple[list[object], list[str]]:
    """Split devices into usable ones and notes on the others.

    A device that could not be queried, or whose ports are all down, cannot carry a
    job. Objects without ``ports``/``error`` (plain names) count as usable.
    """
    usable: list[object] = []
    notes: list[str] = []
    for d in devices:
        name = str(getattr(d, "name", d))
        error = getattr(d, "error", "")
        ports = getattr(d, "ports", None)
        if error:
            notes.append(f"{name}: {error}")
        elif ports is not None and not any(getattr(p, "active", True) for p in ports):
            notes.append(f"{name}: no active port")
        else:
            usable.append(d)
    return usable, notes


def probe() -> tuple[list[object], bool, str]:
    """Look at this host: (usable RDMA devices, native UCX built, a note on what is missing)."""
    notes: list[str] = []
    try:
        from tfyarn import native

        have_ucx = bool(native.HAVE_UCX)
        if not have_ucx:
            notes.append("tfyarn.native was built without UCX")
    except ImportError as exc:
        have_ucx = False
        notes.append(f"tfyarn.native is not built ({exc})")
    try:
        from tfyarn.transport import rdma

        devices, unusable = usable_devices(rdma.list_devices())
        notes += unusable
    except (ImportError, TransportUnavailableError) as exc:
        # auto must still pick something: no discovery means no RDMA, said in the reason
        devices = []
        notes.append(f"RDMA discovery unavailable ({exc})")
    return devices, have_ucx, "; ".join(notes)


def choose_transport(
    requested: str,
    *,
    peer_hosts: Sequence[str],
    local_host: str,
    rdma_devices: Sequence[object] | None = None,
    have_ucx: bool | None = None,
    tls: bool = False,
) -> Selection:
    """Pick the transport for ``requested`` (one of :data:`CHOICES`).

    Parameters
    ----------
    requested : str
        ``"auto"``, ``"rdma"``, ``"shm"``, ``"ucx"``, ``"tcp"`` or ``"grpc"``.
    peer_hosts : Sequence[str]
        Hosts of every role of the job (this one's included or not).
    local_host : str
        This host's name or address.
    rdma_devices : Sequence, optional
        RDMA devices of this host; probed with ``tfyarn.transport.rdma`` when None.
    have_ucx : bool, optional
        Whether the native UCX extension is built; probed when None.
    tls : bool
        The job asked for TLS: only tcp and grpc carry it.

    Returns
    -------
    Selection
        The scheme, backend options and a reason that says what was picked and why.

    Raises
    ------
    ConfigError
        ``requested`` is not one of :data:`CHOICES`.
    TransportUnavailableError
        An explicit request cannot be met here (never replaced by another transport).
    """
    choice = requested.strip().lower() if isinstance(requested, str) else requested
    if choice not in CHOICES:
        raise ConfigError(f"transport={requested!r} is not one of {', '.join(CHOICES)}")
    if tls:
        return _with_tls(choice)
    note = ""
    if rdma_devices is None or have_ucx is None:
        probed_devices, probed_ucx, note = probe()
        rdma_devices = probed_devices if rdma_devices is None else rdma_devices
        have_ucx = probed_ucx if have_ucx is None else have_ucx
    hosts = sorted({_host_key(h) for h in peer_hosts} | {_host_key(local_host)})
    one_host = len(hosts) == 1
    devices, unusable = usable_devices(rdma_devices)
    if unusable:
        note = "; ".join([note, *unusable]) if note else "; ".join(unusable)
    ucx_why = "native UCX built" if have_ucx else "native UCX not built"
    dev_why = f"RDMA devices: {_device_names(devices)}" if devices else "no RDMA devices"
    if note:  # what probing found missing or broken, so the reason explains itself
        dev_why = f"{dev_why}; {note}"
    host_why = f"all peers on host {hosts[0]}" if one_host else f"peers on {len(hosts)} hosts"

    if choice in ("tcp", "grpc"):
        return Selection(choice, f"{choice}: requested explicitly")
    if choice == "ucx":
        if not have_ucx:
            raise TransportUnavailableError(
                f"transport='ucx' was requested but the {ucx_why}; rebuild tfyarn with "
                "libucx-dev installed (scripts/setup-system.sh) or ask for tcp/grpc"
            )
        return Selection("ucx", "ucx: requested explicitly (UCX picks its transports)")
    if choice == "rdma":
        if not devices:
            raise TransportUnavailableError(
                "transport='rdma' was requested but this host has no RDMA devices "
                "(InfiniBand/RoCE); run `tfyarn doctor`, or ask for 'auto'/'tcp'"
            )
        if not have_ucx:
            raise TransportUnavailableError(
                f"transport='rdma' was requested ({dev_why}) but the {ucx_why}"
            )
        return Selection("ucx", f"rdma: ucx over {dev_why}", {"UCX_TLS": RDMA_UCX_TLS}, "ucx/rdma")
    if choice == "shm":
        if not one_host:
            raise TransportUnavailableError(
                f"transport='shm' needs every peer on one host, but there are {host_why}: "
                + ", ".join(hosts)
            )
        if not have_ucx:
            raise TransportUnavailableError(f"transport='shm' was requested but the {ucx_why}")
        return Selection(
            "ucx", f"shm: ucx over shared memory ({host_why})", {"UCX_TLS": SHM_UCX_TLS}, "ucx/shm"
        )
    # auto
    if devices and have_ucx:
        return Selection(
            "ucx",
            f"auto: ucx over RDMA ({dev_why}, {ucx_why})",
            {"UCX_TLS": RDMA_UCX_TLS},
            "ucx/rdma",
        )
    if one_host and have_ucx:
        return Selection(
            "ucx",
            f"auto: ucx over shared memory ({host_why}, {ucx_why}, {dev_why})",
            {"UCX_TLS": SHM_UCX_TLS},
            "ucx/shm",
        )
    return Selection("tcp", f"auto: tcp ({host_why}, {dev_why}, {ucx_why})")
