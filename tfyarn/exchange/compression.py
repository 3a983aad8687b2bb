"""Gradient compression of the ring all-reduce: which half type travels on the wire.

``compression="fp16"`` or ``"bf16"`` halves the bytes a synchronous all-reduce sends:
float32 buffers travel as float16 or bfloat16, while every sum is kept in float32 (the
ring widens each received partial sum and adds it; see
:meth:`~tfyarn.exchange.ring.Ring.allreduce_`). float16 keeps 11 significant bits
but overflows above 65504; bfloat16 keeps float32's range with 8 significant bits.

``compression="topk"`` sparsifies instead: each rank sends the largest ``density`` share
of its gradient and keeps the rest for later steps (:mod:`tfyarn.exchange.topk`).
"""

from __future__ import annotations

import ml_dtypes
import numpy as np

from tfyarn.errors import ConfigError

__all__ = ["COMPRESSIONS", "HALF_TYPES", "TOPK", "wire_dtype"]

#: The wire type of each half-type ``compression``.
HALF_TYPES: dict[str, np.dtype] = {
    "fp16": np.dtype(np.float16),
    "bf16": np.dtype(ml_dtypes.bfloat16),
}

#: Sparsified with error feedback (:mod:`tfyarn.exchange.topk`).
TOPK = "topk"

#: Every ``compression`` option.
COMPRESSIONS: tuple[str, ...] = ("none", *HALF_TYPES, TOPK)


def wire_dtype(compression: object) -> np.dtype | None:
    """The half type float32 gradients travel as under ``compression`` (None: float32).

    Raises
    ------
    ConfigError
        An unknown name, listing the known ones.
    """
    if not isinstance(compression, str) or compression not in COMPRESSIONS:
        raise ConfigError(
            f"unknown compression {compression!r}; use one of {', '.join(COMPRESSIONS)}"
        )
    return HALF_TYPES.get(compression)
