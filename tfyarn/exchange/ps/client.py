"""A trainer's side of the parameter servers: push and pull tensors, bucket by bucket.

Every training role computes the same bucket plan (:func:`~tfyarn.exchange.buckets.plan_buckets`)
and shard plan (:func:`~tfyarn.exchange.buckets.plan_shards`), so each knows which ps holds
which bucket without asking. The requests are those of :mod:`tfyarn.exchange.ps.wire`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Mapping, Sequence
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
from tfyarn.exchange.ps.wire import (
    Header,
    InitMeta,
    Op,
    OptimizerConfig,
    Reply,
    SnapshotTag,
    as_bytes,
    np_dtype,
    optimizer_config,
)
from tfyarn.exchange.stats import process_stats
from tfyarn.transport.base import Comm, recv_exactly

__all__ = ["Connect", "PSClient", "Reconnect", "ServerHello"]

#: How a client gets a connection to a parameter server, by its name.
Connect = Callable[[str], Comm]


@dataclass(frozen=True)
class ServerHello:
    """What a server that came back says of itself (the part a client checks).

    Parameters
    ----------
    restored_seq : int or None
        The snapshot it loaded at start (None: it started empty).
    restored_updates : mapping of int to int
        That snapshot's update counter per bucket (all trainers).
    updates : mapping of int to int
        Its update counter per bucket now: the buckets it holds.
    """

    restored_seq: int | None
    restored_updates: Mapping[int, int]
    updates: Mapping[int, int]

    @classmethod
    def parse(cls, hello: Mapping[str, Any]) -> ServerHello:
        """From the JSON hello (bucket keys are strings there).

        Raises
        ------
        FrameError
            A hello without these fields in these types.
        """
        try:
            seq = hello.get("restored_seq")
            return cls(
                None if seq is None else int(seq),
                {int(b): int(n) for b, n in (hello.get("restored_updates") or {}).items()},
                {int(b): int(n) for b, n in (hello.get("updates") or {}).items()},
            )
        except (TypeError, ValueError, AttributeError) as exc:
            raise FrameError(f"malformed parameter-server hello ({exc}): {hello!r}") from exc


class Reconnect:
    """How a client recovers from a lost parameter server (a service's ps restarted).

    Subclasses wait for ``ps`` to come back and return a new connection with what the
    server said about itself (its JSON hello, read by :meth:`ServerHello.parse`);
    :class:`PSClient` then repeats the failed request.
    """

    def __call__(self, ps: str, error: BaseException) -> tuple[Comm, Mapping[str, Any]]:
        """Return ``(comm, hello)`` for ``ps`` after ``error``; raise if it cannot."""
        raise NotImplementedError


@dataclass
class _Route:
    ps: str
    buckets: list[Bucket]


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
        # The record is user-facing (logged, returned by jobs): plain JSON-able dicts.
        self.reconnects: list[dict[str, object]] = []
        self.comms = {r.ps: connect(r.ps) for r in self.routes}
        self._pool = ThreadPoolExecutor(len(ps), thread_name_prefix="tfyarn-ps-client")
        self._closed = False

    # -- plumbing ----------------------------------------------------------------------
    def _each_ps(self, fn: Callable[[_Route], None]) -> None:
        with process_stats().timed():  # the trainer waits for every ps's reply
            if len(self.routes) == 1:
                fn(self.routes[0])
                return
            for f in [self._pool.submit(fn, r) for r in self.routes]:
                f.result()

    def _each_bucket(self, route: _Route, fn: Callable[[Comm, Bucket, str], None]) -> None:
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
                    self._recovered(route, at_break, ServerHello.parse(hello))

    def _recovered(self, route: _Route, at_break: dict[int, int], hello: ServerHello) -> None:
        """Record a reconnect; fail clearly if the server came back without our model."""
        self.reconnects.append(
            {
                "ps": route.ps,
                "acked_at_break": at_break,
                "restored_seq": hello.restored_seq,
                "restored_updates": dict(hello.restored_updates),
            }
        )
        missing = [b.index for b in route.buckets if b.index not in hello.updates]
        if any(at_break.values()) and missing:
            raise TransportError(
                f"parameter server {route.ps} came back without bucket(s) {missing}: it "
                "restarted before its first snapshot, so the model state is gone; rerun the "
                "job (its rank 0 initialises the service again)"
            )

    def _request(
        self, op: Op, arrays: Sequence[np.ndarray] | None, param: float = 0.0
    ) -> list[np.ndarray]:
        """Send ``op`` for every bucket (with the packed ``arrays``), return unpacked replies."""
        out = [np.empty(s.shape, np_dtype(s.dtype)) for s in self.specs]

        def one(comm: Comm, b: Bucket, ps: str) -> None:
            comm.send(Header(op, b.index, b.size, param).pack())
            flat = np.empty(b.size, np_dtype(b.dtype))  # transient: not from the pool
            if arrays is not None:
                comm.send(as_bytes(pack(b, arrays, flat)))
            recv_exactly(comm, as_bytes(flat), what=f"reply for bucket {b.index}", peer=ps)
            unpack(b, flat, out)
            if op is not Op.GET:
                self.acked[b.index] += 1

        try:
            self._each_ps(lambda route: self._each_bucket(route, one))
        except TFYarnError:
            raise
        except Exception as exc:
            raise TransportError(f"parameter-server exchange failed: {exc}") from exc
        return out

    # -- operations --------------------------------------------------------------------
    def init(self, arrays: Sequence[np.ndarray], optimizer: OptimizerConfig | None = None) -> bool:
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

        def one(comm: Comm, b: Bucket, ps: str) -> None:
            comm.send(Header(Op.INIT, b.index, b.size).pack())
            comm.send(InitMeta(b.dtype, cfg).encode())
            flat = pack(b, arrays, kernels.empty(b.size, np_dtype(b.dtype)))
            comm.send(as_bytes(flat))
            reply = bytes(comm.recv())
            if reply == Reply.REFUSED:
                raise ConfigError(bytes(comm.recv()).decode(errors="replace"))
            if reply not in (Reply.ACK, Reply.KEPT):
                raise FrameError(f"{ps} answered {reply!r} to INIT of bucket {b.index}")
            kept.append(reply == Reply.KEPT)

        self._each_ps(lambda route: self._each_bucket(route, one))
        return not any(kept)

    def pull(self) -> list[np.ndarray]:
        """Current values of every tensor (waits until rank 0 initialised them)."""
        return self._request(Op.GET, None)

    def push_gradients(self, grads: Sequence[np.ndarray]) -> list[np.ndarray]:
        """Push gradients; return the values after the servers applied them."""
        return self._request(Op.GRAD, grads)

    def elastic(self, weights: Sequence[np.ndarray], alpha: float) -> list[np.ndarray]:
        """EASGD exchange: return ``d = alpha (x - center)``; the center moved by ``+d``."""
        return self._request(Op.ELASTIC, weights, alpha)

    def add(self, deltas: Sequence[np.ndarray]) -> list[np.ndarray]:
        """Add ``deltas`` to the servers' values; return the new values."""
        return self._request(Op.ADD, deltas)

    def snapshot(self, tag: SnapshotTag) -> None:
        """Ask every server for a snapshot tagged ``tag``; return once all wrote theirs.

        Rank 0 of a checkpointing job calls it right before it writes the trainer
        checkpoint of ``tag``, so that a restart finds ps state of the same step.

        Raises
        ------
        TransportError
            A server refused (it takes no snapshots, or could not write one), or the
            exchange failed.
        """

        def one(route: _Route) -> None:
            comm = self.comms[route.ps]
            comm.send(Header(Op.SNAPSHOT).pack())
            comm.send(tag.encode())
            reply = bytes(comm.recv())
            if reply == Reply.REFUSED:
                raise TransportError(bytes(comm.recv()).decode(errors="replace"))
            if reply != Reply.ACK:
                raise FrameError(f"{route.ps} answered {reply!r} to SNAPSHOT")

        self._each_ps(one)

    def close(self) -> None:
        """Say goodbye to every server and close the connections; idempotent."""
        if self._closed:
            return
        self._closed = True
        for route in self.routes:
            comm = self.comms[route.ps]
            with contextlib.suppress(Exception):
                comm.send(Header(Op.BYE).pack())
                comm.recv()  # the ack: closing earlier could drop the goodbye in flight
            with contextlib.suppress(Exception):
                comm.close()
        self._pool.shutdown(wait=False)
