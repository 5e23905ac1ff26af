"""The end of the data: one worker validates every record, its peers believe its note.

Real etcd, real sessions, records forged with a real client. What is checked is what each worker
reads: a peer that believes the note (``ds/<ds>/complete``) reads no commit record at all; one that
must not believe it (a record written since, a malformed or impossible note, no master to judge
the job) validates every record itself, as before.
"""

from __future__ import annotations

import pytest

from aimaster.data.coordinator import Dataset, PlanData
from aimaster.data.store import Op
from aimaster.errors import EtcdDataError
from aimaster.master.election import MasterKey

SLICES = 12


def _dataset(session, slices=SLICES):
    names = [f"f{i:05d}" for i in range(slices)]
    ds = Dataset(session, "f-end")
    ds.speculation = False
    ds.ensure_plan(lambda: PlanData("files", len(names), {"base": "/in"}, names), 1)
    return ds


def _reads(session):
    """Record every etcd call of a session's store by its description ("range <key>", ...)."""
    calls = []
    call = session.store.call

    def recorded(what, fn):
        calls.append(what)
        return call(what, fn)

    session.store.call = recorded
    return calls


def _record_reads(calls, ds):
    """Reads of ``done/`` or ``failed/`` records (not the counts, nor the keys-only change check)."""
    prefixes = [ds.store.key(ds.k.done), ds.store.key(ds.k.failed)]
    return [c for c in calls if c.startswith("range ") and any(p in c for p in prefixes)]


def _commit_all(ds):
    while True:
        claim = ds.try_claim()
        if claim is None:
            return
        assert ds.commit(claim)


@pytest.fixture
def finished_job(make_session):
    """A dataset whose every slice is committed, in a job whose master key is held."""
    master = make_session("master")
    assert MasterKey(master).try_take()
    writer = make_session("w-writer")
    ds = _dataset(writer)
    _commit_all(ds)
    return master, ds


def test_the_first_waiting_worker_validates_and_its_peers_read_no_record(make_session, finished_job):
    _, writer_ds = finished_job
    first = make_session("w-first")
    ds1 = _dataset(first)
    calls1 = _reads(first)
    assert ds1.finished()
    assert _record_reads(calls1, ds1), "the first worker must validate the records itself"
    note = first.store.get_value(ds1.k.complete)
    assert note["w"] == "w-first" and note["n"] == SLICES
    assert first.store.get_raw(ds1.k.completing)[0] is None, "the validation lock is released"

    for name in ("w-second", "w-third"):
        peer = make_session(name)
        ds = _dataset(peer)
        calls = _reads(peer)
        assert ds.finished()
        assert _record_reads(calls, ds) == [], calls


def test_a_record_written_after_the_note_is_validated_not_believed(make_session, finished_job):
    _, writer_ds = finished_job
    first = make_session("w-first")
    assert _dataset(first).finished()
    # A commit record rewritten by hand after the note: a peer must read it, and refuse it.
    key = f"{writer_ds.k.done}000003"
    first.store.put(key, {"not": "a commit record"})
    peer = make_session("w-peer")
    ds = _dataset(peer)
    with pytest.raises(EtcdDataError, match="000003"):
        ds.finished()


@pytest.mark.parametrize("note", [
    b"{not json",
    {"rev": 10**12, "n": SLICES, "keys": [SLICES, 0], "w": "mallory"},  # later than the note's own
    {"rev": 1, "n": SLICES + 1, "keys": [SLICES, 0], "w": "mallory"},  # another plan's size
    {"rev": 1, "n": SLICES, "keys": [SLICES + 1, 0], "w": "mallory"},  # other key counts
    {"rev": 1, "n": SLICES, "keys": "12", "w": "mallory"},
    {"rev": "1", "n": SLICES, "keys": [SLICES, 0], "w": "mallory"},
    {"rev": True, "n": SLICES, "keys": [SLICES, 0], "w": "mallory"},
    {"rev": 1, "n": SLICES, "keys": [SLICES, 0]},
    ["rev", 1],
])
def test_a_malformed_or_impossible_note_is_not_believed(make_session, finished_job, note):
    _, writer_ds = finished_job
    peer = make_session("w-peer")
    ds = _dataset(peer)
    peer.store.txn("forge a note", [], [Op.put(ds.k.complete, note)])  # bytes as given
    calls = _reads(peer)
    assert ds.finished()  # the dataset is complete: the peer finds so itself
    assert _record_reads(calls, ds), "a forged note must not spare the validation"


