"""``col_names=``: naming the columns of a Parquet output whose schema is inferred from the rows.

A Parquet output written without a schema gets its column types from the first rows; its names
were ``_c0, _c1, ...``. ``create_table_writer(col_names=[...])`` and
``common_io.table.TableWriter(url, col_names=[...])`` name them. Only a Parquet output takes names:
a MaxCompute or warehouse table has its own schema, so names given for one are refused (one line)
rather than silently ignored. The names are part of the sink's description, which the job agrees
on once: a worker naming the columns differently is refused too.
"""

from __future__ import annotations

from typing import Any, List, Optional, Sequence

from aimaster.errors import ConfigError
from aimaster.io.tables.parquet import check_col_names
from aimaster.io.tables.urls import backend_name, parse_table_url


def output_col_names(url: Optional[str], col_names: Sequence[str]) -> List[str]:
    """``col_names`` checked for the output table ``url`` (it must be a Parquet output)."""
    if not url:
        raise ConfigError("col_names= needs an output table (MaxComputeTableConfig(output_table=...))")
    backend = backend_name(parse_table_url(url)[0])
    if backend != "parquet":
        raise ConfigError(f"col_names= names the columns of a Parquet output; {url} is a {backend} table, "
                          f"which has its own schema")
    return check_col_names(col_names, url)


def check_sink_col_names(sink: Any, col_names: Optional[List[str]]) -> None:
    """Refuse names that differ from those of the job's agreed sink (another worker created it)."""
    if col_names is None:
        return
    agreed = getattr(sink, "col_names", None)
    if agreed != col_names:
        raise ConfigError(f"the output {getattr(sink, 'url', '?')} of this job has column names "
                          f"{agreed or 'inferred as _c0, _c1, ...'}; this worker gives {col_names} "
                          f"(use the same col_names in every worker, or a new --job-id)")
