"""In-place numeric kernels used by the exchange, on flat NumPy arrays.

The kernels come from the C extension :mod:`tfyarn.native` (vectorised, GIL released,
float32/float16/bfloat16). Dtypes the extension does not cover (float64, used for
metric averaging) and builds without the extension use the equivalent NumPy
in-place expression; :data:`BACKEND` says which one is in use, and ``tfyarn doctor``
reports it.
"""

from __future__ import annotations

from types import ModuleType
from typing import Any

import numpy as np

__all__ = [
    "BACKEND",
    "adagrad_",
    "adam_",
    "add_",
    "empty",
    "momentum_",
    "narrow_",
    "scale_",
    "sgd_",
    "widen_",
]


def _load_native() -> ModuleType | None:
    """:mod:`tfyarn.native` when it is built with every kernel, else None."""
    try:  # the extension is built by `pip install -e .`; its absence is reported, not hidden
        from tfyarn import native
    except ImportError:  # pragma: no cover - depends on the build
        return None
    kernels = ("add_", "scale_", "narrow_", "widen_", "sgd_", "momentum_", "adam_", "adagrad_")
    return native if all(hasattr(native, n) for n in kernels) else None


_native = _load_native()
_NATIVE_OK = _native is not None

#: ``"native"`` when :mod:`tfyarn.native` provides the kernels, else ``"numpy"``.
BACKEND: str = "native" if _NATIVE_OK else "numpy"

_NATIVE_DTYPES = frozenset({"float32", "float16", "bfloat16"})
_HALF_DTYPES = frozenset({"float16", "bfloat16"})


def _native_for(*arrays: np.ndarray) -> ModuleType | None:
    if _native is None:
        return None
    name = arrays[0].dtype.name
    if name not in _NATIVE_DTYPES or any(a.dtype != arrays[0].dtype for a in arrays):
        return None
    return _native


def empty(n: int, dtype: Any) -> np.ndarray:
    """A flat uninitialised array of ``n`` elements, from the native aligned pool if present."""
    dt = np.dtype(dtype)
    if _native is not None and n > 0:
        # the array keeps the pool buffer alive; it returns to the pool with the array
        return np.frombuffer(_native.default_pool().alloc(n * dt.itemsize), dtype=dt, count=n)
    return np.empty(n, dtype=dt)


def add_(dst: np.ndarray, src: np.ndarray) -> None:
    """``dst += src`` in place."""
    nat = _native_for(dst, src)
    if nat is not None:
        nat.add_(dst, src)
    else:
        np.add(dst, src, out=dst)


def scale_(dst: np.ndarray, alpha: float) -> None:
    """``dst *= alpha`` in place."""
    nat = _native_for(dst)
    if nat is not None:
        nat.scale_(dst, float(alpha))
    else:
        np.multiply(dst, dst.dtype.type(alpha), out=dst)


def narrow_(dst: np.ndarray, src: np.ndarray) -> None:
    """``dst = src``: float32 rounded to the half type of ``dst`` (nearest even)."""
    if _native is not None and dst.dtype.name in _HALF_DTYPES and src.dtype == np.float32:
        _native.narrow_(dst, src)
    else:
        np.copyto(dst, src, casting="unsafe")


def widen_(dst: np.ndarray, src: np.ndarray, accumulate: bool = False) -> None:
    """``dst = src`` (``dst += src`` with ``accumulate``): a half type widened to float32."""
    if _native is not None and src.dtype.name in _HALF_DTYPES and dst.dtype == np.float32:
        _native.widen_(dst, src, accumulate=accumulate)
    elif accumulate:
        np.add(dst, src.astype(np.float32), out=dst)
    else:
        np.copyto(dst, src, casting="unsafe")


def _f32(*arrays: np.ndarray) -> ModuleType | None:
    """The native kernels when every array is float32 (the dtype they cover), else None."""
    return _native if all(a.dtype == np.float32 for a in arrays) else None


def sgd_(param: np.ndarray, grad: np.ndarray, lr: float) -> None:
    """Plain SGD: ``param -= lr * grad``."""
    nat = _f32(param, grad)
    if nat is not None:
        nat.sgd_(param, grad, float(lr))
    else:
        param -= param.dtype.type(lr) * grad


def momentum_(
    param: np.ndarray,
    grad: np.ndarray,
    velocity: np.ndarray,
    lr: float,
    momentum: float,
    nesterov: bool = False,
) -> None:
    """SGD with momentum, Keras convention: ``v = m*v - lr*g``; ``p += v`` (or Nesterov)."""
    nat = _f32(param, grad, velocity)
    if nat is not None:
        nat.momentum_(param, grad, velocity, float(lr), float(momentum), nesterov=nesterov)
        return
    velocity *= momentum
    velocity -= lr * grad
    if nesterov:
        param += momentum * velocity - lr * grad
    else:
        param += velocity


def adam_(
    param: np.ndarray,
    grad: np.ndarray,
    m: np.ndarray,
    v: np.ndarray,
    lr: float,
    beta1: float,
    beta2: float,
    eps: float,
    step: int,
) -> None:
    """Adam, Keras convention, ``step`` counted from 1."""
    nat = _f32(param, grad, m, v)
    if nat is not None:
        nat.adam_(param, grad, m, v, float(lr), float(beta1), float(beta2), float(eps), int(step))
        return
    alpha = lr * np.sqrt(1 - beta2**step) / (1 - beta1**step)
    m += (1 - beta1) * (grad - m)
    v += (1 - beta2) * (grad * grad - v)
    param -= alpha * m / (np.sqrt(v) + eps)


def adagrad_(param: np.ndarray, grad: np.ndarray, accum: np.ndarray, lr: float, eps: float) -> None:
    """Adagrad, Keras convention: ``accum += g*g``; ``param -= lr * g / sqrt(accum + eps)``."""
    nat = _f32(param, grad, accum)
    if nat is not None:
        nat.adagrad_(param, grad, accum, float(lr), float(eps))
        return
    accum += grad * grad
    param -= lr * grad / np.sqrt(accum + eps)
