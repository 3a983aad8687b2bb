"""A Spark ML Pipeline with a Keras model: VectorAssembler -> StandardScaler -> KerasEstimator.

``KerasEstimator.fit`` trains the Keras model across the executors (tfyarn's ring
all-reduce) and returns a ``KerasModel``, a Spark ML Transformer: the fitted pipeline
scores a DataFrame on the executors, and saves and loads like any PipelineModel.

Run it with::

    tfyarn submit --profile local-cluster --workers 2 --no-chief examples/spark_ml_pipeline.py

It prints the held-out accuracy, and where the fitted pipeline was saved.
"""

from __future__ import annotations

import argparse
import tempfile
from typing import Any

import numpy as np
import pandas as pd
from pyspark.ml import Pipeline, PipelineModel
from pyspark.ml.feature import StandardScaler, VectorAssembler
from pyspark.sql import SparkSession
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

from tfyarn.ml import KerasEstimator

PIXELS = [f"p{i}" for i in range(64)]


def build_model() -> Any:
    """An ordinary Keras model: 64 standardised pixels in, 10 class logits out."""
    import keras

    return keras.Sequential(
        [
            keras.Input(shape=(64,)),
            keras.layers.Dense(64, activation="relu"),
            keras.layers.Dense(10),
        ]
    )


def main() -> None:
    """Fit the pipeline on 80% of the digits, score the rest, save and reload it."""
    import keras

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--out", default=tempfile.mkdtemp(prefix="tfyarn-pipeline-"))
    args = parser.parse_args()

    spark = SparkSession.builder.appName("tfyarn-spark-ml-pipeline").getOrCreate()
    digits = load_digits()
    table = pd.DataFrame(digits.data, columns=PIXELS)
    table["label"] = digits.target.astype(float)
    train, test = train_test_split(table, test_size=0.2, random_state=0, stratify=table["label"])
    pipeline = Pipeline(
        stages=[
            VectorAssembler(inputCols=PIXELS, outputCol="pixels"),
            StandardScaler(inputCol="pixels", outputCol="scaled", withMean=True),
            KerasEstimator(
                model=build_model,
                optimizer=keras.optimizers.Adam(3e-3),
                loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                metrics=["accuracy"],
                featureCols=["scaled"],
                labelCol="label",
                batchSize=32,
                epochs=args.epochs,
            ),
        ]
    )
    fitted = pipeline.fit(spark.createDataFrame(train))
    scored = fitted.transform(spark.createDataFrame(test)).select("label", "prediction")
    rows = scored.toPandas()
    print(f"held-out accuracy: {np.mean(rows['label'] == rows['prediction']):.4f}")
    fitted.write().overwrite().save(args.out)
    again = PipelineModel.load(args.out).transform(spark.createDataFrame(test)).count()
    print(f"pipeline saved to {args.out} (reloaded, scored {again} rows)")
    spark.stop()


if __name__ == "__main__":
    main()
