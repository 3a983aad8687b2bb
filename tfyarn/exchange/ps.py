"""Parameter-server shards: fused buckets in native buffers, optimizer updates on the ps.

Every training role computes the same bucket plan (:func:`~tfyarn.exchange.buckets.plan_buckets`)
and shard plan (:func:`~tfyarn.exchange.buckets.plan_shards`), so each knows which ps holds
which bucket without asking. A ps only ever sees flat buckets: it knows nothing of
variables or models.

One connection per (trainer, ps), channel ``"ps"``; on it, strictly request then reply:

=========  =====================================  =======================================
op         request (header, then payload)         reply
=========  =====================================  =======================================
INIT       dtype + optimizer JSON, then values    ack byte
GET        (none)                                 values (waits for INIT)
GRAD       gradient                               values after the update
ELASTIC    the worker's weights ``x``; ``alpha``  ``d = alpha (x - c)``, after ``c += d``
ADD        delta                                  values after ``c += delta``
BYE        (none)                                 ack byte (the trainer is done)
=========  =====================================  =======================================

In *synchronous* mode a GRAD waits until every trainer pushed the same bucket, then the
mean gradient is applied once and everyone gets the same new values. In *asynchronous*
mode (DOWNPOUR) each gradient is applied on arrival. A trainer that disconnects without
BYE breaks the server: every waiting request fails and :func:`serve_ps` raises, so a
dead worker never leaves the others hanging.

INIT answers ``_ACK`` when it stored the values, ``_KEPT`` when a long-lived server
(:class:`tfyarn.service.ps_server.ServicePSServer`) already held that bucket from an
earlier job (the trainer then starts from the held values), or ``_REFUSED`` followed by
a message frame when the held bucket has another size or dtype.
"""

from __future__ import annotations

import contextlib
import json
import struct
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np

from tfyarn.errors import ConfigError, FrameError, TFYarnError, TransportError
from tfyarn.exchange import kernels
from tfyarn.exchange.buckets import (
    DEFAULT_BUCKET_BYTES,
    Bucket,
    TensorSpec,
    pack,
    plan_buckets,
    plan_shards,
    unpack,
)
from tfyarn.exchange.mesh import Mesh

__all__ = [
    "CHANNEL",
    "OPTIMIZERS",
    "PSClient",
    "PSServer",
    "Reconnect",
    "np_dtype",
    "optimizer_config",
]

CHANNEL = "ps"
_HEADER = struct.Struct("<B3xIQd")  # op, bucket, elements, float parameter
INIT, GET, GRAD, ELASTIC, ADD, BYE = range(1, 7)
_ACK = b"\x01"
_KEPT = b"\x02"
_REFUSED = b"\x03"

#: Optimizers a parameter server can run, with their options and defaults (Keras's).
OPTIMIZERS: dict[str, dict[str, float | bool]] = {
    "sgd": {"learning_rate": 0.01},
    "momentum": {"learning_rate": 0.01, "momentum": 0.9, "nesterov": False},
    "adam": {"learning_rate": 0.001, "beta_1": 0.9, "beta_2": 0.999, "epsilon": 1e-7},
    "adagrad": {"learning_rate": 0.001, "epsilon": 1e-7, "initial_accumulator_value": 0.1},
}


def np_dtype(name: str) -> np.dtype:
    """NumPy dtype of a bucket's dtype name (``bfloat16`` from ml_dtypes)."""
    if name == "bfloat16":
        import ml_dtypes

        return np.dtype(ml_dtypes.bfloat16)
    return np.dtype(name)


def optimizer_config(name: str, **options: Any) -> dict[str, Any]:
    """Validate and complete a ps optimizer configuration.

    Parameters
    ----------
    name : str
        One of :data:`OPTIMIZERS`.
    **options
        Overrides of the defaults (``learning_rate`` ...); must be plain numbers.

    Returns
    -------
    dict
        ``{"name": name, **complete options}``.
    """
    if name not in OPTIMIZERS:
        raise ConfigError(
            f"parameter servers cannot run optimizer {name!r}; use one of {', '.join(OPTIMIZERS)}"
        )
    unknown = set(options) - set(OPTIMIZERS[name])
    if unknown:
        raise ConfigError(f"unknown option(s) {sorted(unknown)} for ps optimizer {name!r}")
    cfg: dict[str, Any] = {"name": name, **OPTIMIZERS[name], **options}
    for k, v in cfg.items():
        if k not in ("name", "nesterov") and not isinstance(v, int | float):
            raise ConfigError(
                f"ps optimizer option {k} must be a number, got {type(v).__name__} "
                "(learning-rate schedules cannot run on a parameter server)"
            )
    return cfg


