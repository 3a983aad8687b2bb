"""``horovod.tensorflow.keras.callbacks``: those of :mod:`tfyarn.horovod.keras.callbacks`."""

from __future__ import annotations

from tfyarn.horovod.keras.callbacks import (
    BroadcastGlobalVariablesCallback,
    LearningRateScheduleCallback,
    LearningRateWarmupCallback,
    MetricAverageCallback,
)

__all__ = [
    "BroadcastGlobalVariablesCallback",
    "LearningRateScheduleCallback",
    "LearningRateWarmupCallback",
    "MetricAverageCallback",
]
