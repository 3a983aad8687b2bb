"""Horovod's collectives on the rank ``init()`` found: ``hvd.allreduce``, ``hvd.allgather``, ...

The tensor collectives are TensorFlow ops (one ``tf.numpy_function`` each, so that they
work eagerly and inside ``tf.function``) around the NumPy collectives of
:mod:`tfyarn.horovod._array_collectives`; ``broadcast_object``, ``allgather_object``,
``barrier`` and ``join`` work on Python objects. TensorFlow is imported inside the
functions that need it: importing ``tfyarn.horovod`` stays cheap.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from tfyarn.errors import ConfigError
from tfyarn.horovod._array_collectives import (
    allgather_array,
    allgather_object_on,
    broadcast_array,
    broadcast_object_on,
    join_on,
    reduce_array,
    reducescatter_array,
)
from tfyarn.horovod._checks import check_unsupported
from tfyarn.horovod._compression import Compressor, NoneCompressor
from tfyarn.horovod._process_set import ProcessSet, global_process_set
from tfyarn.horovod._reduce_ops import ReduceOp, resolve_op
from tfyarn.horovod._state import require_state

__all__ = [
    "allgather",
    "allgather_object",
    "allreduce",
    "barrier",
    "broadcast",
    "broadcast_object",
    "broadcast_variables",
    "join",
    "reducescatter",
]


def _numpy_op(fn: Callable[[np.ndarray], np.ndarray], tensor: Any, shape: Any, name: str) -> Any:
    """``fn`` on ``tensor``'s value as one TensorFlow op (eager or inside ``tf.function``)."""
    import tensorflow as tf

    t = tf.convert_to_tensor(tensor)  # IndexedSlices become dense here
    out = tf.numpy_function(lambda v: np.asarray(fn(v)), [t], t.dtype, stateful=True, name=name)
    out.set_shape(shape if shape is not None else t.shape)
    return out


def _op_name(name: str | None, default: str) -> str:
    return default if name is None else "".join(c if c.isalnum() else "_" for c in name)


def allreduce(
    tensor: Any,
    average: bool | None = None,
    device_dense: str = "",
    device_sparse: str = "",
    compression: type[Compressor] | Compressor = NoneCompressor,
    op: Any = None,
    prescale_factor: float = 1.0,
    postscale_factor: float = 1.0,
    name: str | None = None,
    process_set: ProcessSet = global_process_set,
    ignore_name_scope: bool = False,
) -> Any:
    """``hvd.allreduce``: ``tensor`` reduced over every rank, as a tensor of its shape.

    ``name`` and ``ignore_name_scope`` only name the op.
    """
    check_unsupported(
        "hvd.allreduce", device_dense=device_dense, device_sparse=device_sparse,
        process_set=process_set,
    )  # fmt: skip
    reduce_op = resolve_op(op, average)
    strategy, _ = require_state()
    coll = strategy.collectives
    compressed, ctx = compression.compress(_to_tensor(tensor))
    out = _numpy_op(
        lambda v: reduce_array(coll, v, reduce_op, prescale_factor, postscale_factor),
        compressed, None, _op_name(name, "hvd_allreduce"),
    )  # fmt: skip
    return compression.decompress(out, ctx)


def _to_tensor(value: Any) -> Any:
    import tensorflow as tf

    return tf.convert_to_tensor(value)


def allgather(
    tensor: Any,
    name: str | None = None,
    ignore_name_scope: bool = False,
    process_set: ProcessSet = global_process_set,
) -> Any:
    """``hvd.allgather``: every rank's ``tensor`` concatenated along the first axis."""
    check_unsupported("hvd.allgather", process_set=process_set)
    strategy, _ = require_state()
    coll = strategy.collectives
    t = _to_tensor(tensor)
    shape = [None, *t.shape[1:]] if t.shape.rank else None
    return _numpy_op(lambda v: allgather_array(coll, v), t, shape, _op_name(name, "hvd_allgather"))


def broadcast(
    tensor: Any,
    root_rank: int,
    name: str | None = None,
    ignore_name_scope: bool = False,
    process_set: ProcessSet = global_process_set,
) -> Any:
    """``hvd.broadcast``: rank ``root_rank``'s ``tensor`` on every rank."""
    check_unsupported("hvd.broadcast", process_set=process_set)
    strategy, _ = require_state()
    coll = strategy.collectives
    return _numpy_op(
        lambda v: broadcast_array(coll, v, root_rank), tensor, None, _op_name(name, "hvd_broadcast")
    )


