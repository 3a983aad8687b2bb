"""Feature and label columns as Spark users hold them, checked and made into one array.

Spark ML keeps features as numeric columns, ``pyspark.ml.linalg`` vectors (a
``VectorAssembler``'s output) or arrays of numbers. :func:`check_columns` refuses a
missing column or one of another type from the schema alone (nothing runs), naming the
column, its type and what to do. :func:`assemble` turns the feature columns into one
``array<float>`` column (vectors through ``vector_to_array``), in the order given: what
tfyarn's Arrow feed and a model's one input take; :func:`assemble_inputs` makes one such
column per feature column, for a functional model with as many inputs. Labels are copied
under names of tfyarn's own (:func:`label_columns`): one column, or one per output of a
model with several. (Sparse vectors into a sparse input: :mod:`tfyarn.ml.sparse`.)
:func:`find_bad_values` then counts nulls and NaNs per column in one Spark job, so that
bad rows are named before any tfyarn role starts.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from tfyarn.errors import ConfigError

if TYPE_CHECKING:
    from pyspark.sql import Column, DataFrame
    from pyspark.sql.types import DataType, StructType

__all__ = [
    "FEATURES",
    "INPUT",
    "LABEL",
    "LABELS",
    "assemble",
    "assemble_inputs",
    "check_columns",
    "column_kind",
    "features_column",
    "find_bad_values",
    "input_columns",
    "inputs_column",
    "label_columns",
    "with_labels",
]

#: Names of the columns :func:`assemble` adds (unlikely to clash with a user's).
FEATURES = "__tfyarn_features"
LABEL = "__tfyarn_label"
#: Prefix of the columns :func:`assemble_inputs` adds, one per input of the model.
INPUT = "__tfyarn_input_"
#: Prefix of the label columns of a model with several outputs (:func:`label_columns`).
LABELS = "__tfyarn_label_"


def column_kind(data_type: DataType) -> str | None:
    """``"number"``, ``"vector"``, ``"array"`` or None (a type tfyarn cannot feed)."""
    from pyspark.ml.linalg import VectorUDT
    from pyspark.sql.types import ArrayType, BooleanType, NumericType

    if isinstance(data_type, VectorUDT):
        return "vector"
    if isinstance(data_type, NumericType | BooleanType):
        return "number"
    if isinstance(data_type, ArrayType) and isinstance(data_type.elementType, NumericType):
        return "array"
    return None


def check_columns(schema: StructType, features: Sequence[str], labels: Sequence[str] = ()) -> None:
    """Refuse missing columns and columns of types that cannot be features or labels.

    Raises
    ------
    ConfigError
        Naming every bad column: missing (with the columns there are), or of another
        type (with its type and a way to convert it).
    """
    if not features:
        raise ConfigError("featureCols is empty: name the columns the model takes")
    fields = {f.name: f.dataType for f in schema.fields}
    problems = []
    for role, names in (("feature", features), ("label", labels)):
        for name in names:
            if name not in fields:
                problems.append(
                    f"{role} column {name!r} is not in the DataFrame (it has: "
                    f"{', '.join(sorted(fields))})"
                )
                continue
            kind = column_kind(fields[name])
            if kind is None or (role == "label" and kind == "vector"):
                allowed = "a number or an array of numbers"
                if role == "feature":
                    allowed = "a number, an ml.linalg Vector or an array of numbers"
                problems.append(
                    f"{role} column {name!r} has type {fields[name].simpleString()}; it must "
                    f"be {allowed} (index strings with StringIndexer, assemble columns with "
                    "VectorAssembler)"
                )
    if problems:
        raise ConfigError("; ".join(problems))


def _as_array(name: str, data_type: DataType) -> Column:
    from pyspark.ml.functions import vector_to_array
    from pyspark.sql import functions as F

    kind = column_kind(data_type)
    if kind == "vector":
        return vector_to_array(F.col(name), "float32")
    if kind == "array":
        return F.col(name).cast("array<float>")
    return F.array(F.col(name).cast("float"))


def features_column(df: DataFrame, features: Sequence[str]) -> Column:
    """The feature columns of ``df`` as one ``array<float>`` expression, in order."""
    from pyspark.sql import functions as F

    fields = {f.name: f.dataType for f in df.schema.fields}
    parts = [_as_array(name, fields[name]) for name in features]
    return parts[0] if len(parts) == 1 else F.concat(*parts)


def label_columns(count: int) -> tuple[str, ...]:
    """The names :func:`with_labels` gives ``count`` label columns.

    :data:`LABEL` for one (a model with one output); ``__tfyarn_label_<i>`` for several,
    one per output of the model, in its output order.
    """
    if count < 1:
        raise ConfigError(f"a model takes at least one label column, not {count}")
    return (LABEL,) if count == 1 else tuple(f"{LABELS}{i}" for i in range(count))


def _label_list(labels: str | Sequence[str]) -> list[str]:
    return [labels] if isinstance(labels, str) else list(labels)


def with_labels(df: DataFrame, labels: str | Sequence[str]) -> DataFrame:
    """``df`` with its label column(s) copied under :func:`label_columns`' names, in order."""
    from pyspark.sql import functions as F

    names = _label_list(labels)
    out = df
    for name, column in zip(names, label_columns(len(names)), strict=True):
        out = out.withColumn(column, F.col(name))
    return out


