"""Table URLs: parsing, and which backend the registry picks."""

from __future__ import annotations

import pytest

from aimaster.errors import UrlError
from aimaster.io.tables import open_table_sink, open_table_source, parse_odps_url, parse_table_url
from aimaster.io.tables.urls import backend_name, local_path


@pytest.mark.parametrize(
    "url,expected",
    [
        ("odps://prj/tables/t", ("odps://prj/tables/t", None, None)),
        ("odps://prj/tables/t?start=0&end=4096", ("odps://prj/tables/t", 0, 4096)),
        ("odps://prj/tables/t/ds=1?end=5", ("odps://prj/tables/t/ds=1", None, 5)),
        ("/data/x.parquet?start=7", ("/data/x.parquet", 7, None)),
        ("file:///d?start=3&end=3", ("file:///d", 3, 3)),
    ],
)
def test_parse_table_url(url, expected):
    assert parse_table_url(url) == expected


@pytest.mark.parametrize(
    "url,match",
    [
        ("odps://prj/tables/t?start=-1", "start"),
        ("odps://prj/tables/t?start=a", "start"),
        ("odps://prj/tables/t?start=5&end=2", "before start"),
        ("odps://prj/tables/t?limit=5", "limit"),
        ("odps://prj/tables/t?start=1&start=2", "start"),
        ("", "non-empty"),
        ("?start=1", "names no table"),
    ],
)
def test_parse_table_url_rejects(url, match):
    with pytest.raises(UrlError, match=match):
        parse_table_url(url)


def test_parse_odps_url_with_partitions():
    name = parse_odps_url("odps://my_prj/tables/my_table/ds=20240101/hh=08?start=1&end=2")
    assert (name.project, name.table) == ("my_prj", "my_table")
    assert name.partition == (("ds", "20240101"), ("hh", "08"))
    assert name.partition_spec == "ds=20240101,hh=08"
    assert name.url == "odps://my_prj/tables/my_table/ds=20240101/hh=08"


@pytest.mark.parametrize(
    "url",
    [
        "odps://prj/table/t",
        "odps://prj/tables",
        "odps://prj/tables/t/ds",
        "odps://prj/tables/t/ds=",
        "odps://prj/tables/t/ds=1/ds=2",
        "odps://prj/tables/bad name",
        "odps:///tables/t",
    ],
)
def test_parse_odps_url_rejects(url):
    with pytest.raises(UrlError) as info:
        parse_odps_url(url)
    assert "odps://" in str(info.value) or "name" in str(info.value)


def test_registry_routes_by_scheme(monkeypatch):
    monkeypatch.delenv("AIMASTER_ODPS_WAREHOUSE", raising=False)
    assert backend_name("odps://p/tables/t") == "odps"
    monkeypatch.setenv("AIMASTER_ODPS_WAREHOUSE", "/tmp/wh")
    assert backend_name("odps://p/tables/t") == "warehouse"
    assert backend_name("/data/t.parquet") == "parquet"
    assert backend_name("file:///data/dir") == "parquet"
    assert backend_name("relative/dir") == "parquet"


def test_unsupported_scheme_is_url_error():
    with pytest.raises(UrlError, match="s3://"):
        open_table_source("s3://bucket/table")


def test_open_rejects_row_ranges():
    with pytest.raises(UrlError, match="row range"):
        open_table_source("/data/t.parquet?start=1&end=2")
    with pytest.raises(UrlError, match="row range"):
        open_table_sink("/data/out?start=1")


def test_local_path(tmp_path, monkeypatch):
    assert local_path(f"file://{tmp_path}/a%20b") == f"{tmp_path}/a b"
    monkeypatch.chdir(tmp_path)
    assert local_path("x.parquet") == f"{tmp_path}/x.parquet"
