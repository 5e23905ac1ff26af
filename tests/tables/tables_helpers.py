"""Helpers of the table-layer tests (kept out of conftest.py, whose module name is shared with the
top-level tests' conftest)."""

from __future__ import annotations

import os
from typing import Any, List, Sequence

import pyarrow.parquet as pq

from aimaster.io.tables import create_warehouse_table, open_table_sink, open_table_source, parse_columns
from aimaster.io.tables.warehouse import WarehouseSource

SERVICE_ENDPOINT = "http://service.fake-odps.test/api"  # the fake MaxCompute's (maxcompute_fake.py)


def read_all(url: str, **kwargs) -> List[tuple]:
    with open_table_source(url) as src:
        return [row for batch in src.read(**kwargs) for row in batch]


class Backend:
    """What the contract suite needs from a backend: make tables, open sinks, look at the output
    through the backend's own storage (not through the code under test where avoidable)."""

    name = ""

    def make_table(self, table: str, columns: str, rows: Sequence[Sequence[Any]]) -> str:
        raise NotImplementedError

    def make_output(self, table: str, columns: str) -> str:
        raise NotImplementedError

    def open_sink(self, url: str):
        return open_table_sink(url)

    def output_rows(self, url: str) -> List[tuple]:
        raise NotImplementedError

    def missing_url(self) -> str:
        raise NotImplementedError


class ParquetBackend(Backend):
    name = "parquet"

    def __init__(self, root):
        self.root = root
        self.schemas = {}

    def make_table(self, table, columns, rows):
        path = self.root / f"{table}_in"
        sink = open_table_sink(str(path), schema=columns)
        # Several part files with small row groups: ranges cross file and row-group boundaries.
        for i in range(0, max(len(rows), 1), 7):
            ref = sink.stage(f"{i:05d}", "0", rows[i:i + 7])
            sink.publish(f"{i:05d}", ref)
        return str(path)

    def make_output(self, table, columns):
        path = self.root / f"{table}_out"
        self.schemas[str(path)] = columns
        return str(path)

    def open_sink(self, url):
        return open_table_sink(url, schema=self.schemas.get(url))

    def output_rows(self, url):
        files = sorted(f for f in os.listdir(url) if f.endswith(".parquet") and not f.startswith("_"))
        rows = []
        for f in files:
            t = pq.read_table(os.path.join(url, f))
            rows.extend(zip(*[c.to_pylist() for c in t.columns]))
        return rows

    def missing_url(self):
        return str(self.root / "nope")


class WarehouseBackend(Backend):
    name = "warehouse"

    def make_table(self, table, columns, rows):
        return create_warehouse_table(f"odps://prj/tables/{table}", columns, rows)

    def make_output(self, table, columns):
        return create_warehouse_table(f"odps://prj/tables/{table}", columns)

    def output_rows(self, url):
        src = WarehouseSource(url)
        return [r for batch in src.read() for r in batch]

    def missing_url(self):
        return "odps://prj/tables/nope"


class MaxComputeBackend(Backend):
    name = "odps"

    def __init__(self, server):
        self.server = server

    def make_table(self, table, columns, rows):
        cols = [(c.name, c.type) for c in parse_columns(columns)]
        self.server.create_table("prj", table, cols)
        self.server.add_rows("prj", table, rows)
        return f"odps://prj/tables/{table}"

    def make_output(self, table, columns):
        cols = [(c.name, c.type) for c in parse_columns(columns)]
        self.server.create_table("prj", table, cols)
        return f"odps://prj/tables/{table}"

    def output_rows(self, url):
        return self.server.rows("prj", url.rsplit("/", 1)[1])

    def missing_url(self):
        return "odps://prj/tables/nope"
