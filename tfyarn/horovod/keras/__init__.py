"""Horovod's Keras API on tfyarn: ``import tfyarn.horovod.keras as hvd``.

A program written for ``horovod.keras`` (or ``horovod.tensorflow.keras``) runs on tfyarn
with only that import changed, launched by :func:`tfyarn.horovod.spark.run` (or from the
``train_fn`` of ``tfyarn.run(..., strategy="allreduce")``). Gradients travel over tfyarn's
ring all-reduce and transports; Keras 3 ``model.fit`` works. Arguments tfyarn cannot honour
raise :class:`tfyarn.errors.ConfigError` naming them; see ``docs/migration.md``.
"""

from __future__ import annotations

from typing import Any

from tfyarn.horovod import _tf_collectives
from tfyarn.horovod._api import *  # noqa: F403 - Horovod's shared names, listed in __all__
from tfyarn.horovod._api import UNSUPPORTED, Average
from tfyarn.horovod._api import __all__ as _API_ALL
from tfyarn.horovod._checks import unsupported_attribute
from tfyarn.horovod._compression import NoneCompressor
from tfyarn.horovod._gradients import distributed_keras_optimizer, gradient_reduction
from tfyarn.horovod._process_set import ProcessSet, global_process_set
from tfyarn.horovod.keras import callbacks

__all__ = [
    *_API_ALL,
    "DistributedOptimizer",
    "allgather",
    "allreduce",
    "broadcast",
    "callbacks",
    "load_model",
    "reducescatter",
]


def DistributedOptimizer(
    optimizer: Any,
    name: str | None = None,
    device_dense: str = "",
    device_sparse: str = "",
    compression: Any = NoneCompressor,
    sparse_as_dense: bool = False,
    gradient_predivide_factor: float = 1.0,
    op: Any = Average,
    backward_passes_per_step: int = 1,
    average_aggregated_gradients: bool = False,
    num_groups: int = 0,
    groups: Any = None,
    process_set: ProcessSet = global_process_set,
    scale_local_gradients: bool = True,
) -> Any:
    """Make a Keras 3 optimizer average its gradients over every rank before applying them.

    Parameters
    ----------
    optimizer : keras.optimizers.Optimizer
        Patched in place and returned (its class and config stay, so ``model.save`` and
        ``load_model`` work unchanged).
    name : str, optional
        Accepted for compatibility (tfyarn's ops need no names).
    compression : Compressor
        ``hvd.Compression.none`` or ``hvd.Compression.fp16`` (gradients travel as
        float16).
    sparse_as_dense : bool
        Either value: tfyarn always exchanges sparse gradients dense.
    gradient_predivide_factor : float
        Divide by it before the sum and by ``size / factor`` after (Average only).
    op : ReduceOp
        ``hvd.Average`` or ``hvd.Sum``.
    backward_passes_per_step, average_aggregated_gradients
        Apply once every N steps (Keras' ``gradient_accumulation_steps``), summing the
        N steps' gradients, or averaging them with ``average_aggregated_gradients=True``.
    device_dense, device_sparse, num_groups, groups, process_set, scale_local_gradients
        Only their defaults: anything else raises.

    Raises
    ------
    ConfigError
        An argument tfyarn cannot honour (named), or ``hvd.init()`` was not called.
    """
    reduction = gradient_reduction(
        "hvd.DistributedOptimizer",
        compression=compression,
        op=op,
        gradient_predivide_factor=gradient_predivide_factor,
        device_dense=device_dense,
        device_sparse=device_sparse,
        num_groups=num_groups,
        groups=groups,
        process_set=process_set,
        scale_local_gradients=scale_local_gradients,
    )
    return distributed_keras_optimizer(
        optimizer, reduction, backward_passes_per_step, average_aggregated_gradients
    )


def allreduce(
    value: Any,
    name: str | None = None,
    average: bool | None = None,
    prescale_factor: float = 1.0,
    postscale_factor: float = 1.0,
    op: Any = None,
    compression: Any = NoneCompressor,
) -> Any:
    """``value`` reduced over every rank (Average by default), as a tensor."""
    return _tf_collectives.allreduce(
        value, average=average, compression=compression, op=op,
        prescale_factor=prescale_factor, postscale_factor=postscale_factor, name=name,
    )  # fmt: skip


def allgather(value: Any, name: str | None = None) -> Any:
    """Every rank's ``value`` concatenated along the first axis, in rank order."""
    return _tf_collectives.allgather(value, name=name)


def broadcast(value: Any, root_rank: int, name: str | None = None) -> Any:
    """Rank ``root_rank``'s ``value`` on every rank."""
    return _tf_collectives.broadcast(value, root_rank, name=name)


def reducescatter(value: Any, name: str | None = None, op: Any = Average) -> Any:
    """``value`` reduced over every rank; this rank's part of the first axis."""
    return _tf_collectives.reducescatter(value, op=op, name=name)


def load_model(
    filepath: str,
    custom_optimizers: list[type] | None = None,
    custom_objects: dict[str, Any] | None = None,
    compression: Any = NoneCompressor,
) -> Any:
    """``keras.models.load_model``, with the model's optimizer made distributed.

    Parameters
    ----------
    filepath : str
        A ``.keras`` file.
    custom_optimizers : list of type, optional
        Optimizer classes the file refers to (added to ``custom_objects`` by name).
    custom_objects : dict, optional
        As for Keras.
    compression : Compressor
        As for :func:`DistributedOptimizer`.
    """
    import keras

    objects = dict(custom_objects or {})
    for cls in custom_optimizers or []:
        objects.setdefault(cls.__name__, cls)
    model = keras.models.load_model(filepath, custom_objects=objects or None)
    if getattr(model, "optimizer", None) is not None:
        DistributedOptimizer(model.optimizer, compression=compression)
    return model


def __getattr__(name: str) -> Any:
    raise unsupported_attribute(__name__, name, UNSUPPORTED)
