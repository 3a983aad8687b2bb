"""The :class:`Backend` interface and the registry of backends by URL scheme.

Modelled on dask's ``distributed/comm/registry.py``: a backend is an object with a
:class:`Backend` interface, registered under its scheme; ``tfyarn.transport.listen`` and
``connect`` look the scheme up and hand the backend the parsed host and port, the
checked secret and one :class:`~tfyarn.transport.options.TransportOptions`. A backend
given by module name is imported only when first used (its module-level ``BACKEND``), so
that importing :mod:`tfyarn.transport` stays cheap and a missing optional backend (the
native UCX one) fails only where it is asked for, with a clear error.
"""

from __future__ import annotations

import abc
import importlib
import logging
import os
import threading
from collections.abc import Mapping
from typing import Any, ClassVar, Protocol
from urllib.parse import urlsplit

from tfyarn.errors import ConfigError, TransportUnavailableError
from tfyarn.transport.auth import check_secret
from tfyarn.transport.base import Buffer, Comm, Listener
from tfyarn.transport.options import DEFAULT_OPTIONS, TransportOptions

__all__ = [
    "Backend",
    "backend",
    "parse_address",
    "register_backend",
    "registered_schemes",
    "resolve_options",
]

log = logging.getLogger(__name__)


class ListenerFactory(Protocol):
    """Builds a backend's listener, bound at ``host:port``."""

    def __call__(
        self, host: str, port: int, /, *, secret: bytes, options: TransportOptions
    ) -> Listener: ...


class Backend(abc.ABC):
    """One transport backend: how to listen and connect for its URL scheme.

    Subclasses set :attr:`listener_type` (or override :meth:`open_listener`) and
    implement :meth:`dial`, which receive what every backend needs, already checked;
    :meth:`listen` and :meth:`connect` (the public
    entry points, also exposed as the backend module's ``listen``/``connect``) parse the
    address, check the secret and settle the options the same way for every backend.
    """

    #: URL scheme served, e.g. ``"tcp"``.
    scheme: str
    #: What :meth:`open_listener` builds.
    listener_type: ClassVar[ListenerFactory]

    def open_listener(
        self, host: str, port: int, *, secret: bytes, options: TransportOptions
    ) -> Listener:
        """Bind a listener at ``host:port`` (port 0: any free port)."""
        return self.listener_type(host, port, secret=secret, options=options)

    @abc.abstractmethod
    def dial(self, host: str, port: int, *, secret: bytes, options: TransportOptions) -> Comm:
        """Connect to the listener at ``host:port`` and authenticate."""

    def _host_port(self, address: str, what: str) -> tuple[str, int]:
        scheme, host, port = parse_address(address)
        if scheme != self.scheme:
            raise ConfigError(
                f"{self.scheme}.{what} needs a {self.scheme}:// address, got {address!r}"
            )
        return host, port

    def listen(
        self,
        address: str,
        *,
        secret: Buffer,
        options: TransportOptions | None = None,
        **changes: Any,
    ) -> Listener:
        """Listen at ``address`` (``scheme://host:port``); see :func:`tfyarn.transport.listen`."""
        host, port = self._host_port(address, "listen")
        return self.open_listener(
            host, port, secret=check_secret(secret), options=resolve_options(options, changes)
        )

    def connect(
        self,
        address: str,
        *,
        secret: Buffer,
        timeout: float | None = None,
        options: TransportOptions | None = None,
        **changes: Any,
    ) -> Comm:
        """Connect to ``address``; see :func:`tfyarn.transport.connect`."""
        host, port = self._host_port(address, "connect")
        if timeout is not None:
            changes["connect_timeout"] = timeout
        return self.dial(
            host, port, secret=check_secret(secret), options=resolve_options(options, changes)
        )


