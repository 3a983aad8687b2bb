"""RDD elements <-> DataFrame columns, for feeding TensorFlowOnSpark-style RDDs (pure).

A TensorFlowOnSpark program feeds an RDD whose elements are plain Python values: tuples or
lists of fields (``(features, label)``), NumPy arrays, numbers or strings, and reads them
back in ``DataFeed.next_batch`` exactly as they were. tfyarn's feed moves Spark
DataFrames as Arrow columns, so each element is taken apart into one column per field on
the driver's side (:func:`to_columns`, under the :class:`RowLayout` found from the first
element) and put back together in the role (:meth:`RowLayout.element`).

Supported fields: ``int``, ``float``, ``bool``, ``str``, ``bytes``, NumPy scalars, NumPy
arrays of numbers (any fixed shape; stored flat) and (nested) lists of numbers of one
fixed shape. Anything else, ``None`` included, is refused with what to do.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from tfyarn.errors import ConfigError

if TYPE_CHECKING:
    from pyspark.sql.types import DataType, StructType

__all__ = ["FieldLayout", "RowLayout", "column_name", "layout_of", "to_columns"]

#: Extra columns of an inference feed: the element's input partition and its place in it,
#: so that the results come back in the input's order and partitions.
PARTITION_COLUMN = "_tfos_partition"
POSITION_COLUMN = "_tfos_position"

# Field kinds: how a field is stored, and how it is given back.
_SCALARS = {bool: "bool", int: "int", float: "float", str: "str", bytes: "bytes"}


@dataclass(frozen=True)
class FieldLayout:
    """How one field of an element is stored in its column and given back.

    Attributes
    ----------
    kind : str
        ``"bool"``, ``"int"``, ``"float"``, ``"str"``, ``"bytes"`` (Python values),
        ``"npscalar"`` (a NumPy scalar), ``"array"`` (a NumPy array) or ``"list"`` (a
        nested list of numbers).
    dtype : str
        NumPy dtype of ``npscalar``/``array``/``list`` fields (``""`` otherwise).
    shape : tuple of int
        Shape of an ``array``/``list`` field (stored flat, reshaped when read).
    """

    kind: str
    dtype: str = ""
    shape: tuple[int, ...] = ()

    def spark_type(self) -> DataType:
        """The Spark SQL type of the field's column."""
        from pyspark.sql import types as T

        simple: dict[str, DataType] = {
            "bool": T.BooleanType(),
            "int": T.LongType(),
            "float": T.DoubleType(),
            "str": T.StringType(),
            "bytes": T.BinaryType(),
        }
        if self.kind in simple:
            return simple[self.kind]
        element = _numeric_spark_type(np.dtype(self.dtype))
        return element if self.kind == "npscalar" else T.ArrayType(element, containsNull=False)

    def to_column(self, value: Any, where: str) -> Any:
        """``value`` as its column holds it (a Python scalar or a flat list)."""
        if self.kind in ("array", "list"):
            array = np.asarray(value)
            if array.shape != self.shape or array.dtype.kind not in "biuf":
                raise ConfigError(
                    f"{where} is an array of shape {array.shape} ({array.dtype}), but the RDD's "
                    f"first element had shape {self.shape} ({self.dtype}) there: every element "
                    "must have the same shape; pad or reshape them in Spark first"
                )
            return array.astype(self.dtype, copy=False).ravel().tolist()
        if value is None:
            raise ConfigError(f"{where} is None; fill or drop missing values in Spark first")
        if self.kind == "npscalar":
            return np.asarray(value).astype(self.dtype).item()
        if self.kind == "float":
            return float(value)
        if self.kind == "int":
            return int(value)
        return value

    def from_column(self, value: Any) -> Any:
        """The field as the element had it, from its column's value."""
        if self.kind == "array":
            return np.array(value, dtype=self.dtype).reshape(self.shape)
        if self.kind == "list":
            return np.asarray(value, dtype=self.dtype).reshape(self.shape).tolist()
        if self.kind == "npscalar":
            return np.dtype(self.dtype).type(value)
        if self.kind in ("bool", "int", "float"):
            return value.item() if isinstance(value, np.generic) else value
        return value