class _Shard:
    """One bucket held by this ps: values, optimizer state, synchronous-round state."""

    def __init__(self, values: np.ndarray, config: dict[str, Any]) -> None:
        self.values = values
        self.config = config
        self.lock = threading.Condition()
        self.step = 0
        #: Updates applied (GRAD, ELASTIC, ADD), kept across snapshots of a service ps.
        self.updates = 0
        self.acc: np.ndarray | None = None
        self.arrived = 0
        self.round = 0
        name = config["name"]
        n, dt = values.size, values.dtype
        self.slots: list[np.ndarray] = []
        if name == "momentum":
            self.slots = [np.zeros(n, dt)]
        elif name == "adam":
            self.slots = [np.zeros(n, dt), np.zeros(n, dt)]
        elif name == "adagrad":
            self.slots = [np.full(n, config["initial_accumulator_value"], dt)]

    def apply(self, grad: np.ndarray) -> None:
        """Run the optimizer on the values with ``grad`` (caller holds the lock)."""
        c = self.config
        self.step += 1
        name = c["name"]
        if name == "sgd":
            kernels.sgd_(self.values, grad, c["learning_rate"])
        elif name == "momentum":
            kernels.momentum_(
                self.values, grad, self.slots[0], c["learning_rate"], c["momentum"],
                bool(c["nesterov"]),
            )  # fmt: skip
        elif name == "adam":
            kernels.adam_(
                self.values, grad, self.slots[0], self.slots[1], c["learning_rate"],
                c["beta_1"], c["beta_2"], c["epsilon"], self.step,
            )  # fmt: skip
        else:
            kernels.adagrad_(self.values, grad, self.slots[0], c["learning_rate"], c["epsilon"])


