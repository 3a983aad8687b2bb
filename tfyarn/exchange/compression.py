"""Gradient compression of the ring all-reduce: which half type travels on the wire.

``compression="fp16"`` or ``"bf16"`` halves the bytes a synchronous all-reduce sends:
float32 buffers travel as float16 or bfloat16, while every sum is kept in float32 (the
ring widens each received partial sum and adds it; see
:meth:`~tfyarn.exchange.ring.Ring.allreduce_`). float16 keeps 11 significant bits
but overflows above 65504; bfloat16 keeps float32's range with 8 significant bits.
"""

from __future__ import annotations

import ml_dtypes
import numpy as np

from tfyarn.errors import ConfigError

__all__ = ["COMPRESSIONS", "wire_dtype"]

#: The wire type of each ``compression`` option (None: float32 as it is).
COMPRESSIONS: dict[str, np.dtype | None] = {
    "none": None,
    "fp16": np.dtype(np.float16),
    "bf16": np.dtype(ml_dtypes.bfloat16),
}


def wire_dtype(compression: object) -> np.dtype | None:
    """The half type float32 gradients travel as under ``compression``.

    Raises
    ------
    ConfigError
        An unknown name, listing the known ones.
    """
    if not isinstance(compression, str) or compression not in COMPRESSIONS:
        raise ConfigError(
            f"unknown compression {compression!r}; use one of {', '.join(COMPRESSIONS)}"
        )
    return COMPRESSIONS[compression]
