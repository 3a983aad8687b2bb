"""Worker data under ParameterServerStrategy.

With ``ClusterCoordinator.create_per_worker_dataset`` the chief traces one dataset function
that then runs inside every worker's TensorFlow runtime, so it cannot close over a
worker's Python data. Each worker therefore saves its shard as a tf.data snapshot under
the *relative* path :data:`SHARD_DIR` of its own working directory before its server
starts; the traced function loads that relative path, which each worker resolves
against its own working directory.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import tensorflow as tf

__all__ = ["SHARD_DIR", "element_spec", "save_shard"]

#: Relative path of a worker's shard snapshot inside its working directory.
SHARD_DIR = "tfyarn-shard"


def element_spec(spec: Mapping[str, list[Any]]) -> dict[str, tf.TensorSpec]:
    """TensorSpecs of one row, from :func:`tfyarn.node.feed.data_spec` output."""
    import tensorflow as tf

    return {
        name: tf.TensorSpec(shape=tuple(shape), dtype=tf.as_dtype(np.dtype(dtype)))
        for name, (dtype, shape) in spec.items()
    }


def save_shard(columns: Mapping[str, np.ndarray], workdir: Path) -> Path:
    """Save a worker's columns as the snapshot its per-worker dataset loads."""
    import tensorflow as tf

    target = workdir / SHARD_DIR
    tf.data.Dataset.from_tensor_slices(dict(columns)).save(str(target))
    return target