class PSServer:
    """Serve this ps's buckets to every trainer until all of them said BYE.

    Parameters
    ----------
    mesh : Mesh or None
        This ps's mesh (None for a service's ps, which accepts on its own listener).
    trainers : sequence of str
        Task ids of every training role (each opens one connection).
    synchronous : bool
        Aggregate all trainers' gradients before each update (else DOWNPOUR).
    name : str, optional
        Name in messages; default the mesh's task id.
    timeout : float, optional
        Seconds a request may wait (for INIT by rank 0, for a synchronous round); default
        the mesh's timeout.
    """

    def __init__(
        self,
        mesh: Mesh | None,
        trainers: Sequence[str],
        synchronous: bool,
        *,
        name: str | None = None,
        timeout: float | None = None,
    ) -> None:
        self.mesh = mesh
        self.name = name or (mesh.task_id if mesh is not None else "ps")
        self.timeout = timeout or (mesh.timeout if mesh is not None else 180.0)
        self.trainers = list(trainers)
        self.synchronous = synchronous
        self._shards: dict[int, _Shard] = {}
        self._cond = threading.Condition()
        self._broken: str | None = None
        self._comms: list[Any] = []
        self._seen: set[str] = set()
        self._byes: set[str] = set()
        self._active = 0

    def _fail(self, reason: str) -> None:
        with self._cond:
            if self._broken is None:
                self._broken = reason
            self._cond.notify_all()
            shards = list(self._shards.values())
        for s in shards:
            with s.lock:
                s.lock.notify_all()
        for c in self._comms:  # wake trainers blocked on a reply
            with contextlib.suppress(Exception):
                c.close()

    def _check(self) -> None:
        if self._broken is not None:
            raise TransportError(f"parameter server {self.name} is broken: {self._broken}")

    def serve(self) -> None:
        """Block until every trainer said BYE; raise if one vanished without it.

        Trainers may connect more than once (one connection per training run); the
        server ends when each trainer has said BYE and no connection is open.
        """
        if self.mesh is None:
            raise ConfigError("PSServer.serve needs a mesh; a service ps serves its listener")
        threads: list[threading.Thread] = []
        started = time.monotonic()
        while True:
            with self._cond:
                if self._broken is not None:
                    break
                if self._byes >= set(self.trainers) and self._active == 0:
                    break
                never = sorted(set(self.trainers) - self._seen)
            if never and time.monotonic() - started > self.timeout:
                self._fail(f"trainer(s) {', '.join(never)} never connected")
                break
            try:
                got = self.mesh.poll_any(CHANNEL, timeout=0.5)
            except TFYarnError as exc:
                self._fail(str(exc))
                break
            if got is None:
                continue
            peer, comm = got
            threads.append(self._spawn(peer, comm))
        for t in threads:
            t.join(timeout=10)
        if self._broken is not None:
            raise TransportError(f"parameter server {self.name}: {self._broken}")

    def _spawn(self, peer: str, comm: Any) -> threading.Thread:
        """Serve ``comm`` from ``peer`` in a thread of its own."""
        with self._cond:
            self._seen.add(peer)
            self._active += 1
            self._comms.append(comm)
        t = threading.Thread(
            target=self._serve_one, args=(peer, comm), name=f"tfyarn-ps-{peer}", daemon=True
        )
        t.start()
        return t

    def _lost(self, peer: str, exc: BaseException) -> None:
        """A trainer's connection failed: in a job, that breaks the whole server."""
        if self._broken is None:
            self._fail(f"trainer {peer} failed or disconnected without goodbye ({exc})")

    def _init(self, b: int, values: np.ndarray, optimizer: dict[str, Any]) -> bytes:
        """Store bucket ``b`` (INIT); return the reply byte."""
        with self._cond:
            self._shards[b] = _Shard(values, optimizer)
            self._cond.notify_all()
        return _ACK

    def _shard(self, b: int) -> _Shard:
        with self._cond:
            while b not in self._shards:
                self._check()
                if not self._cond.wait(timeout=self.timeout):
                    raise TransportError(f"bucket {b} was never initialised by rank 0")
            return self._shards[b]

    def _serve_one(self, peer: str, comm: Any) -> None:
        head = bytearray(_HEADER.size)
        buffers: dict[int, np.ndarray] = {}
        try:
            while True:
                if comm.recv_into(head) != _HEADER.size:
                    raise FrameError(f"short ps request header from {peer}")
                op, b, n, param = _HEADER.unpack(head)
                self._check()
                if op == BYE:
                    with self._cond:
                        self._byes.add(peer)
                    comm.send(_ACK)  # so that the trainer closes only after we know
                    return
                if op == INIT:
                    meta = json.loads(bytes(comm.recv()))
                    values = kernels.empty(n, np_dtype(meta["dtype"]))
                    _recv_exact(comm, values, peer)
                    try:
                        comm.send(self._init(b, values, meta["optimizer"]))
                    except ConfigError as exc:
                        comm.send(_REFUSED)
                        comm.send(str(exc).encode())
                    continue
                shard = self._shard(b)
                if n != shard.values.size:
                    raise FrameError(
                        f"{peer} sent {n} elements for bucket {b} of {shard.values.size}"
                    )
                if op == GET:
                    with shard.lock:
                        out = shard.values.copy()
                    comm.send(memoryview(out.view(np.uint8)))
                    continue
                if op not in (GRAD, ELASTIC, ADD):
                    raise FrameError(f"unknown ps op {op} from {peer}")
                buf = buffers.get(b)
                if buf is None:
                    buf = buffers[b] = kernels.empty(n, shard.values.dtype)
                _recv_exact(comm, buf, peer)
                out = self._update(op, shard, buf, param)
                comm.send(memoryview(out.view(np.uint8)))
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

    def _update(self, op: int, shard: _Shard, buf: np.ndarray, param: float) -> np.ndarray:
        with shard.lock:
            shard.updates += 1
            if op == ELASTIC:  # EASGD: d = alpha (x - c); c += d; the worker does x -= d
                np.subtract(buf, shard.values, out=buf)
                kernels.scale_(buf, param)
                kernels.add_(shard.values, buf)
                return buf
            if op == ADD:
                kernels.add_(shard.values, buf)
                return shard.values.copy()
            if not self.synchronous:
                shard.apply(buf)
                return shard.values.copy()
            if shard.arrived == 0:
                shard.acc = buf.copy()
            else:
                assert shard.acc is not None
                kernels.add_(shard.acc, buf)
            shard.arrived += 1
            mine = shard.round
            if shard.arrived == len(self.trainers):
                assert shard.acc is not None
                kernels.scale_(shard.acc, 1.0 / len(self.trainers))
                shard.apply(shard.acc)
                shard.arrived = 0
                shard.round += 1
                shard.lock.notify_all()
            while shard.round == mine:
                self._check()
                if not shard.lock.wait(timeout=self.timeout):
                    raise TransportError("a synchronous round never completed")
            return shard.values.copy()


