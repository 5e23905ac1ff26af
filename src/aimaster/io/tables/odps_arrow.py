"""Uploading a MaxCompute block as Arrow record batches instead of protobuf records.

pyodps' record writer encodes every value of every row in Python (``new_record`` then
``writer.write``): that, not the network, bounds a table job's upload rate. The tunnel also takes a
block as Arrow (``TableUploadSession.open_arrow_writer(block_id)``: a ``PUT ...&blockid=N&arrow``
whose body is IPC record-batch messages in CRC-checked chunks), encoded by Arrow's C++ code.

A block goes the Arrow way only when that is known to write the same values as the record writer:
the session has ``open_arrow_writer``, every column is of a plain type (integers, floats, booleans,
strings, binary) whose Arrow form needs no conversion by pyodps (no time zones, decimals or nested
types, which pyodps' Arrow writer converts on its own terms), and the block has rows (an emptied
block stays what it always was). Everything else, and ``AIMASTER_ODPS_UPLOAD=records``, uses the
record writer. The conversion to the session's Arrow schema happens before any request is sent, so
a value that does not convert falls back too, instead of leaving half a block on the wire.
"""

from __future__ import annotations

import os
from typing import List, Optional

import pyarrow as pa

from aimaster.errors import ConfigError

MODES = ("auto", "arrow", "records")
_PLAIN = (pa.types.is_integer, pa.types.is_floating, pa.types.is_boolean, pa.types.is_string,
          pa.types.is_binary)


def upload_mode() -> str:
    """``AIMASTER_ODPS_UPLOAD``: ``auto`` (the default: Arrow where it applies), ``arrow`` (the same;
    kept for symmetry), or ``records`` (always the protobuf record writer)."""
    mode = os.environ.get("AIMASTER_ODPS_UPLOAD", "auto").strip().lower() or "auto"
    if mode not in MODES:
        raise ConfigError(f"AIMASTER_ODPS_UPLOAD must be one of {', '.join(MODES)}; got {mode!r}")
    return mode


def arrow_batches(session, tables: List[pa.Table]) -> Optional[List[pa.Table]]:
    """``tables`` converted to the session's Arrow schema, or None: use the record writer."""
    if upload_mode() == "records" or not callable(getattr(session, "open_arrow_writer", None)):
        return None
    if not tables or not any(t.num_rows for t in tables):
        return None
    from odps.tunnel.io.types import odps_schema_to_arrow_schema

    try:
        target = odps_schema_to_arrow_schema(session.schema)
    except Exception:  # noqa: BLE001 - a type pyodps cannot map to Arrow: records can still write it
        return None
    if not all(any(is_(field.type) for is_ in _PLAIN) for field in target):
        return None
    out = []
    for table in tables:
        if table.num_columns != len(target):
            return None
        try:
            arrays = [column.cast(field.type) for column, field in zip(table.columns, target)]
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError):
            return None
        out.append(pa.Table.from_arrays(arrays, schema=target))
    return out


def write_arrow_block(session, block: int, batches: List[pa.Table]) -> None:
    """Upload ``batches`` (already in the session's schema) as block ``block``, replacing it."""
    writer = session.open_arrow_writer(block)
    try:
        for table in batches:
            writer.write(table)
    finally:
        writer.close()
