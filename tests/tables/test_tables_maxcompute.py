"""MaxCompute specifics, verified against pyodps' real classes with only the HTTP layer faked
(``fake_mc``): what goes over the wire for ranges and partitions, the block scheme, retries, the one
commit, credentials."""

from __future__ import annotations

import datetime

import pytest
from tables_helpers import read_all

from aimaster.data.outputs import sink_from_description
from aimaster.errors import ConfigError, CredentialsError, InputNotFoundError, TableIOError, UrlError
from aimaster.io.tables import open_table_sink, open_table_source, source_from_description
from aimaster.io.tables.odps import MAX_BLOCKS, MaxComputeSink, clear_caches, load_credentials

pytest.importorskip("odps")


@pytest.fixture
def table(fake_mc):
    fake_mc.create_table("prj", "t", [("id", "bigint"), ("name", "string"), ("ts", "datetime")])
    fake_mc.add_rows("prj", "t", [(i, f"n{i}", datetime.datetime(2024, 1, 1, 0, 0, i % 60)) for i in range(50)])
    return "odps://prj/tables/t"


def test_a_row_range_is_one_tunnel_request_for_exactly_those_rows(fake_mc, table):
    src = open_table_source(table)
    assert src.row_count() == 50
    fake_mc.requests.clear()
    rows = [r for b in src.read(20, 30, columns=["name"]) for r in b]
    assert rows == [(f"n{i}",) for i in range(20, 30)]
    (req,) = fake_mc.requests_of("data", "downloadid")
    assert req.params["rowrange"] == "(20,10)"
    assert req.params["columns"] == "name"
    assert "arrow" in req.params
    assert fake_mc.requests_of("downloads") == []  # no new session for a read


def test_one_download_session_per_table_in_a_process(fake_mc, table):
    for start in (0, 10, 20):  # e.g. a common_io reader per slice
        with open_table_source(table) as src:
            assert len([r for b in src.read(start, start + 10) for r in b]) == 10
    assert len(fake_mc.requests_of("downloads", method="POST")) == 1


def test_one_download_session_shared_through_describe(fake_mc, table):
    src = open_table_source(table)
    desc = src.describe()
    assert desc["download_id"] == src.download_id
    fake_mc.requests.clear()
    clear_caches()  # as in another process
    other = source_from_description(desc)
    assert other.row_count() == 50
    assert fake_mc.requests_of("downloads", method="POST") == []
    assert [r.params["downloadid"] for r in fake_mc.requests_of("downloadid")] == [src.download_id]


def test_an_expired_download_session_is_replaced(fake_mc, table):
    clear_caches()
    other = source_from_description({"backend": "odps", "url": table, "download_id": "dl-expired"})
    assert other.row_count() == 50
    assert other.download_id != "dl-expired"


def test_partition_urls(fake_mc):
    fake_mc.create_table("prj", "pt", [("v", "bigint")], partitions=[("ds", "string"), ("hh", "string")])
    fake_mc.add_rows("prj", "pt", [(1,), (2,)], "ds=20240101,hh=01")
    fake_mc.add_rows("prj", "pt", [(3,)], "ds=20240101,hh=02")
    assert read_all("odps://prj/tables/pt/ds=20240101/hh=02") == [(3,)]
    assert {r.params.get("partition") for r in fake_mc.requests_of("downloadid")} == {"ds=20240101,hh=02"}
    with pytest.raises(UrlError, match="must name a partition"):
        open_table_source("odps://prj/tables/pt")
    with pytest.raises(InputNotFoundError, match="hh=03"):
        open_table_source("odps://prj/tables/pt/ds=20240101/hh=03")
    # output into a partition that does not exist yet: it is created, like create_partition
    sink = open_table_sink("odps://prj/tables/pt/ds=20240102/hh=00")
    ref = sink.stage("s00000", "0", [(9,)])
    sink.finalize([("s00000", ref)])
    assert fake_mc.rows("prj", "pt", "ds=20240102,hh=00") == [(9,)]
    (create,) = fake_mc.requests_of("uploads")
    assert create.params["partition"] == "ds=20240102,hh=00"
    assert create.params["create_partition"] == "true"


def test_datetime_round_trip(fake_mc):
    fake_mc.create_table("prj", "o", [("ts", "datetime")])
    sink = open_table_sink("odps://prj/tables/o")
    when = datetime.datetime(2023, 5, 6, 7, 8, 9, 123456)
    ref = sink.stage("s00000", "0", [(when,)])
    sink.finalize([("s00000", ref)])
    assert read_all("odps://prj/tables/o") == [(when.replace(microsecond=123000),)]  # MaxCompute keeps ms


