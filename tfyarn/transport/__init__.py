"""Move bytes between endpoints: one interface, backends chosen by URL scheme.

``listen("tcp://127.0.0.1:0", secret=s)`` returns a :class:`~tfyarn.transport.base.Listener`
and ``connect(listener.address, secret=s)`` a :class:`~tfyarn.transport.base.Comm`,
whatever the backend. Every backend implements :class:`~tfyarn.transport.registry.Backend`
and takes the same :class:`~tfyarn.transport.options.TransportOptions`; its module is
imported only when first used (see :mod:`tfyarn.transport.registry`).

Options are given as ``options=TransportOptions(...)``, and/or as keyword arguments
named like its fields (``op_timeout=5``), which replace those fields. Keywords whose
name starts with ``UCX_`` (as :func:`~tfyarn.transport.select.choose_transport` returns
them, e.g. ``UCX_TLS`` for the shared-memory path) are settings of the UCX library and
join ``ucx_env``: they are put into ``os.environ`` (unless already set there, so an
operator's explicit setting wins), where UCX reads them when it first starts.
"""

from __future__ import annotations

from typing import Any

from tfyarn.transport.base import Buffer, Comm, Listener, recv_exactly
from tfyarn.transport.options import Keepalive, TransportOptions
from tfyarn.transport.registry import (
    Backend,
    backend,
    parse_address,
    register_backend,
    registered_schemes,
    unregister_backend,
)

__all__ = [
    "Backend",
    "Buffer",
    "Comm",
    "Keepalive",
    "Listener",
    "TransportOptions",
    "backend",
    "connect",
    "listen",
    "parse_address",
    "recv_exactly",
    "register_backend",
    "registered_schemes",
    "unregister_backend",
]


def listen(
    address: str, *, secret: Buffer, options: TransportOptions | None = None, **changes: Any
) -> Listener:
    """Bind a listener at ``address`` (port 0: any free port) with the backend of its scheme.

    Parameters
    ----------
    address : str
        ``scheme://host:port``.
    secret : bytes-like
        The job secret every connecting peer must prove it holds.
    options : TransportOptions, optional
        Settings of the listener and the comms it accepts; defaults when None.
    **changes
        TransportOptions fields to replace, or ``UCX_*`` library settings (see the
        module docstring).

    Returns
    -------
    Listener
        Its ``address`` attribute is the URL peers connect to (with the real port).
    """
    scheme, _, _ = parse_address(address)
    return backend(scheme).listen(address, secret=secret, options=options, **changes)


def connect(
    address: str,
    *,
    secret: Buffer,
    timeout: float | None = None,
    options: TransportOptions | None = None,
    **changes: Any,
) -> Comm:
    """Connect to the listener at ``address`` and authenticate with ``secret``.

    Parameters
    ----------
    address : str
        ``scheme://host:port`` of a listener.
    secret : bytes-like
        The job secret.
    timeout : float, optional
        Seconds to wait for the connection and the handshake; replaces
        ``options.connect_timeout`` when given.
    options : TransportOptions, optional
        Settings of the connection; defaults when None.
    **changes
        TransportOptions fields to replace, or ``UCX_*`` library settings.

    Raises
    ------
    TransportError
        The listener cannot be reached in time.
    AuthenticationError
        The listener refused our secret, or does not hold it.
    """
    scheme, _, _ = parse_address(address)
    return backend(scheme).connect(
        address, secret=secret, timeout=timeout, options=options, **changes
    )
