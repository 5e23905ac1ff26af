"""MaxCompute blocks go up as Arrow (pyodps' ``open_arrow_writer``) where that writes the same values.

The stand-in decodes an Arrow block the way the tunnel does (``PUT ...&blockid=N&arrow``, IPC
record-batch messages in CRC-checked chunks, read with the table's schema), so the rows committed
through either path are compared, not assumed.
"""

from __future__ import annotations

import datetime

import pytest
from maxcompute_fake import CHUNK_SIZE, ArrowBlock, frame_chunks, unframe_chunks

from aimaster.errors import ConfigError
from aimaster.io.tables import open_table_sink

ROWS = [(1, 0.5, "a", True, b"\x00\xff"), (2, None, "\u4e2d\u6587", False, None), (None, -1.25, None, None, b"")]
COLUMNS = [("id", "bigint"), ("y", "double"), ("s", "string"), ("ok", "boolean"), ("raw", "binary")]


def _puts(fake):
    return fake.requests_of("blockid", method="PUT")


def _stage_and_commit(fake, rows, slice_id="s00000"):
    sink = open_table_sink("odps://prj/tables/o")
    ref = sink.stage(slice_id, "0", rows)
    sink.finalize([(slice_id, ref)])
    return fake.rows("prj", "o")


def test_plain_columns_go_up_as_arrow(fake_mc):
    fake_mc.create_table("prj", "o", COLUMNS)
    assert _stage_and_commit(fake_mc, ROWS) == ROWS
    [put] = _puts(fake_mc)
    assert "arrow" in put.params
    (session,) = fake_mc.uploads.values()
    assert all(isinstance(block, list) for block in session["blocks"].values())  # decoded on arrival


def test_records_on_request_write_the_same_rows(fake_mc, monkeypatch):
    monkeypatch.setenv("AIMASTER_ODPS_UPLOAD", "records")
    fake_mc.create_table("prj", "o", COLUMNS)
    assert _stage_and_commit(fake_mc, ROWS) == ROWS
    assert all("arrow" not in put.params for put in _puts(fake_mc))


def test_a_bad_upload_mode_is_one_clear_error(fake_mc, monkeypatch):
    monkeypatch.setenv("AIMASTER_ODPS_UPLOAD", "parquet")
    fake_mc.create_table("prj", "o", COLUMNS)
    with pytest.raises(ConfigError, match="AIMASTER_ODPS_UPLOAD must be one of auto, arrow, records"):
        open_table_sink("odps://prj/tables/o").stage("s00000", "0", ROWS)


def test_datetime_columns_keep_the_record_writer(fake_mc):
    fake_mc.create_table("prj", "o", [("v", "bigint"), ("ts", "datetime")])
    when = datetime.datetime(2023, 5, 6, 7, 8, 9, 123000)
    assert _stage_and_commit(fake_mc, [(1, when)]) == [(1, when)]
    assert all("arrow" not in put.params for put in _puts(fake_mc))


def test_an_emptied_block_keeps_the_record_writer(fake_mc):
    fake_mc.create_table("prj", "o", COLUMNS)
    sink = open_table_sink("odps://prj/tables/o")
    loser = sink.stage("s00001", "0", ROWS)
    sink.discard(loser)
    first, second = _puts(fake_mc)
    assert "arrow" in first.params and "arrow" not in second.params
    (session,) = fake_mc.uploads.values()
    assert session["blocks"][loser["block"]] == []


def test_many_batches_and_chunks_in_one_block(fake_mc):
    fake_mc.create_table("prj", "o", [("id", "bigint"), ("s", "string")])
    sink = open_table_sink("odps://prj/tables/o")
    stage = sink.open_stage("s00000", "0")
    rows = [(i, "x" * (i % 50)) for i in range(30000)]  # well over one 64 KiB chunk
    for start in range(0, len(rows), 7000):
        stage.write(rows[start:start + 7000])
    ref = stage.commit()
    sink.finalize([("s00000", ref)])
    assert fake_mc.rows("prj", "o") == rows
    assert all("arrow" in put.params for put in _puts(fake_mc))


def test_lazy_blocks_keep_arrow_bodies_until_read(mc_lazy):
    fake = mc_lazy
    fake.create_table("prj", "o", COLUMNS)
    assert _stage_and_commit(fake, ROWS) == ROWS
    (session,) = fake.uploads.values()
    assert all(isinstance(block, ArrowBlock) for block in session["blocks"].values())


@pytest.fixture
def mc_lazy(fake_mc):
    fake_mc.lazy_blocks = True
    return fake_mc


@pytest.mark.parametrize("size", [0, 1, CHUNK_SIZE - 1, CHUNK_SIZE, CHUNK_SIZE + 1, 3 * CHUNK_SIZE, 65537])
def test_the_stand_in_unframes_what_is_framed(size):
    data = bytes(range(256)) * (size // 256) + bytes(size % 256)
    assert unframe_chunks(frame_chunks(data)) == data


def test_the_stand_in_refuses_a_corrupted_arrow_body():
    from maxcompute_fake import _HttpError

    body = bytearray(frame_chunks(b"some record batch bytes" * 5000))
    body[100] ^= 0x01
    with pytest.raises(_HttpError, match="checksum"):
        unframe_chunks(bytes(body))
