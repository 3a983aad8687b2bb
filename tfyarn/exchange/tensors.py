"""Read and write lists of Keras/TensorFlow variables as NumPy arrays.

Kept apart from the algorithms so that those stay free of TensorFlow: anything that
fits :class:`Variable` (a ``keras.Variable``, a ``tf.Variable``) works.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Protocol

import numpy as np
import numpy.typing

from tfyarn.errors import ConfigError
from tfyarn.exchange.buckets import TensorSpec

__all__ = ["ArrayVariable", "Variable", "assign", "dtype_name", "floating", "read", "specs"]

_FLOATS = frozenset({"float16", "bfloat16", "float32", "float64"})


class Variable(Protocol):
    """What the exchange uses of a model variable (``keras.Variable``, ``tf.Variable``).

    Attributes
    ----------
    name : str
        Its name; a Keras variable's ``path``, when it has one, names it in errors.
    shape : iterable of int
        Static shape.
    dtype : str or object with a ``name``
        Keras gives a dtype name, TensorFlow a ``tf.DType``.
    """

    @property
    def name(self) -> str: ...

    @property
    def shape(self) -> Iterable[int]: ...

    @property
    def dtype(self) -> object: ...

    def numpy(self) -> np.ndarray:
        """The current value."""
        ...

    def assign(self, value: np.ndarray) -> object:
        """Set the value (same shape and dtype)."""
        ...


class ArrayVariable:
    """A :class:`Variable` held in a NumPy array: for loops without TensorFlow, and tests.

    Parameters
    ----------
    name : str
        Its name.
    value : array-like
        The initial value; its shape and dtype are the variable's for good.
    """

    def __init__(self, name: str, value: np.typing.ArrayLike) -> None:
        self.name = name
        self._value = np.array(value, order="C")

    @property
    def shape(self) -> tuple[int, ...]:
        """Static shape."""
        return tuple(self._value.shape)

    @property
    def dtype(self) -> str:
        """NumPy dtype name."""
        return self._value.dtype.name

    def numpy(self) -> np.ndarray:
        """A copy of the current value."""
        return self._value.copy()

    def assign(self, value: np.typing.ArrayLike) -> ArrayVariable:
        """Set the value (same shape; cast to the variable's dtype).

        Raises
        ------
        ConfigError
            ``value`` has another shape.
        """
        a = np.asarray(value)
        if a.shape != self._value.shape:
            raise ConfigError(
                f"variable {self.name!r} has shape {self._value.shape}; cannot assign {a.shape}"
            )
        self._value[...] = a
        return self


def dtype_name(v: Variable) -> str:
    """The NumPy-style dtype name of a variable (Keras gives strings, TF gives DType)."""
    d = v.dtype
    return d if isinstance(d, str) else str(getattr(d, "name", d))


def floating(variables: Sequence[Variable]) -> list[Variable]:
    """The floating-point variables among ``variables`` (the ones worth averaging)."""
    return [v for v in variables if dtype_name(v) in _FLOATS]


def specs(variables: Sequence[Variable]) -> list[TensorSpec]:
    """Bucket-planning specs of ``variables``, in order."""
    return [
        TensorSpec(str(getattr(v, "path", None) or v.name), tuple(int(d) for d in v.shape),
                   dtype_name(v))
        for v in variables
    ]  # fmt: skip


def read(variables: Sequence[Variable]) -> list[np.ndarray]:
    """Current values, as C-contiguous arrays."""
    # np.array, not ascontiguousarray: that one turns 0-d scalars into shape (1,)
    return [np.array(v.numpy(), order="C") for v in variables]


def assign(variables: Sequence[Variable], values: Sequence[np.ndarray]) -> None:
    """Assign ``values`` to ``variables`` (same order, shapes and dtypes)."""
    for v, a in zip(variables, values, strict=True):
        v.assign(a)
