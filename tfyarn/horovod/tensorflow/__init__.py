"""Horovod's TensorFlow API on tfyarn: ``import tfyarn.horovod.tensorflow as hvd``.

For TensorFlow 2 programs: eager or ``tf.function`` training loops with
:class:`DistributedGradientTape`, the collectives as TensorFlow ops, and
:func:`DistributedOptimizer` for Keras 3 optimizers (TF1 ``tf.compat.v1.train``
optimizers, sessions and estimator hooks are not supported). Launch with
:func:`tfyarn.horovod.spark.run`. ``tfyarn.horovod.tensorflow.keras`` is
``tfyarn.horovod.keras``.

This package is named ``tensorflow``; every import in it is absolute, so ``import
tensorflow`` below is TensorFlow itself.
"""

from __future__ import annotations

from typing import Any

from tfyarn.horovod._api import *  # noqa: F403 - Horovod's shared names, listed in __all__
from tfyarn.horovod._api import UNSUPPORTED, Average
from tfyarn.horovod._api import __all__ as _API_ALL
from tfyarn.horovod._checks import unsupported_attribute
from tfyarn.horovod._compression import NoneCompressor
from tfyarn.horovod._gradients import distributed_keras_optimizer, gradient_reduction
from tfyarn.horovod._process_set import ProcessSet, global_process_set
from tfyarn.horovod._state import require_state
from tfyarn.horovod._tf_collectives import allgather, allreduce, broadcast, reducescatter

__all__ = [
    *_API_ALL,
    "DistributedGradientTape",
    "DistributedOptimizer",
    "allgather",
    "allreduce",
    "broadcast",
    "grouped_allreduce",
    "reducescatter",
]


def grouped_allreduce(
    tensors: list[Any],
    average: bool | None = None,
    device_dense: str = "",
    device_sparse: str = "",
    compression: Any = NoneCompressor,
    op: Any = None,
    prescale_factor: float = 1.0,
    postscale_factor: float = 1.0,
    process_set: ProcessSet = global_process_set,
) -> list[Any]:
    """:func:`allreduce` of each tensor of ``tensors`` (same arguments), as a list."""
    return [
        allreduce(
            t,
            average=average,
            device_dense=device_dense,
            device_sparse=device_sparse,
            compression=compression,
            op=op,
            prescale_factor=prescale_factor,
            postscale_factor=postscale_factor,
            process_set=process_set,
        )
        for t in tensors
    ]


def DistributedOptimizer(
    optimizer: Any,
    name: str | None = None,
    use_locking: bool = False,
    device_dense: str = "",
    device_sparse: str = "",
    compression: Any = NoneCompressor,
    sparse_as_dense: bool = False,
    backward_passes_per_step: int = 1,
    op: Any = Average,
    gradient_predivide_factor: float = 1.0,
    average_aggregated_gradients: bool = False,
    num_groups: int = 0,
    groups: Any = None,
    process_set: ProcessSet = global_process_set,
    scale_local_gradients: bool = True,
) -> Any:
    """Horovod's TensorFlow ``DistributedOptimizer``, for Keras 3 optimizers.

    The same as :func:`tfyarn.horovod.keras.DistributedOptimizer` (see there); TF1
    optimizers (``tf.compat.v1.train.*``) and ``use_locking=True`` are refused.
    """
    reduction = gradient_reduction(
        "hvd.DistributedOptimizer",
        compression=compression,
        op=op,
        gradient_predivide_factor=gradient_predivide_factor,
        use_locking=use_locking,
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


class DistributedGradientTape:
    """A ``tf.GradientTape`` whose :meth:`gradient` averages over every rank.

    Wraps the tape (``tape = hvd.DistributedGradientTape(tape)`` after the ``with``
    block, or ``with hvd.DistributedGradientTape(tf.GradientTape()) as tape:``); every
    other attribute is the tape's. All gradients of one call go through one fused ring
    all-reduce per dtype, as TensorFlow ops (eager or inside ``tf.function``).

    Parameters
    ----------
    gradtape : tf.GradientTape
        The tape to wrap.
    compression, op, gradient_predivide_factor
        As for :func:`DistributedOptimizer`.
    sparse_as_dense : bool
        Either value: tfyarn always exchanges sparse gradients dense.
    device_dense, device_sparse, num_groups, groups, process_set, scale_local_gradients
        Only their defaults: anything else raises.
    """

    def __init__(
        self,
        gradtape: Any,
        device_dense: str = "",
        device_sparse: str = "",
        compression: Any = NoneCompressor,
        sparse_as_dense: bool = False,
        op: Any = Average,
        gradient_predivide_factor: float = 1.0,
        num_groups: int = 0,
        groups: Any = None,
        process_set: ProcessSet = global_process_set,
        scale_local_gradients: bool = True,
    ) -> None:
        self._reduction = gradient_reduction(
            "hvd.DistributedGradientTape",
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
        self._strategy, _ = require_state()
        self._tape = gradtape

    def __enter__(self) -> DistributedGradientTape:
        self._tape.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self._tape.__exit__(*exc)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._tape, name)

    def gradient(
        self, target: Any, sources: Any, output_gradients: Any = None, **kwargs: Any
    ) -> Any:
        """The tape's gradients, reduced over every rank (same structure as ``sources``)."""
        import tensorflow as tf

        grads = self._tape.gradient(target, sources, output_gradients, **kwargs)
        flat = tf.nest.flatten(grads)
        return tf.nest.pack_sequence_as(grads, self._reduction.reduce(self._strategy, flat))


def __getattr__(name: str) -> Any:
    raise unsupported_attribute(__name__, name, UNSUPPORTED)
