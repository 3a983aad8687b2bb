"""Zero-copy buffers and in-place kernels from tfyarn's C extension (``tfyarn._native``).

A :class:`BufferPool` hands out page-aligned (or huge-page-backed) :class:`Buffer` objects
carved from large slabs. Each slab is registered with UCX once (when the ``ucx`` transport
is in use in the process), so sending from or receiving into a pool buffer never
registers memory on the critical path. Buffers are seen without copies as

* NumPy arrays: ``np.frombuffer(buf, np.float32)`` or ``buf.as_array(np.float32, shape)``;
* DLPack tensors: ``tf.experimental.dlpack.from_dlpack(buf.view(np.float32, shape).__dlpack__())``.

The kernels work in place on C-contiguous NumPy arrays (or Buffers plus a dtype):
:func:`add_` and :func:`scale_` for float32, float16 and bfloat16 (half types are
widened to float32, combined and rounded once), and the optimizer updates
:func:`sgd_`, :func:`momentum_`, :func:`adam_` and :func:`adagrad_` (float32, the
formulas of the Keras 3 optimizers). :func:`narrow_` and :func:`widen_` convert between
float32 and a half type (the exchange's gradient compression). They run with the GIL
released.
"""

from __future__ import annotations

import threading
from typing import Any

import numpy as np

from tfyarn import _native
from tfyarn.errors import ConfigError

__all__ = [
    "HAVE_UCX",
    "KERNEL_ISA",
    "Buffer",
    "BufferPool",
    "adagrad_",
    "adam_",
    "add_",
    "default_pool",
    "momentum_",
    "narrow_",
    "scale_",
    "sgd_",
    "widen_",
]

#: Whether the extension was built against UCX (the ``ucx`` transport is available).
HAVE_UCX: bool = bool(_native.HAVE_UCX)
#: Which compiled copy of the kernels runs here: ``"avx2"`` or ``"baseline"``.
KERNEL_ISA: str = _native.KERNEL_ISA
#: The system page size, the default buffer alignment.
PAGE_SIZE: int = _native.PAGE_SIZE

try:  # ml_dtypes comes with TensorFlow; without it bfloat16 arrays cannot exist anyway
    from ml_dtypes import bfloat16 as _bfloat16

    _BF16: np.dtype | None = np.dtype(_bfloat16)
except ImportError:  # pragma: no cover - TensorFlow-less installs
    _BF16 = None

# Kernel dtype codes (native/kernels.c).
_F32, _F16, _BF16_CODE = 0, 1, 2
# DLPack type codes (native/dlpack_abi.h).
_DL_INT, _DL_UINT, _DL_FLOAT, _DL_BFLOAT, _DL_BOOL = 0, 1, 2, 4, 6


def _kernel_code(dtype: np.dtype) -> int:
    if dtype == np.float32:
        return _F32
    if dtype == np.float16:
        return _F16
    if _BF16 is not None and dtype == _BF16:
        return _BF16_CODE
    raise ConfigError(
        f"unsupported dtype {dtype} for tfyarn kernels: use float32, float16 or bfloat16"
    )


def _dlpack_code(dtype: np.dtype) -> tuple[int, int]:
    if _BF16 is not None and dtype == _BF16:
        return _DL_BFLOAT, 16
    kinds = {"f": _DL_FLOAT, "i": _DL_INT, "u": _DL_UINT, "b": _DL_BOOL}
    if dtype.kind not in kinds:
        raise ConfigError(f"dtype {dtype} cannot be exported through DLPack")
    return kinds[dtype.kind], dtype.itemsize * 8


