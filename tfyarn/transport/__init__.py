"""Move bytes between endpoints: one interface, backends chosen by URL scheme.

``listen("tcp://127.0.0.1:0", secret=s)`` returns a :class:`~tfyarn.transport.base.Listener`
and ``connect(listener.address, secret=s)`` a :class:`~tfyarn.transport.base.Comm`,
whatever the backend. The backend module of a scheme is imported only when first used,
so that importing :mod:`tfyarn.transport` stays cheap and a missing optional backend
(the native UCX one) fails only where it is asked for, with a clear error.

A backend module provides ``listen(address, *, secret, **options) -> Listener`` and
``connect(address, *, secret, timeout=30.0, **options) -> Comm``.

Options whose name starts with ``UCX_`` (as :func:`~tfyarn.transport.select.choose_transport`
returns them, e.g. ``UCX_TLS`` for the shared-memory path) are settings of the UCX library,
which reads them from the environment when it first starts in the process: ``listen`` and
``connect`` put them into ``os.environ`` (unless already set there, so an operator's
explicit setting wins) instead of passing them to the backend.
"""

from __future__ import annotations

import importlib
import logging
import os
import threading
from types import ModuleType
from typing import Any
from urllib.parse import urlsplit

from tfyarn.errors import ConfigError, TransportUnavailableError
from tfyarn.transport.base import Buffer, Comm, Listener
from tfyarn.transport.options import Keepalive, TransportOptions

__all__ = [
    "Buffer",
    "Comm",
    "Keepalive",
    "Listener",
    "TransportOptions",
    "backend",
    "connect",
    "listen",
    "parse_address",
    "register_backend",
    "registered_schemes",
]

log = logging.getLogger(__name__)

_LOCK = threading.Lock()
_BACKENDS: dict[str, str] = {
    "tcp": "tfyarn.transport.tcp",
    "grpc": "tfyarn.transport.grpc_transport",
    "ucx": "tfyarn.transport.ucx",
}


def register_backend(scheme: str, module_name: str) -> None:
    """Make ``scheme://`` addresses use the backend module ``module_name``.

    The module is imported lazily, on the first ``listen``/``connect`` with that scheme.
    Registering an existing scheme replaces it (e.g. to try an alternative backend).

    Parameters
    ----------
    scheme : str
        Lower-case URL scheme, letters/digits/``+-.`` only, e.g. ``"tcp"``.
    module_name : str
        Importable module providing ``listen`` and ``connect``.
    """
    if not scheme or not scheme.isascii() or not all(c.isalnum() or c in "+-." for c in scheme):
        raise ConfigError(f"invalid transport scheme {scheme!r}: use letters, digits, '+-.'")
    if not module_name:
        raise ConfigError(f"register_backend({scheme!r}, ...) needs a module name")
    with _LOCK:
        _BACKENDS[scheme.lower()] = module_name


def registered_schemes() -> tuple[str, ...]:
    """Return the schemes that have a backend, sorted."""
    with _LOCK:
        return tuple(sorted(_BACKENDS))


def parse_address(url: str) -> tuple[str, str, int]:
    """Split ``"scheme://host:port"`` into ``(scheme, host, port)``.

    IPv6 hosts are written in brackets (``tcp://[::1]:5000``) and returned without them.
    Port 0 asks the listener to pick a free port.

    Raises
    ------
    ConfigError
        No scheme, no host, a missing or out-of-range port, or a path/query part.
    """
    if not isinstance(url, str) or "://" not in url:
        raise ConfigError(
            f"transport address {url!r} must look like 'scheme://host:port', "
            f"e.g. 'tcp://127.0.0.1:5000' (schemes: {', '.join(registered_schemes())})"
        )
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    try:
        port = parts.port
    except ValueError:
        raise ConfigError(f"transport address {url!r} has an invalid port (0-65535)") from None
    if not scheme or not parts.hostname:
        raise ConfigError(f"transport address {url!r} has no scheme or no host")
    if port is None:
        raise ConfigError(f"transport address {url!r} has no port; write e.g. '{url}:0'")
    if parts.path not in ("", "/") or parts.query or parts.fragment or parts.username:
        raise ConfigError(f"transport address {url!r} must be only 'scheme://host:port'")
    return scheme, parts.hostname, port


def backend(scheme: str) -> ModuleType:
    """Import and return the backend module of ``scheme``.

    Raises
    ------
    ConfigError
        No backend is registered for ``scheme``.
    TransportUnavailableError
        The backend exists but cannot be imported here (e.g. the native UCX extension
        was not built).
    """
    with _LOCK:
        module_name = _BACKENDS.get(scheme.lower())
    if module_name is None:
        raise ConfigError(
            f"no transport backend for scheme {scheme!r}; known: {', '.join(registered_schemes())}"
        )
    try:
        return importlib.import_module(module_name)
    except ImportError as exc:
        raise TransportUnavailableError(
            f"transport {scheme!r} is not available here: importing {module_name} failed "
            f"({exc}); run `tfyarn doctor` to see what is missing"
        ) from exc


def _apply_library_env(options: dict[str, Any]) -> dict[str, Any]:
    """Move ``UCX_*`` options into the environment; return the backend's own options."""
    rest = {}
    for key, value in options.items():
        if key.startswith("UCX_"):
            current = os.environ.get(key)
            if current is None:
                os.environ[key] = str(value)
            elif current != str(value):
                log.info(
                    "keeping %s=%s from the environment (selection asked %s)", key, current, value
                )
        else:
            rest[key] = value
    return rest


def listen(address: str, *, secret: Buffer, **options: Any) -> Listener:
    """Bind a listener at ``address`` (port 0: any free port) with the backend of its scheme.

    Parameters
    ----------
    address : str
        ``scheme://host:port``.
    secret : bytes-like
        The job secret every connecting peer must prove it holds.
    **options
        Backend options (see the backend's ``listen``); ``UCX_*`` ones go to the
        environment (see the module docstring).

    Returns
    -------
    Listener
        Its ``address`` attribute is the URL peers connect to (with the real port).
    """
    scheme, _, _ = parse_address(address)
    return backend(scheme).listen(address, secret=secret, **_apply_library_env(options))


def connect(address: str, *, secret: Buffer, timeout: float = 30.0, **options: Any) -> Comm:
    """Connect to the listener at ``address`` and authenticate with ``secret``.

    Parameters
    ----------
    address : str
        ``scheme://host:port`` of a listener.
    secret : bytes-like
        The job secret.
    timeout : float
        Seconds to wait for the connection and the handshake.
    **options
        Backend options (see the backend's ``connect``); ``UCX_*`` ones go to the
        environment.

    Raises
    ------
    TransportError
        The listener cannot be reached in time.
    AuthenticationError
        The listener refused our secret, or does not hold it.
    """
    scheme, _, _ = parse_address(address)
    return backend(scheme).connect(
        address, secret=secret, timeout=timeout, **_apply_library_env(options)
    )