def assemble(
    df: DataFrame, features: Sequence[str], label: str | Sequence[str] | None = None
) -> DataFrame:
    """``df`` with :data:`FEATURES` (``array<float>``) and, given labels, their copies
    (:func:`with_labels`: :data:`LABEL` for one label column)."""
    out = df.withColumn(FEATURES, features_column(df, features))
    return out if label is None else with_labels(out, label)


def input_columns(count: int) -> tuple[str, ...]:
    """The names :func:`assemble_inputs` gives the inputs of a model with ``count`` inputs."""
    return tuple(f"{INPUT}{i}" for i in range(count))


def inputs_column(df: DataFrame, features: Sequence[str]) -> Column:
    """The feature columns as one struct of ``array<float>`` fields, one per model input.

    What a model with several inputs is scored on: one column to the Arrow UDF, whose
    fields are the inputs in order.
    """
    from pyspark.sql import functions as F

    fields = {f.name: f.dataType for f in df.schema.fields}
    names = input_columns(len(features))
    return F.struct(
        *[_as_array(n, fields[n]).alias(c) for n, c in zip(features, names, strict=True)]
    )


def assemble_inputs(
    df: DataFrame, features: Sequence[str], label: str | Sequence[str]
) -> DataFrame:
    """``df`` with one ``array<float>`` column per feature column (:func:`input_columns`,
    for a model with as many inputs, in order) and the label column(s)
    (:func:`with_labels`)."""
    fields = {f.name: f.dataType for f in df.schema.fields}
    out = df
    for name, column in zip(features, input_columns(len(features)), strict=True):
        out = out.withColumn(column, _as_array(name, fields[name]))
    return with_labels(out, label)


def find_bad_values(df: DataFrame, columns: Sequence[str]) -> None:
    """Refuse nulls and NaNs in ``columns`` (one Spark job over the data).

    Raises
    ------
    ConfigError
        Naming each column with nulls or NaNs and how many rows have them.
    """
    from pyspark.sql import functions as F

    fields = {f.name: f.dataType for f in df.schema.fields}
    checks = []
    for name in columns:
        values = _as_array(name, fields[name])
        bad = F.col(name).isNull() | F.exists(values, lambda v: v.isNull() | F.isnan(v))
        checks.append(F.sum(F.when(bad, 1).otherwise(0)).alias(name))
    counts = df.agg(*checks).first()
    found = {name: int(counts[name] or 0) for name in columns} if counts is not None else {}
    bad_columns = {name: n for name, n in found.items() if n}
    if bad_columns:
        listed = ", ".join(f"{name!r} ({n} rows)" for name, n in bad_columns.items())
        raise ConfigError(
            f"null or NaN values in {listed}: drop or fill them in Spark first "
            "(df.na.drop(subset=...), Imputer) so that no role trains on them"
        )