def reducescatter(
    tensor: Any,
    device_dense: str = "",
    compression: type[Compressor] | Compressor = NoneCompressor,
    op: Any = ReduceOp.AVERAGE,
    name: str | None = None,
    process_set: ProcessSet = global_process_set,
    ignore_name_scope: bool = False,
    prescale_factor: float = 1.0,
    postscale_factor: float = 1.0,
) -> Any:
    """``hvd.reducescatter``: reduced over every rank, this rank's part of the first axis."""
    check_unsupported("hvd.reducescatter", device_dense=device_dense, process_set=process_set)
    reduce_op = resolve_op(op)
    strategy, _ = require_state()
    coll = strategy.collectives
    compressed, ctx = compression.compress(_to_tensor(tensor))
    shape = [None, *compressed.shape[1:]] if compressed.shape.rank else None
    out = _numpy_op(
        lambda v: reducescatter_array(coll, v, reduce_op, prescale_factor, postscale_factor),
        compressed, shape, _op_name(name, "hvd_reducescatter"),
    )  # fmt: skip
    return compression.decompress(out, ctx)


def broadcast_variables(
    variables: Sequence[Any], root_rank: int = 0, process_set: ProcessSet = global_process_set
) -> Any:
    """``hvd.broadcast_variables``: rank ``root_rank``'s values in every rank's variables.

    Eagerly it assigns at once (one fused broadcast per dtype) and returns None; inside a
    ``tf.function`` (Horovod's "broadcast after the first step" idiom) it returns the
    group of assign ops, the broadcast itself one ``tf.numpy_function``.
    """
    check_unsupported("hvd.broadcast_variables", process_set=process_set)
    strategy, _ = require_state()
    if not 0 <= root_rank < strategy.size:
        raise ConfigError(f"root_rank={root_rank} is not a rank (there are {strategy.size})")
    import tensorflow as tf

    variables = list(variables)
    if tf.executing_eagerly() or not variables:
        strategy.broadcast_variables(variables, root_rank)
        return None
    from tfyarn.exchange.collectives import fused

    coll = strategy.collectives

    def call(*arrays: np.ndarray) -> list[np.ndarray]:
        return fused(arrays, lambda flat: coll.broadcast_(flat, root_rank))

    values = [tf.convert_to_tensor(v) for v in variables]
    out = tf.numpy_function(
        call, values, [v.dtype for v in values], stateful=True, name="hvd_broadcast_variables"
    )
    assigns = []
    for v, o, t in zip(variables, out, values, strict=True):
        o.set_shape(t.shape)  # numpy_function's outputs have no static shape
        assigns.append(v.assign(o))
    return tf.group(*assigns)


def broadcast_object(
    obj: Any, root_rank: int = 0, session: Any = None, name: str | None = None,
    process_set: ProcessSet = global_process_set,
) -> Any:  # fmt: skip
    """``hvd.broadcast_object``: rank ``root_rank``'s ``obj`` on every rank."""
    check_unsupported("hvd.broadcast_object", session=session, process_set=process_set)
    strategy, _ = require_state()
    return broadcast_object_on(strategy.collectives, obj, root_rank)


def allgather_object(
    obj: Any, session: Any = None, name: str | None = None,
    process_set: ProcessSet = global_process_set,
) -> list[Any]:  # fmt: skip
    """``hvd.allgather_object``: every rank's ``obj``, in rank order."""
    check_unsupported("hvd.allgather_object", session=session, process_set=process_set)
    strategy, _ = require_state()
    return allgather_object_on(strategy.collectives, obj)


def barrier(process_set: ProcessSet = global_process_set) -> None:
    """``hvd.barrier``: return once every rank has called it."""
    check_unsupported("hvd.barrier", process_set=process_set)
    strategy, _ = require_state()
    strategy.barrier()


def join(device: str = "") -> int:
    """``hvd.join``: a barrier; returns the rank that arrived last (see :func:`join_on`)."""
    check_unsupported("hvd.join", device=device)
    strategy, _ = require_state()
    return join_on(strategy.collectives)
