"""Column types: MaxCompute type names, their Arrow counterparts, and checked value conversion.

Every backend speaks Arrow internally (Parquet natively, the warehouse through pyarrow's CSV reader,
MaxCompute through the tunnel's Arrow format), so a column's type is one MaxCompute type name plus
the Arrow type it maps to. Writes are validated by converting each column's Python values to Arrow
*before* anything is written: a string in a BIGINT column, a fraction in an INT column or an
out-of-range integer is a :class:`~aimaster.errors.SchemaError` naming the column and the table.
"""

from __future__ import annotations

import datetime
import decimal
from dataclasses import dataclass
from typing import Any, Iterable, List, Sequence, Tuple, Union

import pyarrow as pa

from aimaster.errors import SchemaError

#: Scalar types every backend reads and writes.
WRITABLE_TYPES = ("BIGINT", "INT", "SMALLINT", "TINYINT", "DOUBLE", "FLOAT", "STRING", "BINARY",
                  "BOOLEAN", "DATETIME", "DATE")

_ARROW_OF = {
    "BIGINT": pa.int64(),
    "INT": pa.int32(),
    "SMALLINT": pa.int16(),
    "TINYINT": pa.int8(),
    "DOUBLE": pa.float64(),
    "FLOAT": pa.float32(),
    "STRING": pa.string(),
    "BINARY": pa.binary(),
    "BOOLEAN": pa.bool_(),
    # Microseconds: what a Python datetime holds. MaxCompute keeps milliseconds; its backend truncates.
    "DATETIME": pa.timestamp("us"),
    "DATE": pa.date32(),
}

_INTEGER = {"BIGINT", "INT", "SMALLINT", "TINYINT"}
_FLOATING = {"DOUBLE", "FLOAT"}


@dataclass(frozen=True)
class Column:
    """A column: its name and its MaxCompute type name (``BIGINT``, ``STRING``, ...)."""

    name: str
    type: str

    def __post_init__(self) -> None:
        object.__setattr__(self, "type", str(self.type).strip().upper())

    def __str__(self) -> str:
        return f"{self.name}:{self.type}"


ColumnsLike = Union[str, Sequence[Union[Column, Tuple[str, str]]]]


def parse_columns(spec: ColumnsLike, what: str = "columns") -> List[Column]:
    """Columns from ``"a:BIGINT,b:STRING"``, ``[("a", "BIGINT"), ...]`` or ``[Column, ...]``."""
    if isinstance(spec, str):
        items: List[Any] = [p.strip() for p in spec.split(",") if p.strip()]
    else:
        items = list(spec)
    out = []
    for item in items:
        if isinstance(item, Column):
            out.append(item)
        elif isinstance(item, str):
            name, sep, typ = item.partition(":")
            if not sep or not name.strip() or not typ.strip():
                raise SchemaError(f"bad column {item!r} in {what}: expected name:TYPE")
            out.append(Column(name.strip(), typ.strip()))
        else:
            name, typ = item
            out.append(Column(str(name), str(typ)))
    names = [c.name for c in out]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise SchemaError(f"duplicate column {dupes[0]!r} in {what}")
    return out


def format_columns(columns: Iterable[Column]) -> str:
    return ",".join(str(c) for c in columns)


def arrow_type(column: Column, table: str = "") -> pa.DataType:
    """The Arrow type values of ``column`` are converted to; SchemaError for types we cannot write."""
    try:
        return _ARROW_OF[column.type]
    except KeyError:
        where = f" of {table}" if table else ""
        raise SchemaError(
            f"column {column.name}{where} has type {column.type}, which aimaster cannot write "
            f"(supported: {', '.join(WRITABLE_TYPES)})"
        )


def type_name_of(arrow: pa.DataType) -> str:
    """The MaxCompute type name for an Arrow type (nested and unusual types get descriptive names)."""
    if pa.types.is_int64(arrow) or pa.types.is_uint32(arrow) or pa.types.is_uint64(arrow):
        return "BIGINT"
    if pa.types.is_int32(arrow) or pa.types.is_uint16(arrow):
        return "INT"
    if pa.types.is_int16(arrow) or pa.types.is_uint8(arrow):
        return "SMALLINT"
    if pa.types.is_int8(arrow):
        return "TINYINT"
    if pa.types.is_float64(arrow):
        return "DOUBLE"
    if pa.types.is_float32(arrow) or pa.types.is_float16(arrow):
        return "FLOAT"
    if pa.types.is_string(arrow) or pa.types.is_large_string(arrow):
        return "STRING"
    if pa.types.is_binary(arrow) or pa.types.is_large_binary(arrow) or pa.types.is_fixed_size_binary(arrow):
        return "BINARY"
    if pa.types.is_boolean(arrow):
        return "BOOLEAN"
    if pa.types.is_timestamp(arrow):
        return "DATETIME"
    if pa.types.is_date(arrow):
        return "DATE"
    if pa.types.is_dictionary(arrow):
        return type_name_of(arrow.value_type)
    if pa.types.is_decimal(arrow):
        return f"DECIMAL({arrow.precision},{arrow.scale})"
    if pa.types.is_list(arrow) or pa.types.is_large_list(arrow) or pa.types.is_fixed_size_list(arrow):
        return f"ARRAY<{type_name_of(arrow.value_type)}>"
    if pa.types.is_map(arrow):
        return f"MAP<{type_name_of(arrow.key_type)},{type_name_of(arrow.item_type)}>"
    if pa.types.is_struct(arrow):
        fields = ",".join(f"{f.name}:{type_name_of(f.type)}" for f in arrow)
        return f"STRUCT<{fields}>"
    return str(arrow).upper()


