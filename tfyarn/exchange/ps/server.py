"""The parameter-server loop: serve a :class:`ShardStore` on connections from any source.

:class:`PSServer` takes accepted connections from a :class:`ConnectionSource` (a job's
mesh, a service's listener after its hello, ...) and serves each on a thread of its own,
strictly request then reply (the protocol is in :mod:`tfyarn.exchange.ps.wire`).

Who may connect decides when it ends:

- a **fixed set of trainers** (a job's ps, :func:`job_server`): the server ends when every
  trainer said BYE and no connection is open. A trainer that disconnects without BYE, or
  one that never connects within the timeout, breaks the server: every waiting request
  fails and :meth:`PSServer.serve` raises, so a dead worker never leaves the others
  hanging. In *synchronous* mode a GRAD waits until every trainer pushed the same bucket,
  then the mean gradient is applied once and everyone gets the same new values.
- **anyone** (``trainers=None``, a long-lived service's ps): it serves until
  :meth:`PSServer.stop`; a trainer that vanishes ends only its own connection. Gradients
  are applied on arrival (*asynchronous*, DOWNPOUR), as they are for a job's
  asynchronous ps.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from tfyarn.errors import ConfigError, FrameError, TFYarnError, TransportError
from tfyarn.exchange import kernels
from tfyarn.exchange.mesh import Mesh
from tfyarn.exchange.ps.snapshot import SnapshotPlan, Snapshotter
from tfyarn.exchange.ps.store import InitOutcome, InitPolicy, Shard, ShardStore
from tfyarn.exchange.ps.wire import (
    CHANNEL,
    Header,
    InitMeta,
    Op,
    Reply,
    SnapshotTag,
    as_bytes,
    np_dtype,
)
from tfyarn.exchange.stats import process_stats
from tfyarn.transport.base import Comm, recv_exactly

__all__ = ["ConnectionSource", "MeshConnections", "PSServer", "job_server"]

log = logging.getLogger("tfyarn.exchange.ps")

#: Seconds the accept loop waits for a connection before it looks at its end condition.
_POLL_S = 0.5


class ConnectionSource(Protocol):
    """Where a :class:`PSServer` gets its trainers' connections from."""

    def next(self, timeout: float) -> tuple[str, Comm] | None:
        """The next connection and who opened it, or None when none came within ``timeout`` s.

        Raises
        ------
        TFYarnError
            The source failed for good (the listener died, the mesh was closed).
        """
        ...


class MeshConnections:
    """A job's connections to this ps: channel :data:`~tfyarn.exchange.ps.wire.CHANNEL`."""

    def __init__(self, mesh: Mesh) -> None:
        self.mesh = mesh

    def next(self, timeout: float) -> tuple[str, Comm] | None:
        """See :meth:`ConnectionSource.next`."""
        return self.mesh.poll_any(CHANNEL, timeout=timeout)


@dataclass
class _Round:
    """The synchronous round of one bucket: gradients summed so far."""

    acc: np.ndarray | None = None
    arrived: int = 0
    number: int = 0


class _SyncRounds:
    """Synchronous updates: the mean of one gradient per trainer, applied once per round."""

    def __init__(self, trainers: int, timeout: float) -> None:
        self.trainers = trainers
        self.timeout = timeout
        self._rounds: dict[int, _Round] = {}

    def push(
        self, bucket: int, shard: Shard, grad: np.ndarray, check: Callable[[], None]
    ) -> np.ndarray:
        """Add ``grad`` to this round of ``bucket``; return the values once it completed."""
        with shard.lock:
            shard.updates += 1
            r = self._rounds.setdefault(bucket, _Round())
            if r.acc is None or r.arrived == 0:
                r.acc = grad.copy()
            else:
                kernels.add_(r.acc, grad)
            r.arrived += 1
            mine = r.number
            if r.arrived == self.trainers:
                kernels.scale_(r.acc, 1.0 / self.trainers)
                shard.apply(r.acc)
                r.arrived = 0
                r.number += 1
                shard.lock.notify_all()
            while r.number == mine:
                check()
                if not shard.lock.wait(timeout=self.timeout):
                    raise TransportError("a synchronous round never completed")
            return shard.values.copy()


