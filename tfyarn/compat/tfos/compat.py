"""TensorFlowOnSpark's ``compat`` helpers (TensorFlow version differences)."""

from __future__ import annotations

from typing import Any

from tfyarn.compat.tfos.node import export_saved_model

__all__ = ["disable_auto_shard", "export_saved_model", "is_gpu_available"]


def disable_auto_shard(options: Any) -> None:
    """Turn TensorFlow's auto-sharding off in ``tf.data.Options`` (the data is sharded)."""
    import tensorflow as tf

    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.OFF


def is_gpu_available() -> bool:
    """Whether TensorFlow sees a GPU."""
    import tensorflow as tf

    return bool(tf.config.list_physical_devices("GPU"))
