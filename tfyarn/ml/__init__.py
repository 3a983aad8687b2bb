"""Spark ML integration: :class:`KerasEstimator` / :class:`KerasModel`, and :func:`inference`.

``KerasEstimator(...).fit(df)`` trains a Keras model across the executors through
:func:`tfyarn.run` and returns a :class:`KerasModel`, a Spark ML Transformer that scores
DataFrames on the executors and saves/loads like any Spark ML model. :func:`inference`
scores a DataFrame with any saved ``.keras`` model without the ML API.
"""

from __future__ import annotations

from tfyarn.ml.estimator import KerasEstimator, KerasModel
from tfyarn.ml.inference import inference

__all__ = ["KerasEstimator", "KerasModel", "inference"]
