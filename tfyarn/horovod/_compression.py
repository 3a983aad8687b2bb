"""Horovod's gradient compression: ``hvd.Compression.none`` and ``hvd.Compression.fp16``.

Compressors work on TensorFlow tensors, before the exchange and after it;
:class:`FP16Compressor` imports TensorFlow only when it casts, so importing this module
stays cheap.
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "Compression",
    "Compressor",
    "FP16Compressor",
    "NoneCompressor",
]


class Compressor:
    """Horovod's compressor interface: ``compress`` before the exchange, ``decompress`` after.

    Both work on TensorFlow tensors (as TensorFlow ops); a subclass may define its own.
    """

    @staticmethod
    def compress(tensor: Any) -> tuple[Any, Any]:
        """Return the tensor to exchange and what :meth:`decompress` needs."""
        return tensor, None

    @staticmethod
    def decompress(tensor: Any, ctx: Any) -> Any:
        """Undo :meth:`compress` on the exchanged tensor."""
        return tensor


class NoneCompressor(Compressor):
    """Exchange tensors as they are."""


class FP16Compressor(Compressor):
    """Exchange floating-point tensors as float16 (half the bytes), cast back after."""

    @staticmethod
    def compress(tensor: Any) -> tuple[Any, Any]:
        """Cast a floating tensor to float16; keep its dtype to cast back."""
        import tensorflow as tf

        dtype = tensor.dtype
        if dtype.is_floating and dtype != tf.float16:
            return tf.cast(tensor, tf.float16), dtype
        return tensor, None

    @staticmethod
    def decompress(tensor: Any, ctx: Any) -> Any:
        """Cast back to the dtype :meth:`compress` kept."""
        import tensorflow as tf

        return tensor if ctx is None else tf.cast(tensor, ctx)


class Compression:
    """``hvd.Compression.none`` and ``hvd.Compression.fp16``."""

    none: type[Compressor] = NoneCompressor
    fp16: type[Compressor] = FP16Compressor