def test_block_ids_derive_from_slice_and_attempt(fake_mc):
    fake_mc.create_table("prj", "o", [("v", "bigint")])
    sink = open_table_sink("odps://prj/tables/o")
    (session,) = sink.session_ids
    assert sink.block_of("s00000", "0") == (session, 0)
    assert sink.block_of("s00000", "7") == (session, 7)
    assert sink.block_of("s00001", "0") == (session, 8)
    assert sink.block_of("slice-2499", 3) == (session, 2499 * 8 + 3)
    with pytest.raises(ConfigError, match="attempts_per_slice=8 .*--max-slice-attempts"):
        sink.block_of("s00001", "8")
    assert sink.block_of("s00001", "7.w0.1a2b3c4d") == (session, 15)  # the SDK's "<ordinal>.<attempt id>"
    with pytest.raises(TableIOError, match="slice_count"):
        sink.block_of("s02500", "0")
    with pytest.raises(TableIOError, match="ordinal"):
        sink.block_of("s00001", "a3f9")
    with pytest.raises(TableIOError, match="slice number"):
        sink.block_of("slice", "0")
    refs = [sink.stage(f"s{i:05d}", str(a), [(i * 10 + a,)]) for i in range(3) for a in range(2)]
    assert [r["block"] for r in refs] == [0, 1, 8, 9, 16, 17]
    assert {int(r.params["blockid"]) for r in fake_mc.requests_of("blockid", method="PUT")} == {0, 1, 8, 9, 16, 17}


def test_slice_count_spreads_blocks_over_enough_sessions(fake_mc):
    fake_mc.create_table("prj", "o", [("v", "bigint")])
    sink = MaxComputeSink.open("odps://prj/tables/o", slice_count=6000, attempts_per_slice=4)
    assert len(sink.session_ids) == 2  # 6000 * 4 blocks > 20000
    assert sink.block_of("s04999", "3") == (sink.session_ids[0], 19999)
    assert sink.block_of("s05000", "0") == (sink.session_ids[1], 0)
    assert MAX_BLOCKS == 20000
    first = sink.stage("s00001", "0", [(1,)])
    second = sink.stage("s05999", "2", [(2,)])
    sink.finalize([("s00001", first), ("s05999", second)])
    assert fake_mc.rows("prj", "o") == [(1,), (2,)]
    assert sorted(fake_mc.commits) == sorted([(sink.session_ids[0], [4]), (sink.session_ids[1], [3998])])


def test_a_retried_attempt_overwrites_its_block(fake_mc):
    fake_mc.create_table("prj", "o", [("v", "bigint")])
    sink = open_table_sink("odps://prj/tables/o")
    sink.stage("s00002", "1", [(1,), (2,)])
    fake_mc.fail_next["block"] = (500, "InternalServerError", "tunnel hiccup")  # retried transparently
    ref = sink.stage("s00002", "1", [(3,)])
    puts = [int(r.params["blockid"]) for r in fake_mc.requests_of("blockid", method="PUT")]
    assert puts == [17, 17, 17]
    sink.finalize([("s00002", ref)])
    assert fake_mc.rows("prj", "o") == [(3,)]


def test_a_refused_upload_is_not_retried(fake_mc):
    fake_mc.create_table("prj", "o", [("v", "bigint")])
    sink = open_table_sink("odps://prj/tables/o")
    assert len(sink.session_ids) == 1  # the session exists before the failing upload
    fake_mc.fail_next["block"] = (403, "NoPermission", "no write permission")
    with pytest.raises(CredentialsError, match="odps://prj/tables/o"):
        sink.stage("s00000", "0", [(1,)])
    assert len(fake_mc.requests_of("blockid", method="PUT")) == 1


