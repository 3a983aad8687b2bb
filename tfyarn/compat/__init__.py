"""Drop-in layers for programs written for other distributed-TensorFlow frameworks.

* :mod:`tfyarn.compat.tfos`: TensorFlowOnSpark (``TFCluster``, ``TFNode``,
  ``TFParallel``, ``InputMode``).
"""

from __future__ import annotations

__all__: list[str] = []