def python_type_of(type_name: str) -> type:
    """The Python type values of a column come back as (``bytes`` for STRING in common_io)."""
    if type_name in _INTEGER:
        return int
    if type_name in _FLOATING:
        return float
    if type_name == "BOOLEAN":
        return bool
    if type_name == "DATETIME":
        return datetime.datetime
    if type_name == "DATE":
        return datetime.date
    if type_name == "BINARY":
        return bytes
    if type_name.startswith("DECIMAL"):
        return decimal.Decimal
    if type_name.startswith("ARRAY"):
        return list
    if type_name.startswith(("MAP", "STRUCT")):
        return dict
    return str


def to_arrow(values: Sequence[Any], column: Column, table: str) -> pa.Array:
    """Convert one column's Python values to its Arrow type, or raise SchemaError naming the value.

    Arrow first infers the values' own type (in C++, no per-value Python), then the inferred type is
    checked against the column's type category and cast with overflow/truncation checks. Numpy and
    torch scalars (what model outputs usually are) are unwrapped with ``.item()`` when inference
    fails on them.
    """
    target = arrow_type(column, table)
    try:
        arr = _infer(values)
    except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError, ValueError, OverflowError) as e:
        raise _mismatch(values, column, table, str(e).splitlines()[0])
    kind = arr.type
    if pa.types.is_null(kind):
        return pa.nulls(len(arr), target)
    ok = _compatible(column.type, kind)
    if not ok:
        raise _mismatch(values, column, table, f"got {type_name_of(kind)} values")
    try:
        if column.type in ("DATETIME", "DATE") and pa.types.is_timestamp(kind) and kind.tz is not None:
            arr = arr.cast(pa.timestamp(kind.unit))
        safe = not (column.type == "DATETIME" or column.type in _FLOATING)
        return arr.cast(target, safe=safe)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as e:
        raise _mismatch(values, column, table, str(e).splitlines()[0])


def _infer(values: Sequence[Any]) -> pa.Array:
    try:
        return pa.array(values)
    except (pa.ArrowInvalid, pa.ArrowTypeError):
        unwrapped = [_plain(v) for v in values]
        return pa.array(unwrapped)


def _plain(value: Any) -> Any:
    if value is None or isinstance(value, (str, bytes, int, float, datetime.date)):
        return value
    item = getattr(value, "item", None)
    if callable(item):
        try:
            return item()
        except (ValueError, TypeError, RuntimeError):
            return value
    return value


def _compatible(type_name: str, kind: pa.DataType) -> bool:
    if type_name in _INTEGER:
        return pa.types.is_integer(kind) or pa.types.is_floating(kind)
    if type_name in _FLOATING:
        return pa.types.is_integer(kind) or pa.types.is_floating(kind) or pa.types.is_decimal(kind)
    if type_name in ("STRING", "BINARY"):
        return (pa.types.is_string(kind) or pa.types.is_large_string(kind) or pa.types.is_binary(kind)
                or pa.types.is_large_binary(kind))
    if type_name == "BOOLEAN":
        return pa.types.is_boolean(kind)
    if type_name == "DATETIME":
        return pa.types.is_timestamp(kind) or pa.types.is_date(kind)
    if type_name == "DATE":
        return pa.types.is_date(kind)
    return False


def _mismatch(values: Sequence[Any], column: Column, table: str, detail: str) -> SchemaError:
    sample = _first_offender(values, column)
    where = f" of {table}" if table else ""
    shown = "" if sample is _NONE else f" (e.g. {sample!r} of type {type(sample).__name__})"
    return SchemaError(f"values do not fit column {column.name} {column.type}{where}{shown}: {detail}")


_NONE = object()
_PY_OK = {
    "STRING": (str, bytes),
    "BINARY": (bytes, str),
    "BOOLEAN": (bool,),
    "DATETIME": (datetime.datetime, datetime.date),
    "DATE": (datetime.date,),
}


def _first_offender(values: Sequence[Any], column: Column) -> Any:
    ok_types = _PY_OK.get(column.type)
    for v in values:
        v = _plain(v)
        if v is None:
            continue
        if column.type in _INTEGER:
            if isinstance(v, bool) or not isinstance(v, (int, float)) or (
                isinstance(v, float) and not v.is_integer()
            ):
                return v
        elif column.type in _FLOATING:
            if isinstance(v, bool) or not isinstance(v, (int, float, decimal.Decimal)):
                return v
        elif ok_types is not None and (not isinstance(v, ok_types) or (
            column.type == "DATE" and isinstance(v, datetime.datetime)
        )):
            return v
    return _NONE
