"""A service's parameter server: long-lived, snapshotting, shared by successive jobs.

``python -m tfyarn.service.ps_server`` is the launch command of the ``ps`` component
(see :func:`tfyarn.service.spec.yarnfile`). It is the exchange's
parameter server (:mod:`tfyarn.exchange.ps`: the same wire protocol, store, server loop
and snapshots) composed differently from a job's ps, in four ways:

- it accepts trainers of any job on its own listener (``<transport>://<host>:<port>``,
  authenticated with the service secret), never ends on its own and stops on SIGTERM
  (YARN's stop, flex down or upgrade) after a last snapshot;
- a trainer that disconnects without goodbye ends only its own connection (its job
  failed; the service stays up for the next one);
- INIT of a bucket it already holds keeps the held values (a new job continues the
  model), and refuses a bucket of another size or dtype (:attr:`InitPolicy.KEEP
  <tfyarn.exchange.ps.store.InitPolicy.KEEP>`);
- every ``--snapshot-interval`` seconds, and soon after a new bucket arrives, it writes a
  snapshot of everything it holds (:class:`~tfyarn.exchange.ps.snapshot.Snapshotter`, in
  the folder :func:`tfyarn.service.state.ps_dir` names); at start it loads the newest
  one, so a ps that YARN restarts loses only the updates after it.

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
import queue
import signal
import socket
import sys
import threading
from collections.abc import Callable
from pathlib import Path

from tfyarn import __version__
from tfyarn.errors import ConfigError, TFYarnError
from tfyarn.exchange.ps import PROTOCOL, InitPolicy, PSServer, ShardStore, Snapshot, Snapshotter
from tfyarn.service.state import ps_dir, read_certificate, read_secret
from tfyarn.transport.base import Comm, Listener
from tfyarn.transport.options import TransportOptions

__all__ = ["HELLO", "PROTOCOL", "GreetedConnections", "ServicePSServer", "bind_host", "main"]

log = logging.getLogger("tfyarn.service.ps")

#: First frame of a trainer's connection to a service ps, before the JSON hello.
HELLO = b"TFYSVC1"

#: Answer to a refused model: a service holds one model.
_ONE_MODEL = (
    "a service keeps one model; attach jobs of that model, or launch another service for this one"
)


class GreetedConnections:
    """Connections accepted on a listener, handed over once their hello passed.

    Every connection is greeted on a thread of its own, so that a slow or hostile peer
    never holds up the others; :meth:`next` returns the greeted ones.

    Parameters
    ----------
    listener : Listener
        Where trainers connect.
    greet : callable
        ``greet(comm) -> trainer name``, or None to drop the connection (it closes it).
    """

    def __init__(self, listener: Listener, greet: Callable[[Comm], str | None]) -> None:
        self.listener = listener
        self.greet = greet
        self._ready: queue.Queue[tuple[str, Comm]] = queue.Queue()
        self._closed = threading.Event()
        self._thread: threading.Thread | None = None

    def next(self, timeout: float) -> tuple[str, Comm] | None:
        """See :meth:`tfyarn.exchange.ps.ConnectionSource.next`."""
        if self._thread is None:
            self._thread = threading.Thread(
                target=self._accept, name="tfyarn-ps-accept", daemon=True
            )
            self._thread.start()
        try:
            return self._ready.get(timeout=timeout)
        except queue.Empty:
            return None

    def close(self) -> None:
        """Stop accepting (before the listener closes); idempotent."""
        self._closed.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        while True:  # greeted after the server stopped taking them: nobody serves these
            try:
                _, comm = self._ready.get_nowait()
            except queue.Empty:
                return
            with contextlib.suppress(Exception):
                comm.close()

    def _accept(self) -> None:
        while not self._closed.is_set():
            try:
                comm = self.listener.accept(timeout=0.5)
            except TFYarnError:
                continue  # a timeout, or a stranger refused at authentication
            threading.Thread(
                target=self._hand_over, args=(comm,), name="tfyarn-ps-hello", daemon=True
            ).start()

    def _hand_over(self, comm: Comm) -> None:
        peer = self.greet(comm)
        if peer is not None:
            self._ready.put((peer, comm))


class ServicePSServer:
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
        self.name = name
        self.listener = listener
        self.snapshot_interval = snapshot_interval
        self.store = ShardStore(
            f"service parameter server {name}",
            InitPolicy.KEEP,
            mismatch_hint=_ONE_MODEL,
            on_stored=lambda _bucket: self.snapshots.soon(),  # a new bucket: snapshot soon
        )
        self.snapshots = Snapshotter(self.store, folder, keep, name=name)
        #: The snapshot loaded at start, if any (its trainers' hello says so).
        self.restored: Snapshot | None = self.snapshots.restore()
        self.connections = GreetedConnections(listener, self._greet)
        self.server = PSServer(self.store, self.connections, name=name, timeout=timeout)

    def updates(self) -> dict[int, int]:
        """Update counter of every bucket held now."""
        return self.store.updates()

    def snapshot(self) -> str | None:
        """Write a snapshot if anything changed since the last one; return its path."""
        return self.snapshots.save()

    def serve(self) -> None:
        """Accept trainers until :meth:`stop`; then take a last snapshot."""
        self.snapshots.start(self.snapshot_interval)
        try:
            self.server.serve()
        finally:
            self.connections.close()
            self.snapshots.close()

    def stop(self) -> None:
        """Make :meth:`serve` return (after its last snapshot); callable from a signal."""
        self.server.stop()

    def _greet(self, comm: Comm) -> str | None:
        """Check the trainer's hello and answer with ours; None (and closed) if refused."""
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
            comm.send(json.dumps(self._hello()).encode())
        except Exception as exc:
            log.warning("%s: dropped a connection at hello: %s", self.name, exc)
            with contextlib.suppress(Exception):
                comm.close()
            return None
        return peer

    def _hello(self) -> dict[str, object]:
        """What this ps says of itself to every trainer (read by its ``ServerHello``)."""
        restored = self.restored
        return {
            "ps": self.name,
            "protocol": PROTOCOL,
            "tfyarn": __version__,
            "pid": os.getpid(),
            "restored_seq": restored.seq if restored else None,
            "restored_updates": restored.updates if restored else {},
            "updates": self.updates(),
        }


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
    p.add_argument("--tls", action="store_true", help="serve TLS with the state dir's tls.pem")
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
    options = TransportOptions()
    if args.tls:
        options = read_certificate(args.state_dir).apply(options)
    listener = transport.listen(
        f"{args.transport}://{host}:{args.port}", secret=secret, options=options
    )
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
