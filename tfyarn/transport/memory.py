"""Memory the transports write into: receive buffers and regions exposed for put/get.

Receive buffers come from :mod:`tfyarn.native`'s aligned pool when the extension is
built (so that UCX can register them), else from plain ``bytearray``. Regions are
writable buffers a listener exposes by name; :class:`RegionTable` checks every remote
request against their bounds before any byte moves.
"""

from __future__ import annotations

import threading

from tfyarn.errors import ConfigError, TransportError
from tfyarn.transport.base import Buffer

__all__ = ["RegionTable", "alloc_buffer", "readable_bytes", "writable_bytes"]


def alloc_buffer(nbytes: int) -> Buffer:
    """Return a writable buffer of ``nbytes``: a pool buffer when tfyarn.native is built.

    Parameters
    ----------
    nbytes : int
        Size in bytes (>= 0).
    """
    try:
        from tfyarn import native  # the C extension is optional: plain memory works too
    except ImportError:
        return bytearray(nbytes)
    return native.default_pool().alloc(nbytes)


def _byte_view(buf: Buffer, what: str) -> memoryview:
    """A memoryview of ``buf``'s bytes, without copying.

    NumPy arrays of extension dtypes (bfloat16, float8 from ml_dtypes) refuse the buffer
    protocol; their bytes are taken through ``buf.view("u1")`` instead. Arrays of Python
    objects are refused: their bytes are pointers, meaningless in another process.
    """
    try:
        view = memoryview(buf)
    except TypeError:
        raise ConfigError(
            f"{what} must support the buffer protocol, got {type(buf).__name__}"
        ) from None
    except ValueError as exc:  # e.g. "cannot include dtype 'E' in a buffer"
        as_bytes = getattr(buf, "view", None)
        if as_bytes is None or getattr(getattr(buf, "dtype", None), "hasobject", True):
            raise ConfigError(f"{what} cannot be sent as bytes: {exc}") from None
        try:
            view = memoryview(as_bytes("u1"))
        except (TypeError, ValueError) as exc2:
            raise ConfigError(f"{what} cannot be sent as bytes: {exc2}") from None
    if "O" in view.format:
        raise ConfigError(f"{what} holds Python objects, which cannot be sent as bytes")
    if not view.c_contiguous:
        raise ConfigError(
            f"{what} is not C-contiguous; pass a contiguous array (np.ascontiguousarray)"
        )
    return view.cast("B") if view.format != "B" or view.ndim != 1 else view


def writable_bytes(buf: Buffer, what: str = "buffer") -> memoryview:
    """Return a flat, writable byte view of ``buf`` (no copy).

    Raises
    ------
    ConfigError
        ``buf`` is read-only, not contiguous, or not bytes-like.
    """
    view = _byte_view(buf, what)
    if view.readonly:
        raise ConfigError(f"{what} is read-only; pass a bytearray, NumPy array or pool buffer")
    return view


def readable_bytes(buf: Buffer, what: str = "data") -> memoryview:
    """Return a flat byte view of ``buf`` (read-only allowed, no copy).

    Raises
    ------
    ConfigError
        ``buf`` is not contiguous or not bytes-like.
    """
    return _byte_view(buf, what)


class RegionTable:
    """Named writable regions exposed to peers' ``put``/``get``; thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._regions: dict[str, memoryview] = {}

    def register(self, name: str, buf: Buffer) -> None:
        """Expose ``buf`` (writable, contiguous) under ``name``, replacing any previous one."""
        if not isinstance(name, str) or not name or len(name.encode("utf-8")) > 256:
            raise ConfigError(f"region name must be a non-empty string of <= 256 bytes: {name!r}")
        view = writable_bytes(buf, f"region {name!r}")
        with self._lock:
            self._regions[name] = view

    def unregister(self, name: str) -> None:
        """Stop exposing ``name`` (no error if it was not registered)."""
        with self._lock:
            self._regions.pop(name, None)

    def slice(self, name: str, offset: int, nbytes: int) -> memoryview:
        """Return ``nbytes`` of region ``name`` at ``offset``.

        Raises
        ------
        TransportError
            Unknown region, or a range outside it (the message goes back to the peer).
        """
        with self._lock:
            view = self._regions.get(name)
        if view is None:
            raise TransportError(f"no region named {name!r} is registered on this listener")
        if offset < 0 or nbytes < 0 or offset + nbytes > view.nbytes:
            raise TransportError(
                f"range [{offset}, {offset + nbytes}) is outside region {name!r} "
                f"of {view.nbytes} bytes"
            )
        return view[offset : offset + nbytes]

    def clear(self) -> None:
        """Forget every region."""
        with self._lock:
            self._regions.clear()