class Buffer(_native.Buffer):
    """Memory from a :class:`BufferPool`; not created directly.

    Supports the writable buffer protocol (``memoryview(buf)``, ``np.frombuffer(buf)``;
    no copies), ``__dlpack__``/``__dlpack_device__`` (a ``uint8`` vector of ``nbytes``),
    ``nbytes``, ``address`` and ``release()``. ``release()`` returns the memory to the pool
    and raises ``BufferError`` while a NumPy array, memoryview, typed view or DLPack
    tensor of it is still alive; dropping the last reference releases it too.
    """

    def as_array(self, dtype: Any, shape: int | tuple[int, ...] | None = None) -> np.ndarray:
        """Return a NumPy view of the buffer (no copy).

        Parameters
        ----------
        dtype : numpy dtype-like
            Element type, e.g. ``np.float32`` or ``ml_dtypes.bfloat16``.
        shape : int or tuple of int, optional
            Shape of the view; defaults to as many elements as fit.

        Returns
        -------
        numpy.ndarray
            A writable, C-contiguous array sharing the buffer's memory.
        """
        dt = np.dtype(dtype)
        if shape is None:
            shape = (self.nbytes // dt.itemsize,)
        elif isinstance(shape, int):
            shape = (shape,)
        count = int(np.prod(shape, dtype=np.int64))
        if count * dt.itemsize > self.nbytes:
            raise ConfigError(
                f"a {dt} array of shape {tuple(shape)} needs {count * dt.itemsize} bytes; "
                f"this Buffer has {self.nbytes}"
            )
        return np.frombuffer(self, dtype=dt, count=count).reshape(shape)

    def view(self, dtype: Any, shape: int | tuple[int, ...], offset: int = 0) -> Buffer:
        """Return a typed window on this buffer whose ``__dlpack__`` has that dtype/shape.

        The view keeps this buffer alive (and un-releasable) until it is dropped.

        Parameters
        ----------
        dtype : numpy dtype-like
            Element type (float16/32/64, bfloat16, integers, bool).
        shape : int or tuple of int
            Shape of the exported tensor.
        offset : int
            Byte offset of the first element.
        """
        dt = np.dtype(dtype)
        code, bits = _dlpack_code(dt)
        dims = (shape,) if isinstance(shape, int) else tuple(int(d) for d in shape)
        return self._view(code, bits, dims, offset)


class BufferPool(_native.BufferPool):
    """A pool of aligned buffers carved from large slabs (registered with UCX once each).

    Parameters
    ----------
    slab_bytes : int
        Size of each slab (default 64 MiB). A request larger than this gets its own slab,
        unmapped as soon as that buffer is released.
    alignment : int
        Alignment of every buffer, a power of two (default: the page size).
    hugepages : bool
        Back slabs with 2 MiB huge pages: explicit ones (hugetlbfs) when the kernel has
        some reserved, else transparent huge pages (``madvise``). ``huge_slabs`` tells how
        many slabs got either.

    Notes
    -----
    Methods hold the GIL; a pool may be shared by threads. ``close()`` unmaps every slab
    and raises ``BufferError`` while buffers are still allocated.
    """

    def __init__(
        self, slab_bytes: int = 64 << 20, alignment: int = PAGE_SIZE, hugepages: bool = False
    ) -> None:
        super().__init__(slab_bytes, alignment, hugepages)
        self._set_buffer_type(Buffer)

    def alloc(self, nbytes: int) -> Buffer:
        """Return a buffer of ``nbytes`` bytes (contents undefined: slabs are reused).

        Parameters
        ----------
        nbytes : int
            Size in bytes (0 allowed); the buffer starts on an ``alignment`` boundary.

        Returns
        -------
        Buffer
            Carved from a slab, or from a dedicated slab when larger than ``slab_bytes``.
        """
        return super().alloc(nbytes)

    def __enter__(self) -> BufferPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


_default_pool: BufferPool | None = None
_default_lock = threading.Lock()


def default_pool() -> BufferPool:
    """Return the process-wide pool (created on first use with the default settings)."""
    global _default_pool
    with _default_lock:
        if _default_pool is None:
            _default_pool = BufferPool()
        return _default_pool


# ---------------------------------------------------------------------------- kernels


def _operand(x: Any, dtype: Any, what: str, writable: bool) -> tuple[int, int, np.dtype, Any]:
    """Return (address, element count, dtype, keep-alive) of a kernel operand."""
    if isinstance(x, np.ndarray):
        if not x.flags.c_contiguous:
            raise ConfigError(f"{what} must be C-contiguous (use np.ascontiguousarray)")
        if writable and not x.flags.writeable:
            raise ConfigError(f"{what} is read-only; the kernel writes it in place")
        dt = x.dtype
        if dtype is not None and np.dtype(dtype) != dt:
            raise ConfigError(f"{what} has dtype {dt}, but dtype={np.dtype(dtype)} was passed")
        return x.ctypes.data, x.size, dt, x
    if isinstance(x, _native.Buffer):
        if dtype is None:
            raise ConfigError(f"{what} is a tfyarn Buffer: pass dtype= to say what it holds")
        dt = np.dtype(dtype)
        if x.nbytes % dt.itemsize:
            raise ConfigError(f"{what} holds {x.nbytes} bytes, not a whole number of {dt} elements")
        return x.address, x.nbytes // dt.itemsize, dt, x
    raise ConfigError(f"{what} must be a numpy array or a tfyarn Buffer, got {type(x).__name__}")


def _buffer_dtype(x: Any, dtype: Any) -> Any:
    """The dtype to assume for ``x`` when it is a Buffer (arrays carry their own)."""
    return dtype if isinstance(x, _native.Buffer) else None


def _same(
    name: str, a: tuple[int, int, np.dtype, Any], b: tuple[int, int, np.dtype, Any], what_b: str
) -> None:
    if a[2] != b[2]:
        raise ConfigError(f"{name}: {what_b} has dtype {b[2]}, expected {a[2]}")
    if a[1] != b[1]:
        raise ConfigError(f"{name}: {what_b} has {b[1]} elements, expected {a[1]}")


def add_(dst: Any, src: Any, dtype: Any = None) -> None:
    """``dst += src`` in place (float32, float16 or bfloat16; halves accumulate in float32).

    Parameters
    ----------
    dst, src : numpy.ndarray or Buffer
        C-contiguous operands with the same dtype and element count (shapes may differ).
    dtype : dtype-like, optional
        Element type; required when an operand is a :class:`Buffer`.
    """
    d = _operand(dst, dtype, "dst", True)
    s = _operand(src, dtype if dtype is not None else _buffer_dtype(src, d[2]), "src", False)
    _same("add_", d, s, "src")
    _native.add(d[0], s[0], d[1], _kernel_code(d[2]))


def scale_(dst: Any, alpha: float, dtype: Any = None) -> None:
    """``dst *= alpha`` in place (float32, float16 or bfloat16).

    Parameters
    ----------
    dst : numpy.ndarray or Buffer
        C-contiguous operand.
    alpha : float
        Scale factor (applied in float32).
    dtype : dtype-like, optional
        Element type; required when ``dst`` is a :class:`Buffer`.
    """
    d = _operand(dst, dtype, "dst", True)
    _native.scale(d[0], d[1], _kernel_code(d[2]), float(alpha))


def _half_pair(
    name: str, half: Any, full: Any, dtype: Any, half_writable: bool
) -> tuple[tuple[int, int, np.dtype, Any], tuple[int, int, np.dtype, Any], int]:
    """Check a (half, float32) operand pair of the same length; return them and the code."""
    h = _operand(half, dtype if isinstance(half, _native.Buffer) else None, "half", half_writable)
    f = _operand(full, _buffer_dtype(full, np.float32), "full", not half_writable)
    if f[2] != np.float32:
        raise ConfigError(f"{name}: the full-precision operand must be float32, got {f[2]}")
    code = _kernel_code(h[2])
    if code == _F32:
        raise ConfigError(f"{name}: the half operand must be float16 or bfloat16, got float32")
    if h[1] != f[1]:
        raise ConfigError(f"{name}: {h[1]} half elements against {f[1]} float32 elements")
    return h, f, code


def narrow_(dst: Any, src: Any, dtype: Any = None) -> None:
    """``dst = src`` rounded to a half type (nearest even; NaN stays NaN).

    Parameters
    ----------
    dst : numpy.ndarray or Buffer
        float16 or bfloat16, written.
    src : numpy.ndarray or Buffer
        float32, same element count.
    dtype : dtype-like, optional
        The half type; required when ``dst`` is a :class:`Buffer`.
    """
    h, f, code = _half_pair("narrow_", dst, src, dtype, True)
    _native.narrow(h[0], f[0], h[1], code)


def widen_(dst: Any, src: Any, accumulate: bool = False, dtype: Any = None) -> None:
    """``dst = src`` (or ``dst += src`` with ``accumulate``), a half type widened to float32.

    Accumulation adds in float32: a reduction over many ranks loses nothing to half
    precision beyond the rounding of each rank's own contribution.

    Parameters
    ----------
    dst : numpy.ndarray or Buffer
        float32, written (or added to).
    src : numpy.ndarray or Buffer
        float16 or bfloat16, same element count.
    accumulate : bool
        Add to ``dst`` instead of overwriting it.
    dtype : dtype-like, optional
        The half type; required when ``src`` is a :class:`Buffer`.
    """
    h, f, code = _half_pair("widen_", src, dst, dtype, False)
    _native.widen(f[0], h[0], h[1], code, bool(accumulate))


def _f32_operands(name: str, **arrays: Any) -> list[tuple[int, int, np.dtype, Any]]:
    out = []
    for what, arr in arrays.items():
        op = _operand(arr, _buffer_dtype(arr, np.float32), what, what != "grad")
        if op[2] != np.float32:
            raise ConfigError(f"{name}: {what} must be float32, got {op[2]}")
        out.append(op)
    first_name = next(iter(arrays))
    for (what, _), op in zip(list(arrays.items())[1:], out[1:], strict=True):
        if op[1] != out[0][1]:
            raise ConfigError(f"{name}: {what} has {op[1]} elements, {first_name} has {out[0][1]}")
    return out


def sgd_(param: Any, grad: Any, lr: float) -> None:
    """Plain SGD in place: ``param -= lr * grad`` (float32).

    Parameters
    ----------
    param : numpy.ndarray or Buffer
        Parameters, updated in place.
    grad : numpy.ndarray or Buffer
        Gradient, same element count.
    lr : float
        Learning rate.
    """
    p, g = _f32_operands("sgd_", param=param, grad=grad)
    _native.sgd(p[0], g[0], p[1], float(lr))


def momentum_(
    param: Any, grad: Any, velocity: Any, lr: float, momentum: float, nesterov: bool = False
) -> None:
    """SGD with momentum in place, as ``keras.optimizers.SGD`` (float32).

    ``velocity = momentum * velocity - lr * grad``; then ``param += velocity``, or with
    ``nesterov`` ``param += momentum * velocity - lr * grad``.

    Parameters
    ----------
    param, velocity : numpy.ndarray or Buffer
        Parameters and their velocity slot, updated in place.
    grad : numpy.ndarray or Buffer
        Gradient, same element count.
    lr, momentum : float
        Learning rate and momentum factor.
    nesterov : bool
        Use Nesterov momentum.
    """
    p, g, v = _f32_operands("momentum_", param=param, grad=grad, velocity=velocity)
    _native.momentum(p[0], g[0], v[0], p[1], float(lr), float(momentum), bool(nesterov))


def adam_(
    param: Any,
    grad: Any,
    m: Any,
    v: Any,
    lr: float,
    beta1: float,
    beta2: float,
    eps: float,
    step: int,
) -> None:
    """Adam in place, as ``keras.optimizers.Adam`` (float32).

    ``step`` counts updates from 1 (Keras' ``iterations + 1``): the bias-corrected rate is
    ``lr * sqrt(1 - beta2**step) / (1 - beta1**step)``; ``m`` and ``v`` are the first and
    second moment slots, updated in place.

    Parameters
    ----------
    param, m, v : numpy.ndarray or Buffer
        Parameters and moment slots, updated in place.
    grad : numpy.ndarray or Buffer
        Gradient, same element count.
    lr, beta1, beta2, eps : float
        Keras' ``learning_rate``, ``beta_1``, ``beta_2``, ``epsilon``.
    step : int
        Number of this update, from 1.
    """
    if int(step) < 1:
        raise ConfigError(f"adam_: step counts updates from 1, got {step}")
    p, g, m_, v_ = _f32_operands("adam_", param=param, grad=grad, m=m, v=v)
    _native.adam(
        p[0],
        g[0],
        m_[0],
        v_[0],
        p[1],
        float(lr),
        float(beta1),
        float(beta2),
        float(eps),
        int(step),
    )


def adagrad_(param: Any, grad: Any, accum: Any, lr: float, eps: float) -> None:
    """Adagrad in place, as ``keras.optimizers.Adagrad`` (float32).

    ``accum += grad**2``; ``param -= lr * grad / sqrt(accum + eps)``.

    Parameters
    ----------
    param, accum : numpy.ndarray or Buffer
        Parameters and the accumulator slot (Keras initialises it to
        ``initial_accumulator_value``), updated in place.
    grad : numpy.ndarray or Buffer
        Gradient, same element count.
    lr, eps : float
        Learning rate and epsilon.
    """
    p, g, a = _f32_operands("adagrad_", param=param, grad=grad, accum=accum)
    _native.adagrad(p[0], g[0], a[0], p[1], float(lr), float(eps))