def _recv_exact(comm: Any, a: np.ndarray, peer: str) -> None:
    got = comm.recv_into(memoryview(a.view(np.uint8)))
    if got != a.nbytes:
        raise FrameError(f"{peer} sent {got} bytes where {a.nbytes} were expected")


@dataclass
class _Route:
    ps: str
    buckets: list[Bucket]


#: How a client gets a connection to a parameter server, by its name.
Connect = Callable[[str], Any]


class Reconnect:
    """How a client recovers from a lost parameter server (a service's ps restarted).

    Subclasses wait for ``ps`` to come back and return a new connection with what the
    server said about itself (``restored_seq``, ``restored_updates``: the snapshot it
    loaded; ``updates``: its bucket counters); :class:`PSClient` then repeats the
    failed request.
    """

    def __call__(self, ps: str, error: BaseException) -> tuple[Any, dict[str, Any]]:
        """Return ``(comm, hello)`` for ``ps`` after ``error``; raise if it cannot."""
        raise NotImplementedError


class PSClient:
    """A trainer's view of the parameter servers: the tensors it pushes and pulls.

    Parameters
    ----------
    connect : callable
        ``connect(ps_name) -> Comm``: a connection to one parameter server (a job's
        mesh channel, or a service's ps address).
    ps : sequence of str
        Names of the parameter servers, in index order.
    specs : sequence of TensorSpec
        The tensors (trainable variables) held by the servers, in a fixed order.
    bucket_bytes : int
        Bucket size cap (also the unit of sharding).
    reconnect : Reconnect, optional
        Called when a request fails on a connection; returns a new one and the request is
        repeated. None (in-job parameter servers): the failure is raised.

    Attributes
    ----------
    acked : dict of int to int
        Update requests (GRAD/ELASTIC/ADD) the servers acknowledged, per bucket.
    reconnects : list of dict
        One entry per recovered loss: ``ps``, ``acked_at_break`` (this trainer's
        acknowledged updates per bucket of that ps when it was lost) and the server's
        ``restored_seq`` and ``restored_updates`` (per bucket, all trainers).
    """

    def __init__(
        self,
        connect: Connect,
        ps: Sequence[str],
        specs: Sequence[TensorSpec],
        bucket_bytes: int = DEFAULT_BUCKET_BYTES,
        reconnect: Reconnect | None = None,
    ) -> None:
        if not ps:
            raise ConfigError(
                "this strategy keeps its state on parameter servers: run with ps >= 1"
            )
        self.specs = list(specs)
        self.buckets = plan_buckets(self.specs, bucket_bytes)
        shards = plan_shards(self.buckets, len(ps))
        self.routes = [
            _Route(p, [self.buckets[i] for i in s]) for p, s in zip(ps, shards, strict=True)
        ]
        self.reconnect = reconnect
        self.acked: dict[int, int] = {b.index: 0 for b in self.buckets}
        self.reconnects: list[dict[str, Any]] = []
        self.comms = {r.ps: connect(r.ps) for r in self.routes}
        self._pool = ThreadPoolExecutor(len(ps), thread_name_prefix="tfyarn-ps-client")
        self._closed = False

    # -- plumbing ----------------------------------------------------------------------
    def _each_ps(self, fn: Callable[[_Route], None]) -> None:
        if len(self.routes) == 1:
            fn(self.routes[0])
            return
        for f in [self._pool.submit(fn, r) for r in self.routes]:
            f.result()

    def _each_bucket(self, route: _Route, fn: Callable[[Any, Bucket, str], None]) -> None:
        """``fn(comm, bucket, ps)`` for each bucket of ``route``; repeated after a reconnect."""
        for b in route.buckets:
            while True:
                comm = self.comms[route.ps]
                try:
                    fn(comm, b, route.ps)
                    break
                except ConfigError:
                    raise
                except (OSError, TFYarnError) as exc:
                    if self.reconnect is None or self._closed:
                        raise
                    with contextlib.suppress(Exception):
                        comm.close()
                    at_break = {o.index: self.acked[o.index] for o in route.buckets}
                    self.comms[route.ps], hello = self.reconnect(route.ps, exc)
                    self._recovered(route, at_break, hello)

    def _recovered(self, route: _Route, at_break: dict[int, int], hello: dict[str, Any]) -> None:
        """Record a reconnect; fail clearly if the server came back without our model."""
        held = {int(b) for b in hello.get("updates", {})}
        restored = {int(b): int(n) for b, n in (hello.get("restored_updates") or {}).items()}
        self.reconnects.append(
            {
                "ps": route.ps,
                "acked_at_break": at_break,
                "restored_seq": hello.get("restored_seq"),
                "restored_updates": restored,
            }
        )
        missing = [b.index for b in route.buckets if b.index not in held]
        if any(at_break.values()) and missing:
            raise TransportError(
                f"parameter server {route.ps} came back without bucket(s) {missing}: it "
                "restarted before its first snapshot, so the model state is gone; rerun the "
                "job (its rank 0 initialises the service again)"
            )

    def _request(
        self, op: int, arrays: Sequence[np.ndarray] | None, param: float = 0.0
    ) -> list[np.ndarray]:
        """Send ``op`` for every bucket (with the packed ``arrays``), return unpacked replies."""
        out = [np.empty(s.shape, np_dtype(s.dtype)) for s in self.specs]

        def one(comm: Any, b: Bucket, ps: str) -> None:
            comm.send(_HEADER.pack(op, b.index, b.size, param))
            flat = np.empty(b.size, np_dtype(b.dtype))  # transient: not from the pool
            if arrays is not None:
                comm.send(memoryview(pack(b, arrays, flat).view(np.uint8)))
            _recv_exact(comm, flat, ps)
            unpack(b, flat, out)
            if op != GET:
                self.acked[b.index] += 1

        try:
            self._each_ps(lambda route: self._each_bucket(route, one))
        except TFYarnError:
            raise
        except Exception as exc:
            raise TransportError(f"parameter-server exchange failed: {exc}") from exc
        return out

    # -- operations --------------------------------------------------------------------
    def init(self, arrays: Sequence[np.ndarray], optimizer: dict[str, Any] | None = None) -> bool:
        """Rank 0 only: store the initial values (and the optimizer to run) on the servers.

        Returns
        -------
        bool
            True when every server stored them; False when a long-lived (service) server
            kept the values an earlier job left, which the trainers then pull.

        Raises
        ------
        ConfigError
            A service's server holds a model of another shape.
        """
        cfg = optimizer or optimizer_config("sgd")
        kept: list[bool] = []

        def one(comm: Any, b: Bucket, ps: str) -> None:
            comm.send(_HEADER.pack(INIT, b.index, b.size, 0.0))
            comm.send(json.dumps({"dtype": b.dtype, "optimizer": cfg}).encode())
            flat = pack(b, arrays, kernels.empty(b.size, np_dtype(b.dtype)))
            comm.send(memoryview(flat.view(np.uint8)))
            reply = bytes(comm.recv())
            if reply == _REFUSED:
                raise ConfigError(bytes(comm.recv()).decode(errors="replace"))
            if reply not in (_ACK, _KEPT):
                raise FrameError(f"{ps} answered {reply!r} to INIT of bucket {b.index}")
            kept.append(reply == _KEPT)

        self._each_ps(lambda route: self._each_bucket(route, one))
        return not any(kept)

    def pull(self) -> list[np.ndarray]:
        """Current values of every tensor (waits until rank 0 initialised them)."""
        return self._request(GET, None)

    def push_gradients(self, grads: Sequence[np.ndarray]) -> list[np.ndarray]:
        """Push gradients; return the values after the servers applied them."""
        return self._request(GRAD, grads)

    def elastic(self, weights: Sequence[np.ndarray], alpha: float) -> list[np.ndarray]:
        """EASGD exchange: return ``d = alpha (x - center)``; the center moved by ``+d``."""
        return self._request(ELASTIC, weights, alpha)

    def add(self, deltas: Sequence[np.ndarray]) -> list[np.ndarray]:
        """Add ``deltas`` to the servers' values; return the new values."""
        return self._request(ADD, deltas)

    def close(self) -> None:
        """Say goodbye to every server and close the connections; idempotent."""
        if self._closed:
            return
        self._closed = True
        for route in self.routes:
            comm = self.comms[route.ps]
            with contextlib.suppress(Exception):
                comm.send(_HEADER.pack(BYE, 0, 0, 0.0))
                comm.recv()  # the ack: closing earlier could drop the goodbye in flight
            with contextlib.suppress(Exception):
                comm.close()
        self._pool.shutdown(wait=False)
