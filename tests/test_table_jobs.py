"""Table jobs end to end: `aimaster run` over Parquet, local-warehouse and MaxCompute tables (pyodps
over HTTP to the stand-in of tests/tables/maxcompute_fake.py), exactly once."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from helpers import aimaster_cmd, clean_env, program, wait_for

from aimaster.io.tables import create_warehouse_table, open_table_source

ROWS = 100_000


def _maxcompute(tmp_path, ids):
    """The MaxCompute stand-in over HTTP with the input and output tables, and the workers' env."""
    pytest.importorskip("odps")
    sys.path.insert(0, os.path.join(os.path.dirname(__file__), "tables"))
    from maxcompute_fake import FakeMaxCompute, write_config

    fake = FakeMaxCompute()
    fake.create_table("prj", "input", [("id", "BIGINT"), ("x", "DOUBLE"), ("note", "STRING")])
    fake.add_rows("prj", "input", [(i, i * 0.5, f"n{i}") for i in ids])
    fake.create_table("prj", "output", [("id", "BIGINT"), ("y", "DOUBLE")])
    config = write_config(str(tmp_path / "odps.ini"), fake.serve_http())
    return fake, {"ODPS_CONFIG_FILE_PATH": config}


def _make_tables(tmp_path, backend):
    """(input url, output url, env) with ROWS rows of (id BIGINT, x DOUBLE, note STRING)."""
    ids = list(range(ROWS))
    if backend == "odps":
        fake, env = _maxcompute(tmp_path, ids)
        return "odps://prj/tables/input", "odps://prj/tables/output", dict(env, fake=fake)
    if backend == "parquet":
        src = tmp_path / "input"
        src.mkdir()
        for part in range(3):  # a directory of files: slices span file boundaries
            lo, hi = part * ROWS // 3, (part + 1) * ROWS // 3
            pq.write_table(pa.table({"id": pa.array(ids[lo:hi], pa.int64()),
                                     "x": pa.array([i * 0.5 for i in ids[lo:hi]], pa.float64()),
                                     "note": pa.array([f"n{i}" for i in ids[lo:hi]])}),
                           src / f"part-{part}.parquet", row_group_size=7000)
        schema_env = {}
        return str(src), str(tmp_path / "output"), schema_env
    warehouse = tmp_path / "warehouse"
    env = {"AIMASTER_ODPS_WAREHOUSE": str(warehouse)}
    create_warehouse_table("odps://prj/tables/input", "id:BIGINT,x:DOUBLE,note:STRING",
                           [(i, i * 0.5, f"n{i}") for i in ids], warehouse=str(warehouse))
    create_warehouse_table("odps://prj/tables/output", "id:BIGINT,y:DOUBLE", warehouse=str(warehouse))
    return "odps://prj/tables/input", "odps://prj/tables/output", env


def _read_output(url, env):
    if "fake" in env:
        return env["fake"].rows("prj", "output")
    old = os.environ.get("AIMASTER_ODPS_WAREHOUSE")
    if "AIMASTER_ODPS_WAREHOUSE" in env:
        os.environ["AIMASTER_ODPS_WAREHOUSE"] = env["AIMASTER_ODPS_WAREHOUSE"]
    try:
        with open_table_source(url) as src:
            return [row for batch in src.read() for row in batch]
    finally:
        if old is None:
            os.environ.pop("AIMASTER_ODPS_WAREHOUSE", None)
        else:
            os.environ["AIMASTER_ODPS_WAREHOUSE"] = old


def _assert_exactly_once(rows):
    ids = [r[0] for r in rows]
    assert len(ids) == ROWS, f"{len(ids)} output rows for {ROWS} input rows"
    assert sorted(ids) == list(range(ROWS)), "missing or duplicated row keys"
    assert all(r[1] == r[0] * 1.0 for r in rows)


@pytest.mark.parametrize("backend", ["parquet", "warehouse", "odps"])
@pytest.mark.parametrize("mode", ["plain", "kill", "buffered"])
def test_table_job_three_workers_exactly_once(tmp_path, backend, mode):
    inp, out, env = _make_tables(tmp_path, backend)
    fake = env.pop("fake", None)
    env = dict(env)
    if mode == "buffered":
        env["BUFFER_SIZE"] = "2048"
    if mode == "kill":
        env["BATCH_SLEEP"] = "0.05"
        env["SLICE_LOG"] = str(tmp_path)
    state = tmp_path / "state"
    cmd = aimaster_cmd("run", "-n", "3", "--job-id", "tbl", "--state-dir", str(state), "--quiet",
                       "--lease-ttl", "3", "--", sys.executable, program("table_worker.py"), inp, out, "5000")
    proc = subprocess.Popen(cmd, env=clean_env(env), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        if mode == "kill":
            # SIGKILL a worker in the middle of a slice (it has logged a slice start and reads slowly).
            log = wait_for(lambda: [f for f in os.listdir(tmp_path) if f.endswith(".log")], what="a slice start")
            worker = log[0][:-4]
            info = json.load(open(state / "jobs" / "tbl" / "etcd.json"))
            from aimaster.data.store import EtcdConfig, Store, job_prefix

            store = Store(EtcdConfig([f"127.0.0.1:{info['port']}"]), job_prefix("tbl"))
            pid = store.get_value(f"workers/{worker}")["pid"]
            store.close()
            os.kill(pid, signal.SIGKILL)
        stdout, stderr = proc.communicate(timeout=240)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, stderr
    if mode == "kill":
        assert "killed by SIGKILL" in stderr
    _assert_exactly_once(_read_output(out, dict(env, fake=fake) if fake else env))
    if fake is not None:
        fake.stop_http()
    if backend == "parquet":
        parts = sorted(p for p in os.listdir(out) if not p.startswith("_"))
        assert parts == [f"part-{i:06d}.parquet" for i in range(20)], parts