class PSServer:
    """Serve a store's buckets to the connections of ``source``.

    Parameters
    ----------
    store : ShardStore
        The buckets (and the INIT policy).
    source : ConnectionSource
        Accepted connections, each with the name of its trainer.
    name : str
        This ps, as messages name it.
    timeout : float
        Seconds a request may wait (for INIT by rank 0, for a synchronous round), and
        for a fixed set of trainers to connect.
    trainers : sequence of str or None
        The task ids of every trainer: the server ends once all said BYE, and a trainer
        lost without BYE breaks it. None: anyone may connect, the server runs until
        :meth:`stop`, and a lost trainer ends only its connection.
    synchronous : bool
        Average one gradient per trainer before each update (needs ``trainers``).
    on_snapshot : callable, optional
        ``on_snapshot(tag)`` answers a SNAPSHOT request (a job's ps writes a tagged
        snapshot); None: SNAPSHOT is refused with a message.

    Raises
    ------
    ConfigError
        ``synchronous`` without a fixed set of trainers, or an empty set.
    """

    def __init__(
        self,
        store: ShardStore,
        source: ConnectionSource,
        *,
        name: str,
        timeout: float = 180.0,
        trainers: Sequence[str] | None = None,
        synchronous: bool = False,
        on_snapshot: Callable[[SnapshotTag], object] | None = None,
    ) -> None:
        if trainers is not None and not trainers:
            raise ConfigError(f"parameter server {name} was given no trainers to serve")
        if synchronous and trainers is None:
            raise ConfigError(
                f"parameter server {name}: synchronous rounds need a fixed set of trainers; "
                "a ps open to any job runs asynchronous strategies only"
            )
        self.store = store
        self.source = source
        self.name = name
        self.timeout = timeout
        self.trainers = None if trainers is None else list(trainers)
        self.synchronous = synchronous
        self.on_snapshot = on_snapshot
        self._rounds = _SyncRounds(len(trainers), timeout) if synchronous and trainers else None
        self._cond = threading.Condition()
        self._stop = threading.Event()
        self._broken: str | None = None
        self._comms: list[Comm] = []
        self._seen: set[str] = set()
        self._byes: set[str] = set()
        self._active = 0

    # -- the accept loop -----------------------------------------------------------------
    def serve(self) -> None:
        """Serve until the end condition (see the class); raise if the server broke.

        Raises
        ------
        TransportError
            A trainer of a fixed set vanished without BYE or never connected, or the
            source failed.
        """
        threads: list[threading.Thread] = []
        started = time.monotonic()
        while not self._finished(started):
            try:
                got = self.source.next(timeout=_POLL_S)
            except TFYarnError as exc:
                self._fail(str(exc))
                break
            threads = [t for t in threads if t.is_alive()]
            if got is not None:
                threads.append(self._spawn(*got))
        # After stop(): a trainer still connected reconnects (to the restarted ps), and a
        # request waiting for an INIT or a round gives up now rather than at its timeout.
        self._close_comms()
        self.store.wake()
        for t in threads:
            t.join(timeout=10)
        if self._broken is not None:
            raise TransportError(f"parameter server {self.name}: {self._broken}")

    def stop(self) -> None:
        """Make :meth:`serve` return soon; callable from a signal handler."""
        self._stop.set()

    def _finished(self, started: float) -> bool:
        with self._cond:
            if self._broken is not None or self._stop.is_set():
                return True
            if self.trainers is None:
                return False
            if self._byes >= set(self.trainers) and self._active == 0:
                return True
            never = sorted(set(self.trainers) - self._seen)
        if never and time.monotonic() - started > self.timeout:
            self._fail(f"trainer(s) {', '.join(never)} never connected")
            return True
        return False

    def _spawn(self, peer: str, comm: Comm) -> threading.Thread:
        """Serve ``comm`` from ``peer`` on a thread of its own."""
        with self._cond:
            self._seen.add(peer)
            self._active += 1
            self._comms.append(comm)
        t = threading.Thread(
            target=self._serve_one, args=(peer, comm), name=f"tfyarn-ps-{peer}", daemon=True
        )
        t.start()
        return t

    # -- failures ------------------------------------------------------------------------
    def _fail(self, reason: str) -> None:
        with self._cond:
            if self._broken is None:
                self._broken = reason
            self._cond.notify_all()
        self.store.wake()
        self._close_comms()  # wake trainers blocked on a reply

    def _close_comms(self) -> None:
        with self._cond:
            comms = list(self._comms)
        for c in comms:
            with contextlib.suppress(Exception):
                c.close()

    def _check(self) -> None:
        if self._broken is not None:
            raise TransportError(f"parameter server {self.name} is broken: {self._broken}")
        if self._stop.is_set():
            raise TransportError(f"parameter server {self.name} was stopped")

    def _lost(self, peer: str, exc: BaseException) -> None:
        """A trainer's connection failed."""
        if self._stop.is_set():
            return  # stop() closed it
        if self.trainers is None:  # its job failed; other jobs and the model are unaffected
            log.warning("%s: trainer %s left without goodbye (%s)", self.name, peer, exc)
        elif self._broken is None:
            self._fail(f"trainer {peer} failed or disconnected without goodbye ({exc})")

    # -- one connection ------------------------------------------------------------------
    def _serve_one(self, peer: str, comm: Comm) -> None:
        buffers: dict[int, np.ndarray] = {}
        try:
            while self._request(peer, comm, buffers):
                pass
        except BaseException as exc:
            self._lost(peer, exc)
        finally:
            with contextlib.suppress(Exception):
                comm.close()
            with self._cond:
                self._active -= 1
                with contextlib.suppress(ValueError):
                    self._comms.remove(comm)
                self._cond.notify_all()

    def _request(self, peer: str, comm: Comm, buffers: dict[int, np.ndarray]) -> bool:
        """Answer one request of ``peer``; False after its BYE."""
        head = bytearray(Header.SIZE)
        got = comm.recv_into(head)
        try:
            h = Header.unpack(bytes(head[:got]))
        except FrameError as exc:
            raise FrameError(f"{exc} from {peer}") from None
        self._check()
        process_stats().served()
        if h.op is Op.BYE:
            with self._cond:
                self._byes.add(peer)
            comm.send(Reply.ACK)  # so that the trainer closes only after we know
            return False
        if h.op is Op.INIT:
            self._init(peer, comm, h)
            return True
        if h.op is Op.SNAPSHOT:
            self._snapshot(peer, comm)
            return True
        shard = self.store.wait_for(h.bucket, self.timeout, self._check)
        if h.elements != shard.values.size:
            raise FrameError(
                f"{peer} sent {h.elements} elements for bucket {h.bucket} of {shard.values.size}"
            )
        if h.op is Op.GET:
            comm.send(as_bytes(shard.read()))
            return True
        buf = buffers.get(h.bucket)
        if buf is None:
            buf = buffers[h.bucket] = kernels.empty(h.elements, shard.values.dtype)
        recv_exactly(comm, as_bytes(buf), what=f"{h.op.name} of bucket {h.bucket}", peer=peer)
        comm.send(as_bytes(self._update(h, shard, buf)))
        return True

    def _init(self, peer: str, comm: Comm, h: Header) -> None:
        """INIT: the metadata, then the values; answer by the store's policy."""
        meta = InitMeta.decode(bytes(comm.recv()))
        values = kernels.empty(h.elements, np_dtype(meta.dtype))
        recv_exactly(comm, as_bytes(values), what=f"INIT of bucket {h.bucket}", peer=peer)
        try:
            outcome = self.store.init(h.bucket, values, meta.optimizer)
        except ConfigError as exc:
            comm.send(Reply.REFUSED)
            comm.send(str(exc).encode())
            return
        comm.send(Reply.KEPT if outcome is InitOutcome.KEPT else Reply.ACK)

    def _snapshot(self, peer: str, comm: Comm) -> None:
        """SNAPSHOT: write a snapshot tagged as asked, then answer ACK (or REFUSED)."""
        tag = SnapshotTag.decode(bytes(comm.recv()))
        if self.on_snapshot is None:
            refusal = f"parameter server {self.name} takes no snapshots on request"
        else:
            try:
                self.on_snapshot(tag)
            except Exception as exc:  # a full disk must reach the trainer, not end the ps
                log.exception("%s: snapshot for %s (asked by %s) failed", self.name, tag, peer)
                refusal = f"parameter server {self.name} could not write its snapshot: {exc}"
            else:
                comm.send(Reply.ACK)
                return
        comm.send(Reply.REFUSED)
        comm.send(refusal.encode())

    def _update(self, h: Header, shard: Shard, buf: np.ndarray) -> np.ndarray:
        if h.op is Op.ELASTIC:  # the worker then does x -= d
            return shard.elastic(buf, h.param)
        if h.op is Op.ADD:
            return shard.add(buf)
        if self._rounds is None:
            return shard.push_gradient(buf)
        return self._rounds.push(h.bucket, shard, buf, self._check)


