"""The parts of Horovod's public API that ``keras`` and ``tensorflow`` share verbatim.

Both modules re-export these names; what differs between them (argument order of the
collectives, the optimizer's signature) is in each module.
"""

from __future__ import annotations

from tfyarn.horovod._compression import Compression, Compressor, FP16Compressor, NoneCompressor
from tfyarn.horovod._process_set import ProcessSet, global_process_set
from tfyarn.horovod._reduce_ops import ReduceOp
from tfyarn.horovod._state import (
    cross_rank,
    cross_size,
    init,
    is_initialized,
    local_rank,
    local_size,
    rank,
    shutdown,
    size,
)
from tfyarn.horovod._tf_collectives import (
    allgather_object,
    barrier,
    broadcast_object,
    broadcast_variables,
    join,
)

__all__ = [
    "UNSUPPORTED",
    "Adasum",
    "Average",
    "Compression",
    "Compressor",
    "FP16Compressor",
    "Max",
    "Min",
    "NoneCompressor",
    "ProcessSet",
    "Product",
    "Sum",
    "allgather_object",
    "barrier",
    "broadcast_object",
    "broadcast_variables",
    "ccl_built",
    "cross_rank",
    "cross_size",
    "cuda_built",
    "ddl_built",
    "global_process_set",
    "gloo_built",
    "gloo_enabled",
    "init",
    "is_initialized",
    "join",
    "local_rank",
    "local_size",
    "mpi_built",
    "mpi_enabled",
    "mpi_threads_supported",
    "nccl_built",
    "rank",
    "rocm_built",
    "shutdown",
    "size",
]

Average = ReduceOp.AVERAGE
Sum = ReduceOp.SUM
#: Refused wherever it is passed (tfyarn's ring adds; see ``resolve_op``).
Adasum = ReduceOp.ADASUM
Min = ReduceOp.MIN
Max = ReduceOp.MAX
Product = ReduceOp.PRODUCT


# Horovod's build introspection, answered truthfully: tfyarn uses none of these libraries.
def mpi_built() -> bool:
    """False: tfyarn does not use MPI."""
    return False


def mpi_enabled() -> bool:
    """False: tfyarn does not use MPI."""
    return False


def mpi_threads_supported() -> bool:
    """False: tfyarn does not use MPI."""
    return False


def gloo_built() -> bool:
    """False: tfyarn's own ring replaces Gloo."""
    return False


def gloo_enabled() -> bool:
    """False: tfyarn's own ring replaces Gloo."""
    return False


def nccl_built() -> bool:
    """False: tfyarn reduces on the host CPU."""
    return False


def ddl_built() -> bool:
    """False: tfyarn does not use IBM DDL."""
    return False


def ccl_built() -> bool:
    """False: tfyarn does not use oneCCL."""
    return False


def cuda_built() -> bool:
    """False: tfyarn's collectives do not run on GPUs (tensors go through host memory)."""
    return False


def rocm_built() -> bool:
    """False: tfyarn's collectives do not run on GPUs (tensors go through host memory)."""
    return False


#: Horovod names tfyarn does not provide, and why (raised as ``UnsupportedError``).
UNSUPPORTED: dict[str, str] = {
    "add_process_set": "there is only the global process set (every rank)",
    "remove_process_set": "there is only the global process set (every rank)",
    "start_timeline": "no Horovod timeline; use tfyarn.run(log_dir=..., tensorboard=True) "
    "for the exchange's own figures",
    "stop_timeline": "no Horovod timeline; use tfyarn.run(log_dir=..., tensorboard=True)",
    "elastic": "Horovod Elastic is not supported; tfyarn restarts a failed run from its "
    "checkpoints instead (tfyarn.run(max_restarts=..., checkpoint_dir=...))",
    "broadcast_global_variables": "it is TF1 graph mode; use hvd.broadcast_variables(vars, "
    "root_rank) or hvd.callbacks.BroadcastGlobalVariablesCallback",
    "BroadcastGlobalVariablesHook": "TF1 estimator hooks are not supported; use "
    "hvd.broadcast_variables after the first step",
    "SyncBatchNormalization": "synchronised batch normalisation is not supported",
    "alltoall": "alltoall is not supported (allgather, then slice)",
    "grouped_allgather": "use allgather on each tensor",
    "grouped_reducescatter": "use reducescatter on each tensor",
    "PartialDistributedGradientTape": "local (unreduced) layers are not supported",
    "PartialDistributedOptimizer": "local (unreduced) layers are not supported",
    "is_homogeneous": "not provided; compare hvd.local_size() across ranks with "
    "hvd.allgather_object",
}
