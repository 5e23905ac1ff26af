"""Fixtures for the table layer: a local warehouse, a fake MaxCompute behind pyodps' HTTP layer, and
one ``backend`` fixture that the contract suite runs against all three backends."""

from __future__ import annotations

import pytest
from tables_helpers import SERVICE_ENDPOINT, Backend, MaxComputeBackend, ParquetBackend, WarehouseBackend


@pytest.fixture
def warehouse(tmp_path, monkeypatch):
    root = tmp_path / "warehouse"
    root.mkdir()
    monkeypatch.setenv("AIMASTER_ODPS_WAREHOUSE", str(root))
    return root


@pytest.fixture
def odps_config(tmp_path, monkeypatch):
    path = tmp_path / "odps_config.ini"
    path.write_text(f"access_id=test-ak\naccess_key=test-sk\nend_point={SERVICE_ENDPOINT}\n")
    monkeypatch.setenv("ODPS_CONFIG_FILE_PATH", str(path))
    monkeypatch.delenv("AIMASTER_ODPS_WAREHOUSE", raising=False)
    for var in ("ALIBABA_CLOUD_ACCESS_KEY_ID", "ALIBABA_CLOUD_ACCESS_KEY_SECRET", "ODPS_ENDPOINT"):
        monkeypatch.delenv(var, raising=False)
    return path


@pytest.fixture
def fake_mc(mocker, odps_config):
    """pyodps talks to an in-memory MaxCompute: only ``RestClient.session`` (the requests session
    every pyodps request goes through) is replaced. Skipped where pyodps is not installed."""
    pytest.importorskip("odps")
    from maxcompute_fake import FakeMaxCompute
    from odps.rest import RestClient

    import aimaster.io.tables.odps as mc

    server = FakeMaxCompute()
    mocker.patch.object(RestClient, "session", new_callable=mocker.PropertyMock, return_value=server.session())
    mc.clear_caches()
    yield server
    mc.clear_caches()


@pytest.fixture(params=["parquet", "warehouse", "odps"])
def backend(request, tmp_path) -> Backend:
    if request.param == "parquet":
        return ParquetBackend(tmp_path)
    if request.param == "warehouse":
        request.getfixturevalue("warehouse")
        return WarehouseBackend()
    return MaxComputeBackend(request.getfixturevalue("fake_mc"))


@pytest.fixture
def mc_http(tmp_path):
    """The fake MaxCompute served over real HTTP (for jobs: workers and writer children are other
    processes); yields ``(fake, path of an ODPS_CONFIG_FILE_PATH file pointing at it)``."""
    pytest.importorskip("odps")
    from maxcompute_fake import FakeMaxCompute, write_config

    fake = FakeMaxCompute()
    endpoints = fake.serve_http()
    yield fake, write_config(str(tmp_path / "odps_http.ini"), endpoints)
    fake.stop_http()


@pytest.fixture
def job_tables(request, tmp_path):
    """``make(backend, rows)`` -> :class:`tables_helpers.JobTables` (MaxCompute over HTTP)."""
    from tables_helpers import JobTables

    def make(backend: str, rows: int) -> JobTables:
        if backend == "odps":
            fake, config = request.getfixturevalue("mc_http")
            return JobTables(backend, tmp_path, rows, fake, config)
        return JobTables(backend, tmp_path, rows)

    return make
