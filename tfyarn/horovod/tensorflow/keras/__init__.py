"""``import tfyarn.horovod.tensorflow.keras as hvd``: the same module as
:mod:`tfyarn.horovod.keras` (Horovod's ``horovod.tensorflow.keras`` and ``horovod.keras``
differ only in which Keras they import; Keras 3 is the one)."""

from __future__ import annotations

from typing import Any

from tfyarn.horovod._api import UNSUPPORTED
from tfyarn.horovod._checks import unsupported_attribute
from tfyarn.horovod.keras import *  # noqa: F403 - the whole Keras API, listed in __all__
from tfyarn.horovod.keras import __all__ as _KERAS_ALL

__all__ = list(_KERAS_ALL)


def __getattr__(name: str) -> Any:
    raise unsupported_attribute(__name__, name, UNSUPPORTED)