def test_one_commit_with_exactly_the_committed_blocks(fake_mc):
    fake_mc.create_table("prj", "o", [("v", "bigint"), ("who", "string")])
    sink = open_table_sink("odps://prj/tables/o")
    desc = sink.describe()
    worker_a = sink_from_description(desc)  # workers re-attach to the one session by id
    worker_b = sink_from_description(desc)
    assert fake_mc.requests_of("uploads") and len(fake_mc.requests_of("uploads")) == 1
    win0 = worker_a.stage("s00000", "0", [(0, "a")])
    lose1 = worker_a.stage("s00001", "0", [(1, "loser")])
    win1 = worker_b.stage("s00001", "1", [(1, "b")])
    crashed2 = worker_a.stage("s00002", "0", [(2, "crashed")])
    win2 = worker_b.stage("s00002", "1", [(2, "b")])
    assert crashed2["block"] == 16
    worker_a.discard(lose1)
    assert fake_mc.uploads[lose1["session"]]["blocks"][lose1["block"]] == []  # emptied, not deleted
    committed = [("s00000", win0), ("s00001", win1), ("s00002", win2)]
    master = sink_from_description(desc)
    for sid, ref in committed:
        master.publish(sid, ref)
    assert fake_mc.rows("prj", "o") == []  # nothing is visible before the commit
    master.finalize(committed)
    assert fake_mc.rows("prj", "o") == [(0, "a"), (1, "b"), (2, "b")]
    assert len(fake_mc.commits) == 1
    master.finalize(committed)  # a redone finalize (after a master crash) commits nothing twice
    assert len(fake_mc.commits) == 1
    assert fake_mc.rows("prj", "o") == [(0, "a"), (1, "b"), (2, "b")]


def test_finalize_refuses_when_a_committed_block_is_missing(fake_mc):
    fake_mc.create_table("prj", "o", [("v", "bigint")])
    sink = open_table_sink("odps://prj/tables/o")
    ref = {"session": sink.session_ids[0], "block": 40, "rows": 1}
    with pytest.raises(TableIOError, match="lack committed blocks of 1 slice.*s00005"):
        sink.finalize([("s00005", ref)])
    assert fake_mc.commits == []


def test_a_missing_output_table(fake_mc):
    with pytest.raises(InputNotFoundError, match="odps://prj/tables/absent"):
        open_table_sink("odps://prj/tables/absent").stage("s00000", "0", [(1,)])


# --- credentials -----------------------------------------------------------------------------------


def test_credentials_from_the_pai_config_file(odps_config):
    odps_config.write_text("# PAI style\naccess_id = AK\naccess_key=SK\nend_point=http://e/api\ntunnel_endpoint=http://t\n")
    creds = load_credentials()
    assert (creds.access_id, creds.access_key, creds.endpoint, creds.tunnel_endpoint) == (
        "AK", "SK", "http://e/api", "http://t")


def test_config_file_errors_name_what_is_missing(odps_config, monkeypatch, tmp_path):
    odps_config.write_text("access_id=AK\nend_point=http://e/api\n")
    with pytest.raises(CredentialsError, match="access_key="):
        load_credentials()
    monkeypatch.setenv("ODPS_CONFIG_FILE_PATH", str(tmp_path / "absent.ini"))
    with pytest.raises(CredentialsError, match="absent.ini"):
        open_table_source("odps://prj/tables/t")


def test_no_credentials_at_all(odps_config, monkeypatch):
    monkeypatch.delenv("ODPS_CONFIG_FILE_PATH")
    with pytest.raises(CredentialsError, match="ODPS_CONFIG_FILE_PATH"):
        load_credentials()
    monkeypatch.setenv("ALIBABA_CLOUD_ACCESS_KEY_ID", "AK")
    with pytest.raises(CredentialsError, match="ALIBABA_CLOUD_ACCESS_KEY_SECRET, ODPS_ENDPOINT"):
        load_credentials()
    monkeypatch.setenv("ALIBABA_CLOUD_ACCESS_KEY_SECRET", "SK")
    monkeypatch.setenv("ODPS_ENDPOINT", "http://e/api")
    assert load_credentials().access_id == "AK"


def test_requests_are_signed_with_the_configured_key(fake_mc, table):
    captured = []
    real = fake_mc.handle

    def capture(req):
        captured.append(req.headers.get("Authorization", ""))
        return real(req)

    fake_mc.handle = capture
    open_table_source(table).row_count()
    assert captured and all("test-ak" in h for h in captured if h)


def test_pyodps_global_options_are_left_alone(fake_mc, table):
    import odps

    open_table_source(table).row_count()
    assert odps.options.account is None and odps.options.endpoint is None


def test_refused_credentials_are_a_credentials_error(fake_mc, table):
    fake_mc.fail_next["download"] = (401, "Unauthorized", "The access key is invalid")
    with pytest.raises(CredentialsError, match="odps://prj/tables/t"):
        open_table_source(table)
