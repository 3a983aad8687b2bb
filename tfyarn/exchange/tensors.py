"""Read and write lists of Keras/TensorFlow variables as NumPy arrays.

Kept apart from the algorithms so that those stay free of TensorFlow: anything with
``.numpy()``, ``.assign()``, ``.shape`` and ``.dtype`` (a ``keras.Variable``, a
``tf.Variable``) works.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from tfyarn.exchange.buckets import TensorSpec

__all__ = ["assign", "dtype_name", "floating", "read", "specs"]

_FLOATS = frozenset({"float16", "bfloat16", "float32", "float64"})


def dtype_name(v: Any) -> str:
    """The NumPy-style dtype name of a variable (Keras gives strings, TF gives DType)."""
    d = v.dtype
    return d if isinstance(d, str) else str(getattr(d, "name", d))


def floating(variables: Sequence[Any]) -> list[Any]:
    """The floating-point variables among ``variables`` (the ones worth averaging)."""
    return [v for v in variables if dtype_name(v) in _FLOATS]


def specs(variables: Sequence[Any]) -> list[TensorSpec]:
    """Bucket-planning specs of ``variables``, in order."""
    return [
        TensorSpec(str(getattr(v, "path", None) or v.name), tuple(int(d) for d in v.shape),
                   dtype_name(v))
        for v in variables
    ]  # fmt: skip


def read(variables: Sequence[Any]) -> list[np.ndarray]:
    """Current values, as C-contiguous arrays."""
    # np.array, not ascontiguousarray: that one turns 0-d scalars into shape (1,)
    return [np.array(v.numpy(), order="C") for v in variables]


def assign(variables: Sequence[Any], values: Sequence[np.ndarray]) -> None:
    """Assign ``values`` to ``variables`` (same order, shapes and dtypes)."""
    for v, a in zip(variables, values, strict=True):
        v.assign(a)
