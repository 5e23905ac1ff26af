"""The slice records: each round-trips through its compact JSON, and each hostile field is refused
in one place, with the key named."""

from __future__ import annotations

import pytest

from aimaster.data.records import AttemptRecord, ClaimRecord, CommitRecord, FailureRecord, SlotRecord, TodoRecord
from aimaster.data.store import dumps
from aimaster.errors import EtcdDataError

KEY = "/aimaster/v1/jobs/j/ds/d/x/000001"
SINK = {"kind": "files", "dir": "/out"}


@pytest.mark.parametrize("record", [
    ClaimRecord(worker="w0", attempt="w0.ab12cd34", attempt_no=2, started=12.5),
    ClaimRecord(worker="w1", attempt="w1.ffff0000", attempt_no=1, started=3.0, of="w0.ab12cd34"),
    ClaimRecord(worker="w0", attempt="w0.1234.aa", attempt_no=1, started=1.0, via="w0.1234"),
    TodoRecord(), TodoRecord(attempts=3, error="boom", worker="w2"), TodoRecord(retried=99.0),
    AttemptRecord(attempts=2, worker="w0", copies=1, error=None), AttemptRecord(attempts=1, error="x"),
    CommitRecord(worker="w0", attempt="w0.a", attempt_no=1, committed=5.0, duration=0.25, items=7,
                 outputs=({"sink": SINK, "ref": {"staged": "s", "final": "f"}},), speculative=True,
                 claim_latency=0.001, commit_latency=0.002),
    CommitRecord(worker="w0", attempt="w0.a"),
    FailureRecord(attempts=4, error="failed 4 attempts; last: boom", failed=7.0, worker="w3"),
    SlotRecord("w1.ffff0000"),
])
def test_each_record_round_trips_through_its_json(record):
    kind = type(record)
    wire = dumps(record.to_json())
    again = kind.from_json(wire, KEY, SINK) if kind is CommitRecord else kind.from_json(wire, KEY)
    assert again == record
    assert kind.from_json(wire.encode("utf-8"), KEY, **({"sink": SINK} if kind is CommitRecord else {})) == record


def test_the_compact_keys_stay_on_the_wire():
    assert ClaimRecord("w0", "w0.a", 1, 2.0, of="w9.b").to_json() == {"w": "w0", "at": "w0.a", "a": 1, "t": 2.0,
                                                                     "of": "w9.b"}
    assert TodoRecord(attempts=1, error=None).to_json() == {"a": 1, "e": None}
    assert AttemptRecord(attempts=1, worker="w0").to_json() == {"a": 1, "w": "w0", "b": 0, "e": None}
    commit = CommitRecord("w0", "w0.a", 1, 5.0, 0.5, 3, (), True, 0.1, 0.2).to_json()
    assert commit == {"w": "w0", "at": "w0.a", "a": 1, "t": 5.0, "dt": 0.5, "n": 3, "out": [], "spec": True,
                      "lc": 0.1, "lm": 0.2}
    assert "spec" not in CommitRecord("w0", "w0.a").to_json()
    assert SlotRecord("w1.b").to_json() == {"at": "w1.b"}


@pytest.mark.parametrize("kind, value", [
    (ClaimRecord, ["not", "an", "object"]),
    (ClaimRecord, {"at": "w0.a"}),
    (ClaimRecord, {"w": "w0"}),
    (ClaimRecord, {"w": 7, "at": "w0.a"}),
    (ClaimRecord, {"w": "w0", "at": "w0.a", "a": "1"}),
    (ClaimRecord, {"w": "w0", "at": "w0.a", "a": True}),
    (ClaimRecord, {"w": "w0", "at": "w0.a", "t": "yesterday"}),
    (ClaimRecord, {"w": "w0", "at": "w0.a", "of": 3}),
    (TodoRecord, {"a": "many"}),
    (TodoRecord, {"e": {"nested": 1}}),
    (AttemptRecord, {"b": 1.5}),
    (AttemptRecord, {"w": ["w0"]}),
    (CommitRecord, {"w": "w0"}),
    (CommitRecord, {"at": "", "w": "w0"}),
    (CommitRecord, {"at": "w0.a"}),
    (CommitRecord, {"at": "w0.a", "w": "w0", "n": "7"}),
    (CommitRecord, {"at": "w0.a", "w": "w0", "dt": True}),
    (CommitRecord, {"at": "w0.a", "w": "w0", "out": {"sink": SINK}}),
    (CommitRecord, {"at": "w0.a", "w": "w0", "out": [{"sink": {"kind": "files", "dir": "/etc"}, "ref": {}}]}),
    (FailureRecord, {"e": 17}),
    (FailureRecord, "a string"),
    (SlotRecord, {"at": 1}),
])
def test_each_hostile_field_is_refused_with_the_key_named(kind, value):
    with pytest.raises(EtcdDataError, match=KEY):
        kind.from_json(dumps(value), KEY, **({"sink": SINK} if kind is CommitRecord else {}))


def test_garbage_bytes_are_refused_with_the_key_named():
    with pytest.raises(EtcdDataError, match=KEY):
        ClaimRecord.from_json(b"\xff not json", KEY)


def test_a_commit_with_outputs_needs_an_agreed_sink_and_reads_it_only_then():
    asked = []

    def sink():
        asked.append(1)
        return None

    CommitRecord.from_json({"w": "w0", "at": "w0.a", "out": []}, KEY, sink=sink)
    assert asked == []  # no outputs: the agreed sink is not read
    with pytest.raises(EtcdDataError, match="agreed on no output sink"):
        CommitRecord.from_json({"w": "w0", "at": "w0.a", "out": [{"sink": SINK, "ref": {}}]}, KEY, sink=sink)
    assert asked == [1]


def test_advisory_fields_read_as_absent_and_a_todo_value_reads_tolerantly():
    record = CommitRecord.from_json({"w": "w0", "at": "w0.a", "lc": "slow", "spec": "yes"}, KEY)
    assert record.claim_latency is None and record.speculative is False
    assert TodoRecord.tolerant(b"[1, 2]", KEY) == TodoRecord()
    assert TodoRecord.tolerant(dumps({"a": 2, "e": "boom"}), KEY) == TodoRecord(attempts=2, error="boom")