@dataclass(frozen=True)
class RowLayout:
    """How an RDD's elements are taken apart into columns.

    Attributes
    ----------
    container : str
        ``"tuple"`` or ``"list"`` (an element of several fields) or ``"single"`` (the
        element is one field: an array, a number, a string).
    fields : tuple of FieldLayout
        One per column, in order.
    """

    container: str
    fields: tuple[FieldLayout, ...]

    @property
    def columns(self) -> list[str]:
        """The column names, ``c0``, ``c1``, ..."""
        return [column_name(i) for i in range(len(self.fields))]

    def schema(self, with_position: bool = False) -> StructType:
        """The DataFrame schema of the columns (plus the inference position columns)."""
        from pyspark.sql import types as T

        cols = [
            T.StructField(name, f.spark_type(), nullable=False)
            for name, f in zip(self.columns, self.fields, strict=True)
        ]
        if with_position:
            cols += [
                T.StructField(PARTITION_COLUMN, T.LongType(), nullable=False),
                T.StructField(POSITION_COLUMN, T.LongType(), nullable=False),
            ]
        return T.StructType(cols)

    def element(self, values: Sequence[Any]) -> Any:
        """The element rebuilt from its column values (in column order)."""
        fields = [f.from_column(v) for f, v in zip(self.fields, values, strict=True)]
        if self.container == "single":
            return fields[0]
        return tuple(fields) if self.container == "tuple" else fields


def column_name(i: int) -> str:
    """The name of the column of field ``i``."""
    return f"c{i}"


def _field_layout(value: Any, where: str) -> FieldLayout:
    """The layout of one field, from its value in the first element."""
    if isinstance(value, np.ndarray | list | tuple):
        array = np.asarray(value)
        if array.dtype.kind not in "biuf" or array.ndim == 0:
            raise ConfigError(
                f"{where} is a {type(value).__name__} of {array.dtype} values; tfyarn feeds "
                "arrays of numbers only: convert the field to numbers (or to a string) first"
            )
        kind = "array" if isinstance(value, np.ndarray) else "list"
        return FieldLayout(kind, array.dtype.str, tuple(int(n) for n in array.shape))
    if isinstance(value, np.generic):
        if np.asarray(value).dtype.kind not in "biuf":
            raise ConfigError(f"{where} is a NumPy {value.dtype} scalar; use a number instead")
        return FieldLayout("npscalar", np.asarray(value).dtype.str)
    for python_type, kind in _SCALARS.items():
        if type(value) is python_type:
            return FieldLayout(kind)
    raise ConfigError(
        f"{where} is a {type(value).__name__}, which tfyarn cannot feed; RDD elements may "
        "hold numbers, strings, bytes, NumPy arrays and lists of numbers"
    )


def layout_of(first: Any) -> RowLayout:
    """The :class:`RowLayout` of an RDD, from its first element.

    A tuple (a ``pyspark.sql.Row`` too) or a list whose items are not all plain numbers
    is an element of several fields; a list of plain numbers is one array field (the
    element as TensorFlowOnSpark's examples feed CSV lines parsed into lists is read back
    as a list, either way).
    """
    if isinstance(first, tuple):
        container = "tuple"
    elif isinstance(first, list) and not all(_is_number(v) for v in first):
        container = "list"
    else:
        return RowLayout("single", (_field_layout(first, "the RDD's element"),))
    if not first:
        raise ConfigError("the RDD's first element is empty; nothing can be fed from it")
    fields = tuple(_field_layout(v, f"field {i} of the RDD's element") for i, v in enumerate(first))
    return RowLayout(container, fields)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float | np.number) and not isinstance(value, bool)


def to_columns(layout: RowLayout, element: Any) -> tuple[Any, ...]:
    """``element`` as one value per column (what ``spark.createDataFrame`` takes)."""
    if layout.container == "single":
        return (layout.fields[0].to_column(element, "an RDD element"),)
    if not isinstance(element, tuple | list) or len(element) != len(layout.fields):
        raise ConfigError(
            f"an RDD element has {_describe(element)}, but the first element had "
            f"{len(layout.fields)} fields: every element must have the same fields"
        )
    return tuple(
        f.to_column(v, f"field {i} of an RDD element")
        for i, (f, v) in enumerate(zip(layout.fields, element, strict=True))
    )


def _describe(element: Any) -> str:
    if isinstance(element, tuple | list):
        return f"{len(element)} fields"
    return f"one {type(element).__name__}"


def _numeric_spark_type(dtype: np.dtype[Any]) -> DataType:
    """The Spark type that holds ``dtype``'s values without loss."""
    from pyspark.sql import types as T

    if dtype.kind == "b":
        return T.BooleanType()
    if dtype.kind == "f":
        return T.FloatType() if dtype.itemsize <= 4 else T.DoubleType()
    # Spark's integer types are signed: an unsigned type needs the next wider one.
    size = dtype.itemsize * (2 if dtype.kind == "u" else 1)
    if size <= 1:
        return T.ByteType()
    if size <= 2:
        return T.ShortType()
    return T.IntegerType() if size <= 4 else T.LongType()
