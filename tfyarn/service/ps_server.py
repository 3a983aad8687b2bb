"""A service's parameter server: long-lived, snapshotting, shared by successive jobs.

``python -m tfyarn.service.ps_server`` is the launch command of the ``ps`` component
(see :func:`tfyarn.service.spec.yarnfile`). It differs from a job's ps
(:class:`~tfyarn.exchange.ps.PSServer`) in four ways:

- it accepts trainers of any job on its own listener (``<transport>://<host>:<port>``,
  authenticated with the service secret), never ends on its own and stops on SIGTERM
  (YARN's stop, flex down or upgrade) after a last snapshot;
- a trainer that disconnects without goodbye ends only its own connection (its job
  failed; the service stays up for the next one);
- INIT of a bucket it already holds keeps the held values (a new job continues the
  model), and refuses a bucket of another size or dtype;
- every ``--snapshot-interval`` seconds, and soon after a new bucket arrives, it writes a
  snapshot of everything it holds (see :mod:`tfyarn.service.state`); at start it loads
  the newest one, so a ps that YARN restarts loses only the updates after it.

Gradients are applied on arrival (asynchronous: DOWNPOUR, EASGD's and ADAG's center);
a service cannot run the synchronous ``sync_ps``, whose rounds need a fixed set of
trainers.

Each connection starts with a hello: the trainer sends ``{"trainer": ...}`` and the
server answers with its name, the snapshot it restored and its buckets' update counters.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import signal
import socket
import sys
import threading
import time
from pathlib import Path
from typing import Any

from tfyarn import __version__
from tfyarn.errors import ConfigError, TFYarnError
from tfyarn.exchange.ps import _ACK, _KEPT, PSServer, _Shard
from tfyarn.service.state import (
    BucketState,
    Snapshot,
    latest_snapshot,
    ps_dir,
    read_secret,
    write_snapshot,
)
from tfyarn.transport.base import Comm, Listener

__all__ = ["ServicePSServer", "bind_host", "main"]

log = logging.getLogger("tfyarn.service.ps")

#: First frame of a trainer's connection to a service ps, before the JSON hello.
HELLO = b"TFYSVC1"

#: Version of the ps wire protocol (the exchange's ops and this hello). A service keeps
#: running across tfyarn upgrades of the jobs' environments, so both sides check it.
PROTOCOL = 1


class ServicePSServer(PSServer):
    """Serve buckets to any job's trainers until :meth:`stop`; snapshot periodically.

    Parameters
    ----------
    listener : Listener
        Where trainers connect (already bound to the service's port).
    name : str
        Instance name, e.g. ``"ps-0"``.
    folder : Path
        This instance's snapshot folder.
    snapshot_interval : float
        Seconds between snapshots (skipped when nothing changed).
    keep : int
        Snapshots kept.
    timeout : float
        Seconds a GET may wait for the bucket's INIT.
    """

    def __init__(
        self,
        listener: Listener,
        *,
        name: str,
        folder: Path,
        snapshot_interval: float,
        keep: int,
        timeout: float = 180.0,
    ) -> None:
        super().__init__(None, [], synchronous=False, name=name, timeout=timeout)
        self.listener = listener
        self.folder = folder
        self.snapshot_interval = snapshot_interval
        self.keep = keep
        self._stop = threading.Event()
        self._dirty = threading.Event()  # a new bucket: snapshot soon
        self._snapshot_lock = threading.Lock()
        self._seq = 0
        self._saved: dict[int, int] | None = None
        self.restored: Snapshot | None = None
        self._restore()

    # -- state ---------------------------------------------------------------------------
    def _restore(self) -> None:
        snap, problems = latest_snapshot(self.folder)
        for problem in problems:
            log.warning("%s: skipping unreadable snapshot %s", self.name, problem)
        if snap is None:
            log.info("%s: no snapshot in %s, starting empty", self.name, self.folder)
            return
        for b, st in snap.buckets.items():
            shard = _Shard(st.values, st.optimizer)
            shard.slots = st.slots
            shard.step = st.step
            shard.updates = st.updates
            self._shards[b] = shard
        self._seq = snap.seq
        self._saved = snap.updates
        self.restored = snap
        log.info(
            "%s: restored snapshot %d (%d buckets, updates %s)",
            self.name, snap.seq, len(snap.buckets), snap.updates,
        )  # fmt: skip

    def updates(self) -> dict[int, int]:
        """Update counter of every bucket held now."""
        with self._cond:
            shards = dict(self._shards)
        out = {}
        for b, shard in shards.items():
            with shard.lock:
                out[b] = shard.updates
        return out

    def snapshot(self) -> Path | None:
        """Write a snapshot if anything changed since the last one; return its path."""
        with self._snapshot_lock:
            with self._cond:
                shards = dict(self._shards)
            # The counters first: an idle ps must not copy its whole model every interval.
            if not shards or self.updates() == self._saved:
                return None
            state: dict[int, BucketState] = {}
            for b, shard in shards.items():
                with shard.lock:  # one bucket is consistent; buckets are independent
                    state[b] = BucketState(
                        shard.values.copy(),
                        [s.copy() for s in shard.slots],
                        shard.step,
                        shard.updates,
                        dict(shard.config),
                    )
            signature = {b: s.updates for b, s in state.items()}
            self._seq += 1
            path = write_snapshot(self.folder, Snapshot(self._seq, state), self.keep)
            self._saved = signature
            log.info("%s: snapshot %d written (updates %s)", self.name, self._seq, signature)
            return path

    def _snapshot_loop(self) -> None:
        next_due = time.monotonic() + self.snapshot_interval
        while not self._stop.is_set():
            woke = self._dirty.wait(timeout=max(0.0, next_due - time.monotonic()))
            if self._stop.is_set():
                break
            self._dirty.clear()
            try:
                self.snapshot()
            except Exception:
                log.exception("%s: snapshot to %s failed; will retry", self.name, self.folder)
            if not woke or time.monotonic() >= next_due:
                next_due = time.monotonic() + self.snapshot_interval

    # -- PSServer hooks ------------------------------------------------------------------
    def _init(self, b: int, values: Any, optimizer: dict[str, Any]) -> bytes:
        with self._cond:
            held = self._shards.get(b)
            if held is not None:
                if held.values.size != values.size or held.values.dtype != values.dtype:
                    raise ConfigError(
                        f"service parameter server {self.name} holds bucket {b} with "
                        f"{held.values.size} {held.values.dtype} values, this job's model has "
                        f"{values.size} {values.dtype}: a service keeps one model; attach jobs "
                        "of that model, or launch another service for this one"
                    )
                return _KEPT
            self._shards[b] = _Shard(values, optimizer)
            self._cond.notify_all()
        self._dirty.set()
        return _ACK

    def _lost(self, peer: str, exc: BaseException) -> None:
        # Its job failed or was killed; other jobs and the model are unaffected.
        log.warning("%s: trainer %s left without goodbye (%s)", self.name, peer, exc)

    # -- serving -------------------------------------------------------------------------
    def _greet(self, comm: Comm) -> None:
        try:
            first = bytes(comm.recv())
            if not first.startswith(HELLO):
                raise ConfigError("not a tfyarn service trainer (bad hello)")
            hello = json.loads(first[len(HELLO) :])
            peer = str(hello.get("trainer", "?"))
            if hello.get("protocol") != PROTOCOL:
                reason = (
                    f"{peer} speaks ps protocol {hello.get('protocol')} (tfyarn "
                    f"{hello.get('tfyarn', '?')}), this ps {PROTOCOL} (tfyarn {__version__}): "
                    "upgrade the service (new environment archive) or the job's tfyarn"
                )
                comm.send(json.dumps({"error": reason}).encode())
                raise ConfigError(reason)
            restored = self.restored
            comm.send(
                json.dumps(
                    {
                        "ps": self.name,
                        "protocol": PROTOCOL,
                        "tfyarn": __version__,
                        "pid": os.getpid(),
                        "restored_seq": restored.seq if restored else None,
                        "restored_updates": restored.updates if restored else {},
                        "updates": self.updates(),
                    }
                ).encode()
            )
        except Exception as exc:
            log.warning("%s: dropped a connection at hello: %s", self.name, exc)
            with contextlib.suppress(Exception):
                comm.close()
            return
        self._spawn(peer, comm)

    def serve(self) -> None:
        """Accept trainers until :meth:`stop`; then take a last snapshot."""
        snapshots = threading.Thread(
            target=self._snapshot_loop, name="tfyarn-ps-snapshots", daemon=True
        )
        snapshots.start()
        while not self._stop.is_set():
            try:
                comm = self.listener.accept(timeout=0.5)
            except TFYarnError:
                continue  # timeout, or the listener closed by stop()
            threading.Thread(
                target=self._greet, args=(comm,), name="tfyarn-ps-hello", daemon=True
            ).start()
        snapshots.join(timeout=5)
        self.snapshot()

    def stop(self) -> None:
        """Make :meth:`serve` return (after its last snapshot); callable from a signal."""
        self._stop.set()
        self._dirty.set()


def bind_host() -> str:
    """The address to listen on: the NodeManager's host (YARN sets ``NM_HOST``), resolved."""
    host = os.environ.get("NM_HOST") or socket.gethostname()
    try:
        return socket.gethostbyname(host)
    except OSError as exc:
        raise ConfigError(f"cannot resolve this node's host name {host!r}: {exc}") from exc


def _parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m tfyarn.service.ps_server", description=__doc__)
    p.add_argument("--service", required=True, help="service name (for logs)")
    p.add_argument("--instance", type=int, required=True, help="instance number (COMPONENT_ID)")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--state-dir", required=True)
    p.add_argument("--transport", default="tcp", choices=("tcp", "grpc"))
    p.add_argument("--snapshot-interval", type=float, default=30.0)
    p.add_argument("--snapshots-kept", type=int, default=3)
    p.add_argument("--host", help="address to listen on (default: the NodeManager's host)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Run one service parameter server until SIGTERM."""
    args = _parse(argv)
    logging.basicConfig(
        level=logging.INFO, stream=sys.stdout, format="%(asctime)s %(levelname)s %(message)s"
    )
    from tfyarn import transport

    name = f"ps-{args.instance}"
    host = args.host or bind_host()
    secret = read_secret(args.state_dir)
    listener = transport.listen(f"{args.transport}://{host}:{args.port}", secret=secret)
    server = ServicePSServer(
        listener,
        name=name,
        folder=ps_dir(args.state_dir, args.instance),
        snapshot_interval=args.snapshot_interval,
        keep=args.snapshots_kept,
    )
    signal.signal(signal.SIGTERM, lambda *_: server.stop())
    signal.signal(signal.SIGINT, lambda *_: server.stop())
    log.info("%s of service %s listening on %s", name, args.service, listener.address)
    try:
        server.serve()
    finally:
        listener.close()
    log.info("%s stopped", name)
    return 0


if __name__ == "__main__":
    sys.exit(main())
