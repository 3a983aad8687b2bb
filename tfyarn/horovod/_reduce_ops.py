"""Horovod's reduction operations (``hvd.Average``, ``hvd.Sum``, ...).

:class:`ReduceOp` and :func:`resolve_op`, which turns Horovod's ``op=``/``average=``
arguments into one :class:`ReduceOp` and refuses what tfyarn's ring cannot reduce: one
place for the rule, used by the collectives and the gradient path alike.
"""

from __future__ import annotations

import enum
from typing import Any

from tfyarn.errors import ConfigError

__all__ = [
    "ReduceOp",
    "resolve_op",
]


class ReduceOp(enum.IntEnum):
    """Horovod's reduction operations (``hvd.Average``, ``hvd.Sum``, ...)."""

    AVERAGE = 0
    SUM = 1
    ADASUM = 2
    MIN = 3
    MAX = 4
    PRODUCT = 5


def resolve_op(op: Any, average: bool | None = None, *, gradients: bool = False) -> ReduceOp:
    """The :class:`ReduceOp` of Horovod's ``op=``/``average=`` pair (``op=None``: Average).

    Parameters
    ----------
    op : ReduceOp, int or None
        ``hvd.Average``, ``hvd.Sum``, ``hvd.Min``, ``hvd.Max``, ``hvd.Product``.
    average : bool, optional
        Horovod's older spelling: True for Average, False for Sum.
    gradients : bool
        For gradients (``DistributedOptimizer``, ``DistributedGradientTape``): Average or
        Sum only.

    Raises
    ------
    ConfigError
        Both given, Adasum, an unknown value, or a non-additive op for gradients.
    """
    if average is not None:
        if op is not None:
            raise ConfigError("give op= or the older average=, not both (op=hvd.Average)")
        return ReduceOp.AVERAGE if average else ReduceOp.SUM
    if op is None:
        return ReduceOp.AVERAGE
    try:
        resolved = ReduceOp(int(op))
    except (TypeError, ValueError):
        raise ConfigError(
            f"op={op!r} is not a Horovod reduction: use hvd.Average, hvd.Sum, hvd.Min, "
            "hvd.Max or hvd.Product"
        ) from None
    if resolved is ReduceOp.ADASUM:
        raise ConfigError(
            "op=hvd.Adasum is not supported by tfyarn (its ring adds or averages): use "
            "op=hvd.Average, and scale the learning rate by hvd.size() as with Average"
        )
    if gradients and resolved not in (ReduceOp.AVERAGE, ReduceOp.SUM):
        raise ConfigError(
            f"op=hvd.{resolved.name.title()} cannot reduce gradients: use op=hvd.Average "
            "(or hvd.Sum)"
        )
    return resolved