def test_a_record_deleted_after_the_note_is_noticed(make_session, finished_job):
    _, writer_ds = finished_job
    first = make_session("w-first")
    assert _dataset(first).finished()
    # An out-of-plan key keeps the raw count at the plan's size once a real record is deleted:
    # written before the note, so only the count the note holds tells the difference.
    peer = make_session("w-peer")
    ds = _dataset(peer)
    peer.store.delete(f"{writer_ds.k.complete}")
    peer.store.put(f"{writer_ds.k.done}999999", {"w": "mallory"})
    assert _dataset(make_session("w-second")).finished()  # a fresh note, counting the forged key
    peer.store.delete(f"{writer_ds.k.done}000004")
    calls = _reads(peer)
    assert not ds.finished()  # slice 000004 has no record: validated, and found incomplete
    assert _record_reads(calls, ds)


def test_a_commit_taken_back_after_the_note_makes_peers_validate(make_session, finished_job):
    # ``retaken`` changes when a MaxCompute commit is taken back (its upload session expired): what
    # was validated before may no longer hold, so a note older than that change is not believed.
    _, writer_ds = finished_job
    first = make_session("w-first")
    assert _dataset(first).finished()
    first.store.put(writer_ds.k.retaken, {"t": 1})
    peer = make_session("w-peer")
    ds = _dataset(peer)
    calls = _reads(peer)
    assert ds.finished()
    assert _record_reads(calls, ds), "a note older than a taken-back commit must not be believed"


def test_a_full_note_from_a_real_validation_is_believed(make_session, finished_job):
    # The shape the validator writes passes every check above (the parametrized forgeries differ
    # from it in one field each).
    first = make_session("w-first")
    ds1 = _dataset(first)
    assert ds1.finished()
    note = first.store.get_value(ds1.k.complete)
    assert set(note) == {"rev", "n", "keys", "w", "t"} and note["keys"] == [SLICES, 0]


def test_without_a_master_only_a_finalized_dataset_is_believed(make_session):
    writer = make_session("w-writer")
    _commit_all(_dataset(writer))
    first = make_session("w-first")
    ds1 = _dataset(first)
    assert ds1.finished()  # validates and notes
    peer = make_session("w-peer")
    ds = _dataset(peer)
    calls = _reads(peer)
    assert ds.finished()
    assert _record_reads(calls, ds), "with no master to judge the job, a note must not lead to finalize"
    ds1.finalize_unless_mastered()
    assert first.store.get_raw(ds1.k.finalized)[0] is not None
    late = make_session("w-late")
    ds_late = _dataset(late)
    calls = _reads(late)
    assert ds_late.finished()
    assert _record_reads(calls, ds_late) == []


def test_a_peer_validating_keeps_the_others_waiting_without_reading(make_session, finished_job):
    validating = make_session("w-validating")
    ds_v = _dataset(validating)
    validating.leased(lambda lease: validating.store.put(ds_v.k.completing, {"w": "w-validating"}, lease=lease))
    peer = make_session("w-peer")
    ds = _dataset(peer)
    calls = _reads(peer)
    assert not ds.finished()
    assert _record_reads(calls, ds) == []
    validating.close()  # its lease goes, and the lock with it
    assert ds.finished()


def test_a_waiting_worker_counts_no_commit_record_while_a_peer_holds_a_claim(make_session):
    """While a peer still holds a slice, ``finished`` answers from the claims in flight: no count
    of ``done/`` (etcd walks every commit record to count them), no read of any other record. A
    claim key written by hand is not believed: bound to no lease, it is deleted and the counts
    decide; bound to a live lease on a committed slice, it keeps nothing from finishing."""
    master = make_session("master")
    assert MasterKey(master).try_take()
    writer = make_session("w-writer")
    ds = _dataset(writer)
    held = None
    while True:
        claim = ds.try_claim()
        if claim is None:
            break
        if held is None:
            held = claim  # the peer's last slice, still in its hands
            continue
        assert ds.commit(claim)
    waiter = make_session("w-waiter")
    dsw = _dataset(waiter)
    calls = _reads(waiter)
    assert not dsw.finished()
    done_key = waiter.store.key(dsw.k.done)
    assert not [c for c in calls if c.startswith("count ") and done_key in c], calls
    assert [c for c in calls if done_key in c] == [f"get {done_key}{held.slice_id}"], calls
    assert ds.commit(held)
    leased = dsw.k.claim + dsw.slice_id(5)
    waiter.store.put(leased, {"w": "w-ghost", "at": "w-ghost.00000001", "a": 1}, lease=waiter.lease)
    assert dsw.finished(), "a claim forged on a committed slice, even bound to a live lease, proves nothing"
    waiter.store.delete(leased)
    waiter.store.delete(dsw.k.complete)  # the note written just now would otherwise answer below
    # A claim key with no lease (by hand) for a committed slice must not keep the job unfinished.
    forged = dsw.k.claim + dsw.slice_id(3)
    waiter.store.put(forged, {"w": "w-ghost", "at": "w-ghost.00000000", "a": 1})
    calls.clear()
    assert dsw.finished()
    assert waiter.store.get_raw(forged)[0] is None, "the unleased claim key is deleted"
    assert [c for c in calls if c.startswith("count ") and done_key in c], "the counts decide then"
