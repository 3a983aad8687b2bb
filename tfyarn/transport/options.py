"""One vocabulary of transport settings, the same for every backend.

A :class:`TransportOptions` travels unchanged from ``tfyarn.run(...,
transport_options=...)`` through the job spec and the role process to the role's
listener and to every connection the exchange mesh opens. Each backend reads the fields
that concern it and ignores the others (gRPC has no ``backlog``), so one value serves
whatever transport ``"auto"`` ends up picking; ucx refuses TLS settings rather than
ignore them.

Every field is validated when the object is built: a wrong value raises
:class:`~tfyarn.errors.ConfigError` naming the field, on the driver, before any executor
starts.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from tfyarn.errors import ConfigError
from tfyarn.transport.frames import DEFAULT_LIMITS, Limits

__all__ = ["DEFAULT_CHUNK_BYTES", "Keepalive", "Pem", "TransportOptions"]

#: PEM material: the bytes themselves, or the path of a file holding them.
Pem = bytes | str | os.PathLike[str]
#: Default size of the gRPC messages a large frame is cut into.
DEFAULT_CHUNK_BYTES = 4 << 20


def _positive_int(owner: str, name: str, value: object) -> None:
    # bool is an int subclass: True would silently mean 1
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ConfigError(f"{owner}.{name} must be a positive int, got {value!r}")


def _seconds(owner: str, name: str, value: object, *, optional: bool) -> None:
    if value is None and optional:
        return
    number = isinstance(value, int | float) and not isinstance(value, bool)
    if not (number and isinstance(value, int | float) and math.isfinite(value) and value > 0):
        allowed = "positive seconds or None" if optional else "positive seconds"
        raise ConfigError(f"{owner}.{name} must be {allowed}, got {value!r}")


@dataclass(frozen=True)
class Keepalive:
    """How a silent connection is probed, so that a vanished peer host is noticed.

    Without probes a host that disappears (power, cable, kernel panic: no FIN, no RST)
    leaves a receiver blocked for hours. tcp maps this onto TCP keepalive
    (``TCP_KEEPIDLE``/``TCP_KEEPINTVL``/``TCP_KEEPCNT``); gRPC pings after ``idle_s``
    and declares the peer lost when a ping is unanswered for ``interval_s * probes``.
    Either way a lost peer is detected after about ``idle_s + interval_s * probes``.

    Parameters
    ----------
    idle_s : int
        Seconds of silence before the first probe (>= 1).
    interval_s : int
        Seconds between probes (>= 1).
    probes : int
        Unanswered probes after which the connection is declared lost (>= 1).
    """

    idle_s: int = 30
    interval_s: int = 10
    probes: int = 3

    def __post_init__(self) -> None:
        for name in ("idle_s", "interval_s", "probes"):
            _positive_int("Keepalive", name, getattr(self, name))

    @property
    def timeout_s(self) -> int:
        """Seconds an unanswered peer has after the first probe: ``interval_s * probes``."""
        return self.interval_s * self.probes


def _as_keepalive(value: object) -> Keepalive | None:
    """A :class:`Keepalive` from itself, None, or an ``(idle_s, interval_s, probes)`` triple."""
    if value is None or isinstance(value, Keepalive):
        return value
    if isinstance(value, tuple | list) and len(value) == 3:
        return Keepalive(*value)
    raise ConfigError(
        "TransportOptions.keepalive must be a Keepalive, an (idle_s, interval_s, probes) "
        f"triple of positive ints, or None, got {value!r}"
    )


def _check_pem(name: str, value: object) -> None:
    if value is not None and not isinstance(value, bytes | str | os.PathLike):
        raise ConfigError(
            f"TransportOptions.{name} must be PEM bytes or the path of a PEM file, "
            f"got {type(value).__name__}"
        )


@dataclass(frozen=True)
class TransportOptions:
    """Settings of the transport endpoints of a job, the same names for every backend.

    Parameters
    ----------
    connect_timeout : float
        Seconds ``connect`` may take to reach the listener and authenticate.
    handshake_timeout : float
        Seconds a listener gives a new peer to authenticate and open its channel.
    op_timeout : float or None
        Seconds any one blocking send/recv/put/get may take; None waits as long as the
        peer lives (keepalive still notices a vanished host). On tcp and grpc a timed-out
        operation closes the comm (the stream's position is then unknown); on ucx the
        comm stays usable.
    keepalive : Keepalive or None
        Probing of silent connections (tcp keepalive, gRPC HTTP/2 pings); None: off.
        An ``(idle_s, interval_s, probes)`` triple is accepted too.
    reuse_port : bool
        Bind listeners with ``SO_REUSEPORT``, to take over a port the node layer holds.
    backlog : int
        ``listen()`` backlog of tcp and ucx listeners.
    max_pending : int
        Most peers authenticating at once on a tcp or ucx listener; more are refused.
    limits : Limits
        Bounds on received frames (tcp, grpc).
    chunk_bytes : int
        gRPC: size of the messages a large frame is cut into (>= 1024).
    max_streams : int
        gRPC: concurrent streams a listener serves.
    tls_cert_chain, tls_private_key : bytes or path, optional
        tcp and gRPC: PEM certificate chain and key of listeners; both or neither. With
        them listeners serve TLS. ucx refuses them (it has no TLS).
    tls_root_certs : bytes or path, optional
        tcp and gRPC: PEM root certificate(s) that signed the listeners' certificates;
        with it connections use TLS (:mod:`tfyarn.transport.tls`).
    tls_server_name : str, optional
        tcp and gRPC: name to check the server certificate against, if not the
        address's host (a per-job certificate names ``tfyarn-job``).
    ucx_env : Mapping[str, str]
        Settings of the UCX library (``UCX_*`` names, e.g. ``{"UCX_TLS": "rc,sm,self"}``),
        put into the environment before UCX starts; an operator's explicit setting
        there wins.

    Raises
    ------
    ConfigError
        A field has a wrong type or value; the message names the field.
    """

    connect_timeout: float = 30.0
    handshake_timeout: float = 10.0
    op_timeout: float | None = None
    keepalive: Keepalive | None = Keepalive()
    reuse_port: bool = False
    backlog: int = 128
    max_pending: int = 64
    limits: Limits = DEFAULT_LIMITS
    chunk_bytes: int = DEFAULT_CHUNK_BYTES
    max_streams: int = 128
    tls_cert_chain: Pem | None = None
    tls_private_key: Pem | None = field(default=None, repr=False)  # never in a log
    tls_root_certs: Pem | None = None
    tls_server_name: str | None = None
    ucx_env: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        _seconds("TransportOptions", "connect_timeout", self.connect_timeout, optional=False)
        _seconds("TransportOptions", "handshake_timeout", self.handshake_timeout, optional=False)
        _seconds("TransportOptions", "op_timeout", self.op_timeout, optional=True)
        object.__setattr__(self, "keepalive", _as_keepalive(self.keepalive))
        if not isinstance(self.reuse_port, bool):
            raise ConfigError(
                f"TransportOptions.reuse_port must be a bool, got {self.reuse_port!r}"
            )
        for name in ("backlog", "max_pending", "max_streams", "chunk_bytes"):
            _positive_int("TransportOptions", name, getattr(self, name))
        if self.chunk_bytes < 1024:
            raise ConfigError(
                f"TransportOptions.chunk_bytes must be >= 1024, got {self.chunk_bytes}"
            )
        if not isinstance(self.limits, Limits):
            raise ConfigError(
                f"TransportOptions.limits must be a tfyarn.transport.frames.Limits, "
                f"got {type(self.limits).__name__}"
            )
        for name in ("tls_cert_chain", "tls_private_key", "tls_root_certs"):
            _check_pem(name, getattr(self, name))
        if (self.tls_cert_chain is None) != (self.tls_private_key is None):
            raise ConfigError(
                "TransportOptions.tls_cert_chain and tls_private_key go together: "
                "give both (a listener serves TLS) or neither"
            )
        if self.tls_server_name is not None and not (
            isinstance(self.tls_server_name, str) and self.tls_server_name
        ):
            raise ConfigError(
                f"TransportOptions.tls_server_name must be a non-empty str or None, "
                f"got {self.tls_server_name!r}"
            )
        object.__setattr__(self, "ucx_env", _check_ucx_env(self.ucx_env))

    def __hash__(self) -> int:
        # ucx_env is a dict (picklable, unlike a mapping proxy): hash its items instead
        values = [getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "ucx_env"]
        return hash((*values, tuple(sorted(self.ucx_env.items()))))

    def replace(self, **changes: Any) -> TransportOptions:
        """Return a copy with ``changes`` (field names of this class) applied and validated.

        Raises
        ------
        ConfigError
            A name is not a field of TransportOptions, or a value is invalid.
        """
        unknown = sorted(set(changes) - set(FIELD_NAMES))
        if unknown:
            raise ConfigError(
                f"unknown transport option(s) {', '.join(unknown)}; "
                f"TransportOptions has: {', '.join(FIELD_NAMES)}"
            )
        return dataclasses.replace(self, **changes) if changes else self

    def with_ucx_env(self, settings: Mapping[str, str]) -> TransportOptions:
        """Return a copy whose :attr:`ucx_env` adds ``settings`` (ours win on a clash)."""
        if not settings:
            return self
        return self.replace(ucx_env={**settings, **self.ucx_env})

    def read_pem(self, name: str) -> bytes | None:
        """The PEM bytes of TLS field ``name``: as given, or read from its file.

        Raises
        ------
        ConfigError
            The file cannot be read (the message names the field and the path).
        """
        value = getattr(self, name)
        if value is None or isinstance(value, bytes):
            return value
        try:
            with open(value, "rb") as f:
                return f.read()
        except OSError as exc:
            raise ConfigError(f"cannot read TransportOptions.{name} from {value!r}: {exc}") from exc


def _check_ucx_env(env: object) -> dict[str, str]:
    if not isinstance(env, Mapping):
        raise ConfigError(f"TransportOptions.ucx_env must be a mapping, got {type(env).__name__}")
    out: dict[str, str] = {}
    for key, value in env.items():
        if not isinstance(key, str) or not key.startswith("UCX_"):
            raise ConfigError(f"TransportOptions.ucx_env: {key!r} is not a UCX_* setting name")
        if not isinstance(value, str):
            raise ConfigError(f"TransportOptions.ucx_env[{key!r}] must be a str, got {value!r}")
        out[key] = value
    return out


#: The option names, in declaration order (what ``replace`` and backends accept).
FIELD_NAMES: tuple[str, ...] = tuple(f.name for f in dataclasses.fields(TransportOptions))
#: The options every backend uses when given none.
DEFAULT_OPTIONS = TransportOptions()
