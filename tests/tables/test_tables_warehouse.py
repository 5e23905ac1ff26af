"""The local warehouse: MaxCompute's local-run layout and CSV dialect, partitions, range reads."""

from __future__ import annotations

import datetime
import os

import pyarrow.csv as pcsv
import pytest
from tables_helpers import read_all

from aimaster.errors import ConfigError, InputNotFoundError, SchemaError, TableIOError, UrlError
from aimaster.io.tables import create_warehouse_table, open_table_sink, open_table_source


def test_schema_file_and_data_in_the_java_runner_layout(warehouse):
    url = create_warehouse_table("odps://prj/tables/t/ds=20240101/hh=08", "id:bigint,name:string",
                                 [(1, "a")], partitions="ds:STRING,hh:STRING")
    assert url == "odps://prj/tables/t/ds=20240101/hh=08"
    table_dir = warehouse / "prj" / "__tables__" / "t"
    assert (table_dir / "__schema__").read_text().splitlines() == [
        "project=prj", "table=t", "columns=id:BIGINT,name:STRING", "partitions=ds:STRING,hh:STRING"]
    assert (table_dir / "ds=20240101" / "hh=08" / "data").read_text() == "1,a\n"


def test_reads_a_table_written_by_the_java_runner(warehouse):
    # The __schema__ and data file of odps-sdk's own local-run test warehouse (DownloadUtils test).
    d = warehouse / "odps_test_bridgejob" / "__tables__" / "download_part_table" / "p1=1" / "p2=2"
    d.mkdir(parents=True)
    (d.parent.parent / "__schema__").write_text(
        "project=odps_test_bridgejob\ntable=download_part_table\n"
        "columns=c1:STRING,c2:BIGINT,c3:DOUBLE,c4:BOOLEAN,c5:DATETIME\npartitions=p1:STRING,p2:STRING")
    (d / "data").write_text("col2,2,2.2,false,2015-06-02 03:40:10 000\n")
    rows = read_all("odps://odps_test_bridgejob/tables/download_part_table/p1=1/p2=2")
    assert rows == [("col2", 2, 2.2, False, datetime.datetime(2015, 6, 2, 3, 40, 10))]


def test_csv_dialect_round_trip(warehouse):
    rows = [
        ("plain", 1, 1.5, True, datetime.datetime(2020, 1, 2, 3, 4, 5, 678000), b"\x00\xff=,",
         datetime.date(2020, 1, 2)),
        ("\\N", None, float("inf"), False, None, b"", None),
        ("", -2, float("-inf"), None, datetime.datetime(1999, 12, 31, 23, 59, 59), None, None),
        (' sp, "q"\nline2 ', 3, -0.0, True, None, b"abc", datetime.date(1970, 1, 1)),
        (None, None, None, None, None, None, None),
    ]
    url = create_warehouse_table("odps://prj/tables/t", "s:STRING,i:BIGINT,d:DOUBLE,b:BOOLEAN,ts:DATETIME,"
                                 "bin:BINARY,day:DATE", rows)
    text = (warehouse / "prj" / "__tables__" / "t" / "data").read_text()
    assert text.splitlines()[:3] == [
        'plain,1,1.5,true,2020-01-02 03:04:05 678,"=00=FF=3D,",2020-01-02',
        '"\\N",\\N,Infinity,false,\\N,"",\\N',
        '"",-2,-Infinity,\\N,1999-12-31 23:59:59 000,\\N,\\N',
    ]
    assert read_all(url) == rows
    nan_url = create_warehouse_table("odps://prj/tables/n", "d:DOUBLE", [(float("nan"),)])
    assert (warehouse / "prj" / "__tables__" / "n" / "data").read_text() == "NaN\n"
    (value,) = read_all(nan_url)[0]
    assert value != value


def test_plain_and_iso_datetimes_are_read(warehouse):
    url = create_warehouse_table("odps://prj/tables/t", "ts:DATETIME")
    (warehouse / "prj" / "__tables__" / "t" / "data").write_text(
        "2020-01-02 03:04:05\n2020-01-02T03:04:05.250\n2020-01-02 03:04:05 7\n")
    assert [r[0].microsecond for r in read_all(url)] == [0, 250000, 7000]


def test_rows_across_files_in_sorted_name_order(warehouse):
    url = create_warehouse_table("odps://prj/tables/t", "i:BIGINT", [(0,), (1,)])
    create_warehouse_table(url, "i:BIGINT", [(2,)])
    d = warehouse / "prj" / "__tables__" / "t"
    assert sorted(os.listdir(d)) == ["__schema__", "data", "data-00001"]
    (d / "a_first").write_text("-1\n")
    (d / ".hidden").write_text("99\n")
    (d / "empty").write_text("")
    assert [r[0] for r in read_all(url)] == [-1, 0, 1, 2]


