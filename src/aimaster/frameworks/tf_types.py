"""``record_defaults``: the type of each column a TensorFlow table dataset yields, and its NULL value.

PAI's ``TableRecordDataset`` takes one default per selected column; its type is the column's output
type and its value replaces NULL. Accepted, as there: Python ``int`` (int64), ``float`` (float32),
``bool``, ``str``/``bytes`` (string); numpy scalars or 0-d arrays of int32/int64/float32/float64/bool/
bytes/str; constant ``tf.Tensor`` s; and any of these wrapped in a one-element list (``[0]``), the
``CsvDataset`` spelling. Values are converted like PAI does: numbers from numbers or numeric strings,
strings from anything (``str(value)``), and a value that cannot be converted is a
:class:`~aimaster.errors.SchemaError` naming the column.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, List, Sequence

import numpy as np

from aimaster.errors import ConfigError, SchemaError

_NUMPY = {
    np.dtype(np.int32): "int32",
    np.dtype(np.int64): "int64",
    np.dtype(np.float32): "float32",
    np.dtype(np.float64): "float64",
    np.dtype(np.bool_): "bool",
}


@dataclass(frozen=True)
class ColumnDefault:
    """One column's output type (a TensorFlow dtype name) and the value that replaces NULL."""

    dtype: str
    default: Any

    @property
    def numpy_dtype(self):
        return object if self.dtype == "string" else np.dtype(self.dtype)


def _from_value(value: Any, position: int) -> ColumnDefault:
    if isinstance(value, (list, tuple)) and len(value) == 1:
        value = value[0]
    if hasattr(value, "dtype") and hasattr(value, "numpy") and callable(value.numpy):  # an eager tf.Tensor
        value = value.numpy()
    elif hasattr(value, "dtype") and hasattr(value, "op"):  # a graph tf.Tensor: only constants work
        import tensorflow as tf

        static = tf.get_static_value(value)
        if static is None:
            raise ConfigError(f"record_defaults[{position}] is a tensor without a constant value")
        value = static
    if isinstance(value, np.ndarray):
        if value.shape not in ((), (1,)):
            raise ConfigError(f"record_defaults[{position}] must be a scalar, got shape {value.shape}")
        value = value.reshape(())[()]
    if isinstance(value, (bool, np.bool_)):
        return ColumnDefault("bool", bool(value))
    if isinstance(value, np.generic) and np.dtype(type(value)) in _NUMPY:
        name = _NUMPY[np.dtype(type(value))]
        return ColumnDefault(name, value.item())
    if isinstance(value, int):
        return ColumnDefault("int64", value)
    if isinstance(value, float):
        return ColumnDefault("float32", value)
    if isinstance(value, (str, np.str_)):
        return ColumnDefault("string", str(value).encode("utf-8"))
    if isinstance(value, (bytes, np.bytes_)):
        return ColumnDefault("string", bytes(value))
    raise ConfigError(f"record_defaults[{position}] has an unsupported type {type(value).__name__}: use an int, "
                      "float, bool, str, or a numpy int32/int64/float32/float64 scalar")


def parse_record_defaults(record_defaults: Sequence[Any]) -> List[ColumnDefault]:
    if isinstance(record_defaults, (str, bytes)) or not hasattr(record_defaults, "__len__") \
            or len(record_defaults) == 0:
        raise ConfigError(f"record_defaults must be a non-empty tuple with one default per column, "
                          f"got {record_defaults!r}")
    return [_from_value(v, i) for i, v in enumerate(record_defaults)]


def convert(value: Any, column: ColumnDefault, name: str, table: str) -> Any:
    """One cell as ``column``'s type (NULL becomes the default)."""
    if value is None:
        return column.default
    try:
        if column.dtype == "string":
            if isinstance(value, bytes):
                return value
            return str(value).encode("utf-8")
        if isinstance(value, bytes):
            value = value.decode("utf-8").strip()
        if column.dtype == "bool":
            if isinstance(value, str):
                if value.lower() in ("true", "1"):
                    return True
                if value.lower() in ("false", "0"):
                    return False
                raise ValueError(value)
            return bool(value)
        if column.dtype.startswith("int"):
            if isinstance(value, float) and not value.is_integer():
                raise ValueError(value)
            return int(value)
        return float(value)
    except (TypeError, ValueError, UnicodeDecodeError):
        raise SchemaError(f"column {name!r} of {table}: value {value!r:.60} cannot be read as {column.dtype} "
                          "(the type record_defaults gives it)")


def to_columns(rows: Sequence[Sequence[Any]], columns: Sequence[ColumnDefault], names: Sequence[str],
               table: str) -> tuple:
    """Rows as one numpy array per column, typed and with NULLs replaced."""
    out = []
    for j, (column, name) in enumerate(zip(columns, names)):
        values = [convert(row[j], column, name, table) for row in rows]
        out.append(np.array(values, dtype=column.numpy_dtype) if values else
                   np.zeros((0,), dtype=column.numpy_dtype))
    return tuple(out)
