"""Named channels between the roles of one job, over one transport listener.

Every role has exactly one :class:`~tfyarn.transport.base.Listener` (opened by the
launcher, or by :mod:`tfyarn.exchange.local`). Several exchange components use it at
once: the ring connects to its right neighbour, parameter-server clients connect to
every ps. :class:`Mesh` runs the single accept loop and hands each accepted
:class:`~tfyarn.transport.base.Comm` to whoever waits for it, keyed by the connecting
task and a channel name that the connector states in a first *hello* message. Every
connection it hands out counts its bytes (:class:`~tfyarn.exchange.stats.CountedComm`).
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
from collections.abc import Mapping
from typing import Any

from tfyarn.errors import FrameError, TFYarnError, TransportError
from tfyarn.exchange.stats import CountedComm
from tfyarn.transport.base import Comm, Listener
from tfyarn.transport.options import TransportOptions

__all__ = ["Mesh", "ps_tasks", "training_tasks"]

_HELLO = b"TFYX1"
#: How long to wait for a peer to connect or answer by default. Generous because a
#: peer may still be importing TensorFlow (~10 s with 3 processes on 2 cores).
DEFAULT_TIMEOUT = 180.0
_ACCEPT_POLL = 0.5


def _task_key(task_id: str) -> tuple[str, int]:
    role, _, index = task_id.partition(":")
    return role, int(index or 0)


def training_tasks(peers: Mapping[str, str]) -> list[str]:
    """Task ids that train, in rank order: the chief (if any), then workers by index."""
    chief = sorted((t for t in peers if t.startswith("chief")), key=_task_key)
    workers = sorted((t for t in peers if t.startswith("worker")), key=_task_key)
    return chief + workers


def ps_tasks(peers: Mapping[str, str]) -> list[str]:
    """Parameter-server task ids in index order."""
    return sorted((t for t in peers if t.startswith("ps")), key=_task_key)


class Mesh:
    """Connections to the other roles, demultiplexed by (peer task, channel).

    Parameters
    ----------
    task_id : str
        This role, e.g. ``"worker:1"``.
    listener : Listener
        This role's listener; the mesh owns its accept loop from now on.
    peers : mapping of str to str
        Task id -> transport address of every role (including this one).
    secret : bytes
        The job secret used to authenticate every connection.
    timeout : float
        Default seconds to wait for a connection.
    transport_options : TransportOptions, optional
        Settings of the connections the mesh opens; default: those the listener was
        opened with (the job's ``tfyarn.run(transport_options=...)`` plus the selection's).
    """

    def __init__(
        self,
        task_id: str,
        listener: Listener,
        peers: Mapping[str, str],
        secret: bytes,
        timeout: float = DEFAULT_TIMEOUT,
        transport_options: TransportOptions | None = None,
    ) -> None:
        self.task_id = task_id
        self.listener = listener
        self.peers = dict(peers)
        self.secret = secret
        self.timeout = timeout
        self.transport_options = transport_options or listener.options
        self._cond = threading.Condition()
        self._pending: dict[tuple[str, str], list[Comm]] = {}
        self._owned: list[Comm] = []
        self._closed = False
        self._accept_error: BaseException | None = None
        self._thread = threading.Thread(
            target=self._accept_loop, name=f"tfyarn-mesh-{task_id}", daemon=True
        )
        self._thread.start()

    # -- accepting ---------------------------------------------------------------------
    def _accept_loop(self) -> None:
        while not self._closed:
            started = time.monotonic()
            try:
                comm = self.listener.accept(timeout=_ACCEPT_POLL)
            except Exception as exc:
                if self._closed:
                    return
                # backends report a timeout as TimeoutError or TransportError; an error
                # that comes back well before the timeout means the listener is broken
                # or closed, and waiters must hear of it rather than wait forever
                if time.monotonic() - started >= _ACCEPT_POLL * 0.8:
                    continue
                with self._cond:
                    self._accept_error = exc
                    self._cond.notify_all()
                return
            try:
                hello = bytes(comm.recv())
                if not hello.startswith(_HELLO):
                    raise FrameError(f"bad exchange hello from {comm.peer_address}")
                meta = json.loads(hello[len(_HELLO) :])
                key = (str(meta["from"]), str(meta["channel"]))
            except Exception:
                comm.close()
                continue
            comm = CountedComm(comm)
            with self._cond:
                if self._closed:
                    comm.close()
                    return
                self._owned.append(comm)
                self._pending.setdefault(key, []).append(comm)
                self._cond.notify_all()

    def accept(self, peer: str, channel: str, timeout: float | None = None) -> Comm:
        """Wait for ``peer`` to connect on ``channel`` and return that connection."""
        return self._take(lambda k: k == (peer, channel), timeout, f"{peer} on {channel!r}")[1]

    def accept_any(self, channel: str, timeout: float | None = None) -> tuple[str, Comm]:
        """Wait for any peer to connect on ``channel``; return ``(peer task id, comm)``."""
        key, comm = self._take(lambda k: k[1] == channel, timeout, f"any peer on {channel!r}")
        return key[0], comm

    def poll_any(self, channel: str, timeout: float) -> tuple[str, Comm] | None:
        """Like :meth:`accept_any`, but return None when nobody connected within ``timeout``.

        Raises
        ------
        TransportError
            The listener failed or the mesh was closed.
        """
        got = self._take(lambda k: k[1] == channel, timeout, "", expire_quietly=True)
        return None if got is None else (got[0][0], got[1])

    def _take(
        self, match: Any, timeout: float | None, what: str, expire_quietly: bool = False
    ) -> Any:
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        with self._cond:
            while True:
                for key, comms in self._pending.items():
                    if comms and match(key):
                        return key, comms.pop(0)
                if self._accept_error is not None:
                    raise TransportError(
                        f"{self.task_id}: listener failed: {self._accept_error!r}"
                    ) from self._accept_error
                if self._closed:
                    raise TransportError(f"{self.task_id}: mesh closed while waiting for {what}")
                left = deadline - time.monotonic()
                if left <= 0 and expire_quietly:
                    return None
                if left <= 0:
                    raise TransportError(
                        f"{self.task_id}: no connection from {what} within "
                        f"{self.timeout if timeout is None else timeout:.0f}s; is that role alive?"
                    )
                self._cond.wait(min(left, 1.0))

    # -- connecting --------------------------------------------------------------------
    def connect(self, peer: str, channel: str, timeout: float | None = None) -> Comm:
        """Open a connection to ``peer`` on ``channel`` (the peer sees it via ``accept``)."""
        from tfyarn import transport

        if peer not in self.peers:
            raise TFYarnError(
                f"{self.task_id}: unknown peer {peer!r}; known: {', '.join(sorted(self.peers))}"
            )
        comm = transport.connect(
            self.peers[peer],
            secret=self.secret,
            timeout=self.timeout if timeout is None else timeout,
            options=self.transport_options,
        )
        try:
            comm.send(_HELLO + json.dumps({"from": self.task_id, "channel": channel}).encode())
        except BaseException:
            comm.close()
            raise
        comm = CountedComm(comm)
        with self._cond:
            self._owned.append(comm)
        return comm

    def close(self) -> None:
        """Close every connection made or accepted through the mesh; idempotent.

        The listener itself belongs to whoever opened it and stays open.
        """
        with self._cond:
            self._closed = True
            owned, self._owned = self._owned, []
            self._pending.clear()
            self._cond.notify_all()
        for comm in owned:
            # closing a broken comm must not mask the original error
            with contextlib.suppress(Exception):
                comm.close()
        if self._thread is not threading.current_thread():
            self._thread.join(timeout=5)
