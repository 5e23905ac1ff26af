"""``--slice-timeout``: a slice that hangs inside a healthy worker (its lease alive) is abandoned,
its worker killed and relaunched, and the slice handed out again as a failed attempt."""

import json
import sys

from helpers import assert_exactly_once, make_files, program, read_outputs, run_aimaster


def _run(tmp_path, *extra, env=None):
    return run_aimaster("run", "-n", "2", "--job-id", "hangs", "--state-dir", str(tmp_path / "s"), "--quiet",
                        "--slice-timeout", "2", *extra, "--", sys.executable, program("content_worker.py"),
                        str(tmp_path / "in"), str(tmp_path / "out"), "3", env=env, timeout=180)


def _report(tmp_path):
    return json.loads((tmp_path / "s" / "jobs" / "hangs" / "report.json").read_text())


def test_a_hung_attempt_is_abandoned_and_redone(tmp_path):
    inputs = make_files(str(tmp_path / "in"), 12, nested=False)
    (tmp_path / "in" / "f00004.txt").write_text("HANG\n")  # hangs the first time only
    (tmp_path / "marks").mkdir()
    # No speculation: a copy of the hung slice would win (and the primary be stopped as moot) before
    # the timeout; this test is about the timeout alone.
    r = _run(tmp_path, "--no-speculation", env={"HANG_ONCE_DIR": str(tmp_path / "marks")})
    assert r.returncode == 0, r.stderr
    assert "past --slice-timeout=2s: killing it" in r.stderr
    assert_exactly_once(str(tmp_path / "out"), inputs)
    report = _report(tmp_path)
    assert report["relaunches"] == {"slice-timeout": 1}, report["relaunches"]
    assert report["attempts"]["retried"] == 1 and report["attempts"]["max"] == 2


def test_a_slice_hanging_every_attempt_fails_and_the_job_goes_on(tmp_path):
    """With speculation on (the default): a copy of the slice hangs too, and is abandoned as well."""
    inputs = make_files(str(tmp_path / "in"), 12, nested=False)
    (tmp_path / "in" / "f00004.txt").write_text("HANG\n")  # slice 000001 hangs on every attempt
    r = _run(tmp_path, "--max-slice-attempts", "2")
    assert r.returncode == 1, r.stderr
    [row] = _report(tmp_path)["failed_slices"]
    assert row["slice"] == "000001" and "--slice-timeout=2s" in row["error"], row
    rest = [n for n in inputs if n not in ("f00003.txt", "f00004.txt", "f00005.txt")]
    assert sorted(read_outputs(str(tmp_path / "out"))) == rest  # every other input, once


def test_attempts_are_aged_from_first_sight_and_parked_ones_never_time_out(make_session):
    """The timer's bookkeeping on real claim and copy keys: ages on the supervisor's clock, a new
    attempt of the same slice starts from zero, a slice its holder parks is not overdue."""
    from aimaster.data.coordinator import Dataset, PlanData
    from aimaster.master.slice_timeout import SliceTimeout

    holder = make_session("w-hold")
    ds = Dataset(holder, "d-timer")
    ds.ensure_plan(lambda: PlanData("files", 2, {"base": "/x"}, ["a", "b"]), 1)
    claim = ds.try_claim()
    timer = SliceTimeout(10)
    store = holder.store
    assert timer.attempts(store, ["d-timer"], now=100.0) == {"w-hold": [("d-timer", claim.slice_id, 0.0)]}
    [(_, sid, age)] = timer.attempts(store, ["d-timer"], now=102.0)["w-hold"]
    assert (sid, age) == (claim.slice_id, 2.0)
    held = timer.attempts(store, ["d-timer"], now=104.0)["w-hold"]  # rounds 2 s apart: no blind gap
    assert timer.overdue(held, None) == []
    held = timer.attempts(store, ["d-timer"], now=106.0)["w-hold"]
    held = timer.attempts(store, ["d-timer"], now=108.0)["w-hold"]
    held = timer.attempts(store, ["d-timer"], now=110.5)["w-hold"]
    assert timer.overdue(held, None) == [("d-timer", claim.slice_id, 10.5)]
    parked = {"state": "waiting", "held": [f"d-timer/{claim.slice_id}"]}
    assert timer.overdue(held, parked) == []  # finished, only not committed yet: not running
    # A gap longer than a few rounds (the supervisor could not look) is not counted.
    held = timer.attempts(store, ["d-timer"], now=200.0)["w-hold"]
    assert held[0][2] == 10.5
    # Once the attempt is gone (released), a new one of the same slice is timed afresh.
    ds.release(claim)
    again = ds.try_claim()
    held = timer.attempts(store, ["d-timer"], now=201.0)["w-hold"]
    assert [(s, a) for _, s, a in held] == [(again.slice_id, 0.0)]
