"""Horovod's API on tfyarn: run Horovod programs with only their imports changed.

* ``import tfyarn.horovod.keras as hvd`` (or ``tfyarn.horovod.tensorflow.keras``) for
  Keras 3 programs: ``hvd.DistributedOptimizer``, ``hvd.callbacks.*``, ``hvd.load_model``;
* ``import tfyarn.horovod.tensorflow as hvd`` for TensorFlow 2 loops:
  ``hvd.DistributedGradientTape``, the collectives as TensorFlow ops;
* ``tfyarn.horovod.spark.run(fn, num_proc=N)`` launches them on Spark, one rank per
  executor, on tfyarn's launcher (``import horovod.spark`` becomes ``import
  tfyarn.horovod.spark``).

The ranks are the trainers of a ``tfyarn.run(..., strategy="allreduce")`` job; tensors
travel over tfyarn's ring all-reduce and transports. This package imports neither
TensorFlow nor Spark; ``docs/migration.md`` maps every Horovod call.
"""

from __future__ import annotations

import importlib
from types import ModuleType

from tfyarn.horovod._state import (
    init,
    is_initialized,
    local_rank,
    local_size,
    rank,
    shutdown,
    size,
)

__all__ = ["init", "is_initialized", "local_rank", "local_size", "rank", "shutdown", "size"]

_SUBMODULES = ("keras", "spark", "tensorflow")


def __getattr__(name: str) -> ModuleType:
    # ``from tfyarn import horovod`` then ``horovod.spark.run(...)``, as with Horovod's
    # ``import horovod.spark``: submodules load on first use (TensorFlow, Spark stay unloaded)
    if name in _SUBMODULES:
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
