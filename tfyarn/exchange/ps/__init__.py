"""Parameter servers: fused buckets in native buffers, optimizer updates on the ps.

A ps only ever sees flat buckets: it knows nothing of variables or models. The pieces,
each usable on its own:

- :mod:`~tfyarn.exchange.ps.wire`: the protocol (header, op and reply codes, dtypes,
  :class:`OptimizerConfig`);
- :mod:`~tfyarn.exchange.ps.store`: the buckets a ps holds (:class:`ShardStore`, with an
  :class:`InitPolicy`: replace for a job's ps, keep for a long-lived one);
- :mod:`~tfyarn.exchange.ps.snapshot`: atomic snapshots of a store and their restore
  (tagged with the trainer checkpoint they go with, for a job that checkpoints);
- :mod:`~tfyarn.exchange.ps.server`: the loop serving a store on connections from any
  :class:`ConnectionSource` (:func:`job_server` for a job's ps role);
- :mod:`~tfyarn.exchange.ps.client`: the trainers' :class:`PSClient`.

A long-lived service's ps (:mod:`tfyarn.service.ps_server`) composes the same pieces.
"""

from __future__ import annotations

from tfyarn.exchange.ps.client import Connect, PSClient, Reconnect, ServerHello
from tfyarn.exchange.ps.server import ConnectionSource, MeshConnections, PSServer, job_server
from tfyarn.exchange.ps.snapshot import (
    Snapshot,
    SnapshotPlan,
    Snapshotter,
    latest_snapshot,
    read_snapshot,
    write_snapshot,
)
from tfyarn.exchange.ps.store import BucketState, InitOutcome, InitPolicy, Shard, ShardStore
from tfyarn.exchange.ps.wire import (
    CHANNEL,
    OPTIMIZERS,
    PROTOCOL,
    OptimizerConfig,
    SnapshotTag,
    np_dtype,
    optimizer_config,
)

__all__ = [
    "CHANNEL",
    "OPTIMIZERS",
    "PROTOCOL",
    "BucketState",
    "Connect",
    "ConnectionSource",
    "InitOutcome",
    "InitPolicy",
    "MeshConnections",
    "OptimizerConfig",
    "PSClient",
    "PSServer",
    "Reconnect",
    "ServerHello",
    "Shard",
    "ShardStore",
    "Snapshot",
    "SnapshotPlan",
    "SnapshotTag",
    "Snapshotter",
    "job_server",
    "latest_snapshot",
    "np_dtype",
    "optimizer_config",
    "read_snapshot",
    "write_snapshot",
]