def resolve_options(
    options: TransportOptions | None, changes: Mapping[str, Any]
) -> TransportOptions:
    """``options`` (default: :data:`~tfyarn.transport.options.DEFAULT_OPTIONS`) with
    ``changes`` applied; apply its UCX settings to the environment.

    ``changes`` are TransportOptions field names; names starting with ``UCX_`` are UCX
    library settings (as :func:`~tfyarn.transport.select.choose_transport` gives them)
    and join ``ucx_env``. UCX reads its settings from the environment when it first
    starts in the process, so they are put into ``os.environ`` here, unless already set
    there: an operator's explicit setting wins.

    Raises
    ------
    ConfigError
        An unknown option name or an invalid value.
    """
    if options is not None and not isinstance(options, TransportOptions):
        raise ConfigError(
            f"options must be a tfyarn.transport.TransportOptions, got {type(options).__name__}"
        )
    resolved = options or DEFAULT_OPTIONS
    ucx = {k: v for k, v in changes.items() if k.startswith("UCX_")}
    resolved = resolved.replace(**{k: v for k, v in changes.items() if k not in ucx})
    resolved = resolved.replace(ucx_env={**resolved.ucx_env, **ucx}) if ucx else resolved
    for key, value in resolved.ucx_env.items():
        current = os.environ.get(key)
        if current is None:
            os.environ[key] = value
        elif current != value:
            log.info("keeping %s=%s from the environment (options asked %s)", key, current, value)
    return resolved


_LOCK = threading.Lock()
_BACKENDS: dict[str, Backend | str] = {
    "tcp": "tfyarn.transport.tcp",
    "grpc": "tfyarn.transport.grpc_transport",
    "ucx": "tfyarn.transport.ucx",
}


def _check_scheme(scheme: str) -> str:
    if not scheme or not scheme.isascii() or not all(c.isalnum() or c in "+-." for c in scheme):
        raise ConfigError(f"invalid transport scheme {scheme!r}: use letters, digits, '+-.'")
    return scheme.lower()


def register_backend(scheme: str, implementation: Backend | str) -> None:
    """Make ``scheme://`` addresses use ``implementation``.

    Registering an existing scheme replaces it (e.g. to try an alternative backend).

    Parameters
    ----------
    scheme : str
        URL scheme, letters/digits/``+-.`` only, e.g. ``"tcp"`` (compared lower-case).
    implementation : Backend or str
        The backend, or the name of a module whose ``BACKEND`` attribute is one; the
        module is imported on the first ``listen``/``connect`` with that scheme.

    Raises
    ------
    ConfigError
        The scheme is malformed, or ``implementation`` is neither a Backend nor a
        module name.
    """
    key = _check_scheme(scheme)
    if not isinstance(implementation, Backend) and not (
        isinstance(implementation, str) and implementation
    ):
        raise ConfigError(
            f"register_backend({scheme!r}, ...) needs a Backend or a module name, "
            f"got {implementation!r}"
        )
    with _LOCK:
        _BACKENDS[key] = implementation


def unregister_backend(scheme: str) -> None:
    """Forget the backend of ``scheme`` (nothing happens when there is none)."""
    with _LOCK:
        _BACKENDS.pop(scheme.lower(), None)


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


def backend(scheme: str) -> Backend:
    """Return the backend of ``scheme``, importing its module on first use.

    Raises
    ------
    ConfigError
        No backend is registered for ``scheme``, or its module has no ``BACKEND``.
    TransportUnavailableError
        The backend exists but cannot be imported here (e.g. the native UCX extension
        was not built).
    """
    with _LOCK:
        found = _BACKENDS.get(scheme.lower())
    if found is None:
        raise ConfigError(
            f"no transport backend for scheme {scheme!r}; known: {', '.join(registered_schemes())}"
        )
    if isinstance(found, Backend):
        return found
    try:
        module = importlib.import_module(found)
    except ImportError as exc:
        raise TransportUnavailableError(
            f"transport {scheme!r} is not available here: importing {found} failed "
            f"({exc}); run `tfyarn doctor` to see what is missing"
        ) from exc
    loaded = getattr(module, "BACKEND", None)
    if not isinstance(loaded, Backend):
        raise ConfigError(
            f"module {found} registered for {scheme!r} has no BACKEND (a "
            "tfyarn.transport.registry.Backend instance)"
        )
    return loaded
