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

    def staged_count(self, url: str, ref: dict) -> int:
        """Rows a stage still holds in the staging area (0 once it is gone or emptied)."""
        raise NotImplementedError

    def missing_url(self) -> str:
        raise NotImplementedError


def _staged_file(directory: str, ref: dict) -> str:
    return os.path.join(directory, ref["staged"]) if ref.get("staged") else ""


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

    def staged_count(self, url, ref):
        path = _staged_file(url, ref)
        return pq.ParquetFile(path).metadata.num_rows if os.path.isfile(path) else 0

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

    def staged_count(self, url, ref):
        path = _staged_file(WarehouseSource(url).table.data_dir, ref)
        return len(open(path).read().splitlines()) if os.path.isfile(path) else 0

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

    def staged_count(self, url, ref):
        return len(self.server.uploads[ref["session"]]["blocks"].get(ref["block"], []))

    def missing_url(self):
        return "odps://prj/tables/nope"


# --- table jobs: `aimaster run` over every backend ---------------------------------------------------

JOB_COLUMNS_IN = "id:BIGINT,x:DOUBLE,note:STRING"
JOB_COLUMNS_OUT = "id:BIGINT,y:DOUBLE"


class JobTables:
    """An input table of ``rows`` rows ``(i, i * 0.5, "n<i>")`` and an empty output ``(id, y)`` on one
    backend, the environment a job's workers need for it, and a look at the output afterwards."""

    def __init__(self, backend: str, tmp_path, rows: int, fake=None, config: str = ""):
        self.backend, self.rows, self.fake = backend, rows, fake
        self.env: dict = {}
        data = [(i, i * 0.5, f"n{i}") for i in range(rows)]
        if backend == "parquet":
            import pyarrow as pa

            src = tmp_path / "input"
            src.mkdir()
            pq.write_table(pa.table({"id": pa.array([r[0] for r in data], pa.int64()),
                                     "x": pa.array([r[1] for r in data], pa.float64()),
                                     "note": pa.array([r[2] for r in data])}), src / "part-0.parquet",
                           row_group_size=997)
            self.input, self.output = str(src), str(tmp_path / "output")
        elif backend == "warehouse":
            warehouse = tmp_path / "warehouse"
            self.env["AIMASTER_ODPS_WAREHOUSE"] = str(warehouse)
            self.input = create_warehouse_table("odps://prj/tables/input", JOB_COLUMNS_IN, data,
                                                warehouse=str(warehouse))
            self.output = create_warehouse_table("odps://prj/tables/output", JOB_COLUMNS_OUT,
                                                 warehouse=str(warehouse))
            self.output_dir = str(warehouse / "prj" / "__tables__" / "output")
        else:
            fake.create_table("prj", "input", [(c.name, c.type) for c in parse_columns(JOB_COLUMNS_IN)])
            fake.add_rows("prj", "input", data)
            fake.create_table("prj", "output", [(c.name, c.type) for c in parse_columns(JOB_COLUMNS_OUT)])
            self.input, self.output = "odps://prj/tables/input", "odps://prj/tables/output"
            self.env["ODPS_CONFIG_FILE_PATH"] = config

    def output_rows(self) -> List[tuple]:
        if self.backend == "odps":
            return self.fake.rows("prj", "output")
        if self.backend == "parquet":
            return ParquetBackend(None).output_rows(self.output)
        return [r for batch in WarehouseSource(self.output, self.env["AIMASTER_ODPS_WAREHOUSE"]).read()
                for r in batch]

    def assert_exactly_once(self) -> None:
        rows = self.output_rows()
        ids = sorted(r[0] for r in rows)
        assert len(ids) == self.rows, f"{len(ids)} output rows for {self.rows} input rows"
        assert ids == list(range(self.rows)), "missing or duplicated row keys"
        assert all(r[1] == r[0] * 1.0 for r in rows)

    def staging_left(self) -> List[str]:
        """What is left in the output's staging area (local backends)."""
        directory = {"parquet": (self.output, "_staging"),
                     "warehouse": (getattr(self, "output_dir", ""), ".aimaster-staging")}.get(self.backend)
        if directory is None:
            return []
        path = os.path.join(*directory)
        return sorted(os.listdir(path)) if os.path.isdir(path) else []