def test_range_reads_skip_whole_files(warehouse, mocker):
    url = create_warehouse_table("odps://prj/tables/t", "i:BIGINT,s:STRING")
    for k in range(4):
        create_warehouse_table(url, "i:BIGINT,s:STRING", [(10 * k + j, f"v{10 * k + j}") for j in range(10)])
    src = open_table_source(url)
    assert src.row_count() == 40
    spy = mocker.spy(pcsv, "open_csv")
    assert [r for b in src.read(23, 27, columns=["s"]) for r in b] == [(f"v{j}",) for j in range(23, 27)]
    assert [os.path.basename(c.args[0]) for c in spy.call_args_list] == ["data-00002"]
    assert spy.call_args_list[0].kwargs["read_options"].skip_rows_after_names == 3
    assert spy.call_args_list[0].kwargs["convert_options"].include_columns == ["s"]
    spy.reset_mock()
    assert [r[0] for b in src.read(19, 21) for r in b] == [19, 20]
    assert [os.path.basename(c.args[0]) for c in spy.call_args_list] == ["data-00001", "data-00002"]


def test_quoted_newlines_count_as_one_row(warehouse):
    url = create_warehouse_table("odps://prj/tables/t", "s:STRING", [("a\nb",), ("c",), ("d\r\ne",)])
    src = open_table_source(url)
    assert src.row_count() == 3
    assert [r for b in src.read(1, 3) for r in b] == [("c",), ("d\r\ne",)]


def test_partitions_must_match_the_schema(warehouse):
    create_warehouse_table("odps://prj/tables/t/ds=1", "i:BIGINT", [(1,)])
    with pytest.raises(UrlError, match="ds="):
        open_table_source("odps://prj/tables/t")
    with pytest.raises(UrlError, match="ds="):
        open_table_source("odps://prj/tables/t/dt=1")
    with pytest.raises(InputNotFoundError, match="ds=2"):
        open_table_source("odps://prj/tables/t/ds=2")
    create_warehouse_table("odps://prj/tables/plain", "i:BIGINT")
    with pytest.raises(UrlError, match="not partitioned"):
        open_table_source("odps://prj/tables/plain/ds=1")


def test_missing_table_and_missing_warehouse(warehouse, monkeypatch):
    with pytest.raises(InputNotFoundError, match="odps://prj/tables/nope"):
        open_table_sink("odps://prj/tables/nope")
    monkeypatch.delenv("AIMASTER_ODPS_WAREHOUSE")
    with pytest.raises(ConfigError, match="AIMASTER_ODPS_WAREHOUSE"):
        create_warehouse_table("odps://prj/tables/t", "i:BIGINT")


def test_create_refuses_a_different_schema(warehouse):
    create_warehouse_table("odps://prj/tables/t", "i:BIGINT")
    with pytest.raises(SchemaError, match="already exists"):
        create_warehouse_table("odps://prj/tables/t", "i:STRING")
    with pytest.raises(SchemaError, match="column i BIGINT"):
        create_warehouse_table("odps://prj/tables/t", "i:BIGINT", [("x",)])
    with pytest.raises(SchemaError, match="cannot write"):
        create_warehouse_table("odps://prj/tables/d", "x:DECIMAL")


def test_sink_writes_a_new_partition(warehouse):
    create_warehouse_table("odps://prj/tables/out/ds=1", "i:BIGINT")
    sink = open_table_sink("odps://prj/tables/out/ds=2")
    ref = sink.stage("s00000", "0", [(5,)])
    assert ref["staged"].startswith(".aimaster-staging/")
    sink.publish("s00000", ref)
    sink.finalize([("s00000", ref)])
    part = warehouse / "prj" / "__tables__" / "out" / "ds=2"
    assert sorted(os.listdir(part)) == ["part-s00000.csv"]
    assert read_all("odps://prj/tables/out/ds=2") == [(5,)]


def test_corrupt_data_file_is_a_table_io_error(warehouse):
    url = create_warehouse_table("odps://prj/tables/t", "i:BIGINT", [(1,)])
    (warehouse / "prj" / "__tables__" / "t" / "data-00001").write_text("not-a-number\n")
    with pytest.raises(TableIOError, match="data-00001"):
        read_all(url)


def test_unwritable_types_are_read_as_text(warehouse):
    d = warehouse / "prj" / "__tables__" / "t"
    d.mkdir(parents=True)
    (d / "__schema__").write_text("project=prj\ntable=t\ncolumns=price:DECIMAL\n")
    (d / "data").write_text("1.25\n")
    assert read_all("odps://prj/tables/t") == [("1.25",)]
