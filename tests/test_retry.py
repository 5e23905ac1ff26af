"""The failed-slices list and ``aimaster retry``: a job failed on bad data, the data fixed, the job
retried, every input committed exactly once; the reset transaction guarded on the slice's state."""

import json
import sys

from helpers import assert_exactly_once, make_files, program, read_outputs, run_aimaster

from aimaster.data.coordinator import Dataset, PlanData
from aimaster.master import retry


def _job(tmp_path, *extra, env=None):
    return run_aimaster("run", "-n", "2", "--job-id", "fixme", "--state-dir", str(tmp_path / "s"), "--quiet",
                        "--max-slice-attempts", "2", *extra, "--", sys.executable, program("content_worker.py"),
                        str(tmp_path / "in"), str(tmp_path / "out"), "5", env=env, timeout=180)


def test_retry_after_fixing_a_poison_file(tmp_path):
    inputs = make_files(str(tmp_path / "in"), 20, nested=False)
    poison = tmp_path / "in" / "f00007.txt"
    poison.write_text("POISON header\n")

    # 0.4 s a file: each worker holds the poison slice about a second before dying on it. (Deaths
    # within a round of the claim are covered by test_hopeless's unseen-poison test.)
    r = _job(tmp_path, env={"FILE_SLEEP": "0.4"})
    assert r.returncode == 1, r.stderr
    report = json.loads((tmp_path / "s" / "jobs" / "fixme" / "report.json").read_text())
    assert report["state"] == "Failed"
    [row] = report["failed_slices"]
    assert row["slice"] == "000001" and "cannot decode f00007.txt" in row["error"] and row["attempts"] == 2
    assert row["items"]["files"] == [str(tmp_path / "in" / f"f{i:05d}.txt") for i in range(5, 10)]
    assert "aimaster retry --job-id fixme" in r.stderr  # the summary says what to do next
    assert len(read_outputs(str(tmp_path / "out"))) == 15

    r = run_aimaster("status", "--job-id", "fixme", "--state-dir", str(tmp_path / "s"), "--failed", "--json",
                     timeout=60)
    assert r.returncode == 0, r.stderr
    [listed] = json.loads(r.stdout)["failed_slices"]
    assert listed["items"] == row["items"] and listed["error"] == row["error"]
    r = run_aimaster("status", "--job-id", "fixme", "--state-dir", str(tmp_path / "s"), "--failed", timeout=60)
    assert f"items: {tmp_path / 'in' / 'f00005.txt'}" in r.stdout, r.stdout

    poison.write_text("file 7\n")  # the data is fixed
    # No COMMAND, no -n: both are the job's own (its record keeps them).
    r = run_aimaster("retry", "--job-id", "fixme", "--state-dir", str(tmp_path / "s"), "--quiet", timeout=180)
    assert r.returncode == 0, r.stderr
    assert "retry: 1 failed slice(s) of dataset" in r.stderr and "(2 worker(s))" in r.stderr, r.stderr
    assert_exactly_once(str(tmp_path / "out"), inputs)
    report = json.loads((tmp_path / "s" / "jobs" / "fixme" / "report.json").read_text())
    assert report["state"] == "Succeeded" and report["failed_slices"] == []
    assert report["slices"] == {"total": 4, "committed": 4, "failed": 0}

    r = run_aimaster("retry", "--job-id", "fixme", "--state-dir", str(tmp_path / "s"), timeout=60)
    assert r.returncode == 0 and "already succeeded; nothing to retry" in r.stderr


def test_retry_of_an_unknown_job_is_one_line(tmp_path):
    r = run_aimaster("retry", "--job-id", "nope", "--state-dir", str(tmp_path / "s"), timeout=60)
    assert r.returncode != 0
    assert r.stderr.strip().count("\n") == 0 and "no job nope" in r.stderr, r.stderr


def _failed_dataset(make_session):
    """A 3-slice dataset whose slice 1 failed its one attempt, and which was finalized."""
    session = make_session("w-retry")
    ds = Dataset(session, "d-retry", max_attempts=1)
    ds.ensure_plan(lambda: PlanData("files", 3, {"base": "/x"}, ["a", "b", "c"]), 1)
    claims = {}
    while len(claims) < 3:
        c = ds.try_claim()
        claims[c.slice_id] = c
    ds.commit(claims["000000"])
    ds.commit(claims["000002"])
    ds.release(claims["000001"], "ValueError: bad bytes")
    assert set(ds.completion()[1]) == {"000001"}
    session.store.put(ds.k.finalized, {"t": 0})
    return session, ds


def test_reset_puts_a_failed_slice_back_with_a_new_budget(make_session):
    session, ds = _failed_dataset(make_session)
    assert retry.reset_failed(session) == {"d-retry": 1}
    st = session.store
    assert st.get_value(ds.k.failed + "000001") is None and st.get_value(ds.k.attempts + "000001") is None
    assert st.get_value(ds.k.todo + "000001")["a"] == 0
    assert st.get_value(ds.k.finalized) is None, "a dataset with a slice to do is not finalized"
    again = Dataset(session, "d-retry", max_attempts=1)
    again.load_plan()
    claim = again.try_claim()
    assert claim.slice_id == "000001" and claim.attempt_no == 1
    assert again.commit(claim) and again.is_complete()


def test_reset_is_guarded_on_the_failed_record(make_session):
    session, ds = _failed_dataset(make_session)
    [(sid, rev)] = ds.completion()[1].items()
    record = dict(ds.failed())[sid]
    st = session.store
    st.put(ds.k.failed + sid, dict(record, e="failed again meanwhile"))  # the record changed since it was read
    assert not retry._put_back(ds, sid, rev, record)
    assert st.get_value(ds.k.todo + sid) is None and st.get_value(ds.k.finalized) is not None
    # A slice that is in todo already (someone put it back) is not put back twice.
    _, rev = next(iter(ds.completion()[1].items()))
    st.put(ds.k.todo + sid, {"a": 0})
    assert not retry._put_back(ds, sid, rev, record)



def test_reset_refuses_a_finalized_maxcompute_output(make_session):
    """Its upload sessions were committed at the job's end: nothing changes, one line says why."""
    import pytest

    from aimaster.errors import JobError

    session, ds = _failed_dataset(make_session)
    session.store.put(ds.k.sink, {"kind": "odps", "url": "odps://p/tables/scores", "sessions": ["s1"]})
    with pytest.raises(JobError, match="MaxCompute table odps://p/tables/scores.*new job"):
        retry.reset_failed(session)
    assert session.store.get_value(ds.k.failed + "000001") is not None


def test_failed_table_slice_lists_its_row_range(make_session):
    from aimaster.master.failed_slices import failed_rows, item_summary

    session = make_session("w-rows")
    ds = Dataset(session, "t-rows", max_attempts=1)
    ds.ensure_plan(lambda: PlanData("table", 10, {"url": "/data/t.parquet", "offset": 5}), 4)
    claims = {}
    while len(claims) < 3:
        c = ds.try_claim()
        claims[c.slice_id] = c
    for sid in ("000000", "000002"):
        ds.commit(claims[sid])
    ds.release(claims["000001"], "SchemaError: bad row")
    [row] = failed_rows(ds)
    assert row["items"] == {"start": 9, "end": 13, "table": "/data/t.parquet",
                            "url": "/data/t.parquet?start=9&end=13"}
    assert "SchemaError: bad row" in row["error"] and row["attempts"] == 1
    assert item_summary(row) == "/data/t.parquet?start=9&end=13"