def job_server(
    mesh: Mesh,
    trainers: Sequence[str],
    synchronous: bool,
    snapshots: SnapshotPlan | None = None,
) -> PSServer:
    """A job's ps: its mesh's connections, its store, ends once every trainer said BYE.

    Parameters
    ----------
    mesh : Mesh
        This ps role's mesh (its task id names the server; its timeout bounds waits).
    trainers : sequence of str
        Task ids of every training role.
    synchronous : bool
        ``sync_ps`` (else DOWNPOUR, and the centers of EASGD/ADAG).
    snapshots : SnapshotPlan, optional
        The job checkpoints: answer SNAPSHOT with a tagged snapshot in the plan's folder,
        and restore the one of ``snapshots.resume`` at start. Without a plan (or with
        nothing to resume) the store starts empty and INIT replaces (rank 0 seeds it).
    """
    name = f"parameter server {mesh.task_id}"
    store = ShardStore(
        name,
        InitPolicy.REPLACE,
        mismatch_hint="its snapshot is of another model; point checkpoint_dir at a new "
        "folder for a changed model",
    )
    on_snapshot: Callable[[SnapshotTag], object] | None = None
    if snapshots is not None:
        snapshotter = Snapshotter(store, snapshots.folder, snapshots.keep, name=mesh.task_id)
        on_snapshot = snapshotter.save
        if snapshots.resume is not None:
            if snapshotter.restore(snapshots.resume) is not None:
                # Resumed: rank 0's INIT must not overwrite the restored values and slots.
                store.policy = InitPolicy.KEEP
            else:
                log.warning(
                    "%s: no snapshot for %s in %s; rank 0 seeds it from the trainers' "
                    "checkpoint and the optimizer slots start afresh",
                    name, snapshots.resume, snapshots.folder,
                )  # fmt: skip
    return PSServer(
        store,
        MeshConnections(mesh),
        name=mesh.task_id,
        timeout=mesh.timeout,
        trainers=trainers,
        synchronous=synchronous,
        on_snapshot=on_snapshot,
    )
