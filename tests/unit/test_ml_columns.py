"""Column checks of tfyarn.ml from the schema alone (no Spark session), and the scored
schema (issue 15); tests/sparkml runs them on real DataFrames."""

from __future__ import annotations

import pytest
from pyspark.ml.linalg import VectorUDT
from pyspark.sql.types import (
    ArrayType,
    DoubleType,
    FloatType,
    IntegerType,
    LongType,
    StringType,
    StructField,
    StructType,
)

from tfyarn.errors import ConfigError
from tfyarn.ml.columns import check_columns

SCHEMA = StructType(
    [
        StructField("age", IntegerType()),
        StructField("income", DoubleType()),
        StructField("scaled", VectorUDT()),
        StructField("embedding", ArrayType(FloatType())),
        StructField("city", StringType()),
        StructField("tags", ArrayType(StringType())),
        StructField("label", LongType()),
    ]
)


def test_numbers_vectors_and_arrays_are_features() -> None:
    check_columns(SCHEMA, ["age", "income", "scaled", "embedding"], ["label"])
    check_columns(SCHEMA, ["scaled"], ["embedding"])  # an array label: several outputs


@pytest.mark.parametrize(
    ("features", "labels", "problem"),
    [
        ([], ["label"], "featureCols is empty"),
        (["agee"], [], r"feature column 'agee' is not in the DataFrame \(it has: age, city"),
        (["city"], [], "feature column 'city' has type string; .* StringIndexer"),
        (["tags"], [], "feature column 'tags' has type array<string>"),
        (["age"], ["scaled"], "label column 'scaled' has type vector; it must be a number"),
        (["age"], ["lable"], "label column 'lable' is not in the DataFrame"),
    ],
)
def test_bad_columns_are_named_with_what_to_do(
    features: list[str], labels: list[str], problem: str
) -> None:
    with pytest.raises(ConfigError, match=problem):
        check_columns(SCHEMA, features, labels)


def test_every_bad_column_is_named_at_once() -> None:
    with pytest.raises(ConfigError) as refused:
        check_columns(SCHEMA, ["city", "nope"], ["tags"])
    text = str(refused.value)
    assert "'city'" in text and "'nope'" in text and "'tags'" in text
