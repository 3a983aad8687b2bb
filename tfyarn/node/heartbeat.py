"""Heartbeats from a role to the driver: liveness, progress metrics, readiness, errors.

One authenticated TCP connection per role (the transport's HMAC handshake on the job
secret), carrying newline-delimited JSON objects both ways, each line with its tag
(:class:`~tfyarn.transport.integrity.TaggedLines`): the role sends heartbeats,
metrics, ``ready``, ``done`` and ``error``; the driver sends ``finish`` to the serving roles
(ps, evaluator) once every trainer is done. If the channel breaks, training goes on and
Spark's own task failure still ends the job; a serving role that never hears ``finish``
is stopped by the driver cancelling the job after the shutdown grace period. A job run
with ``tls=True`` has the channel inside TLS too (the job's certificate).
"""

from __future__ import annotations

import contextlib
import json
import logging
import socket
import threading
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from tfyarn.errors import FrameError
from tfyarn.transport.auth import client_handshake
from tfyarn.transport.integrity import TaggedLines
from tfyarn.transport.tls import client_context

if TYPE_CHECKING:
    from tfyarn.transport.options import TransportOptions

__all__ = ["HeartbeatClient"]

log = logging.getLogger(__name__)


class HeartbeatClient:
    """Sends messages about one role to the driver.

    Parameters
    ----------
    address : tuple of (str, int)
        The driver's heartbeat server.
    secret : bytes
        The job secret.
    task_id : str
        The role, e.g. ``"worker:0"``.
    interval : float
        Seconds between automatic ``beat`` messages.
    on_finish : callable, optional
        Called when the driver says training is over.
    tls : TransportOptions, optional
        Connect with TLS, trusting ``tls_root_certs`` (the job's certificate) for
        ``tls_server_name``; None: plain TCP (the lines are tagged either way).
    beat_fields : callable, optional
        Fields every automatic ``beat`` carries, read at each beat (the role's exchange
        counters: :func:`tfyarn.exchange.stats.process_stats`).
    """

    def __init__(
        self,
        address: tuple[str, int],
        secret: bytes,
        task_id: str,
        interval: float = 2.0,
        on_finish: Callable[[], None] | None = None,
        tls: TransportOptions | None = None,
        beat_fields: Callable[[], Mapping[str, Any]] | None = None,
    ) -> None:
        self.task_id = task_id
        self._beat_fields = beat_fields
        self._on_finish = on_finish
        self._interval = interval
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._metrics: dict[str, Any] = {}
        self._sock: socket.socket | None = None
        self._lines: TaggedLines | None = None
        try:
            sock = socket.create_connection(address, timeout=10)
            if tls is not None and (context := client_context(tls)) is not None:
                sock = context.wrap_socket(sock, server_hostname=tls.tls_server_name or address[0])
            keys = client_handshake(sock, secret, timeout=10)
            sock.settimeout(None)  # sends are small; the reader thread blocks on recv
            self._lines = TaggedLines(keys.frame_auth(), f"the driver at {address}")
            self._sock = sock
        except Exception as exc:  # progress is best effort; training must not depend on it
            log.warning("tfyarn: cannot reach the driver's progress server %s: %s", address, exc)
        self._thread = threading.Thread(target=self._beat, name="tfyarn-heartbeat", daemon=True)
        self._thread.start()
        if self._sock is not None and self._lines is not None:
            threading.Thread(
                target=self._listen,
                args=(self._sock, self._lines),
                name="tfyarn-driver-orders",
                daemon=True,
            ).start()

    def _listen(self, sock: socket.socket, lines: TaggedLines) -> None:
        """Follow the driver's messages: ``finish`` tells a serving role training is over."""
        while True:
            try:
                sock.settimeout(None)
                chunk = sock.recv(4096)
            except OSError:
                return
            if not chunk:
                return
            try:
                payloads = lines.feed(chunk)
            except FrameError as exc:
                log.warning("tfyarn: refused a message on the progress channel: %s", exc)
                return
            for payload in payloads:
                with contextlib.suppress(ValueError):
                    if json.loads(payload).get("kind") == "finish" and self._on_finish is not None:
                        self._on_finish()

    def send(self, kind: str, **fields: Any) -> None:
        """Send one message of ``kind`` (``ready``, ``metrics``, ``error``, ``done``, ...)."""
        message = {"task": self.task_id, "kind": kind, "time": time.time(), **fields}
        payload = json.dumps(message, default=str).encode()  # one line: JSON escapes newlines
        with self._lock:
            if self._sock is None or self._lines is None:
                return
            try:
                self._sock.sendall(self._lines.seal(payload))
            except OSError as exc:
                log.warning("tfyarn: progress channel to the driver lost: %s", exc)
                with contextlib.suppress(OSError):
                    self._sock.close()
                self._sock = None

    def report(self, **metrics: Any) -> None:
        """Record and send progress metrics (``step``, ``loss``, ``samples``, ...)."""
        self._metrics.update(metrics)
        self.send("metrics", **metrics)

    def latest(self, name: str) -> Any:
        """The value last reported for ``name`` (e.g. ``"step"``), or None."""
        return self._metrics.get(name)

    def _beat(self) -> None:
        while not self._stop.wait(self._interval):
            fields: Mapping[str, Any] = {}
            if self._beat_fields is not None:
                try:
                    fields = self._beat_fields()
                except Exception as exc:  # a beat without figures beats no beat at all
                    log.warning("tfyarn: heartbeat fields failed: %s", exc)
            self.send("beat", **fields)

    def close(self) -> None:
        """Stop beating and close the connection; idempotent."""
        self._stop.set()
        with self._lock:
            sock, self._sock = self._sock, None
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.close()
