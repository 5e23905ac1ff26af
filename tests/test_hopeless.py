"""Fail fast on hopeless crashes: a program that cannot run at all ends its job at once, root cause shown once.

Each crash class is a real worker script run by a real ``aimaster run -n 2``: a SyntaxError, a missing
module, and code that raises on every input with a message that differs each time (a path, a number,
a hex address). The assertions are on what the master did (relaunches, the reason, what it printed),
never on wall time.
"""

from __future__ import annotations

import json
import sys
import textwrap

import pytest
from helpers import assert_exactly_once, make_files, program, run_aimaster

from aimaster.master.hopeless import HopelessCrashes, root_cause, where
from aimaster.master.policy import Failure, classify_exit

RAISE_ON_EVERY_INPUT = """
import os, random
from aimaster import inference as elastic_inference

client = elastic_inference.PosixFileClient(elastic_inference.PosixFileConfig(
    input_dir=os.environ["IN"], output_dir=os.environ["OUT"], slice_size=2))
for path in client.get_next_slice():
    raise ValueError(f"cannot decode {path}: bad byte {random.randrange(10**6)} at 0x{random.getrandbits(48):x}")
"""

PROGRAMS = {
    "syntax": ("def infer(batch:\n    return batch\n", "SyntaxError", 1),
    "missing-module": ("import os\nimport aimaster_no_such_module_for_tests\n", "ModuleNotFoundError", 2),
    "raise-every-input": (RAISE_ON_EVERY_INPUT, "ValueError: cannot decode", 8),
}


def _job(tmp_path, source: str, extra=()):
    script = tmp_path / "infer.py"
    script.write_text(textwrap.dedent(source))
    make_files(str(tmp_path / "in"), 20)
    env = {"IN": str(tmp_path / "in"), "OUT": str(tmp_path / "out")}
    r = run_aimaster("run", "-n", "2", "--job-id", "hopeless", "--state-dir", str(tmp_path / "state"), "--quiet",
                     *extra, "--", sys.executable, str(script), env=env, timeout=120)
    report = json.loads((tmp_path / "state" / "jobs" / "hopeless" / "report.json").read_text())
    return script, r, report


@pytest.mark.parametrize("kind", sorted(PROGRAMS))
def test_a_hopeless_crash_fails_the_job_at_once_with_its_root_cause(tmp_path, kind):
    source, error, line = PROGRAMS[kind]
    script, r, report = _job(tmp_path, source)
    assert r.returncode == 1, r.stderr
    assert report["state"] == "Failed"
    reason = report["reason"] or ""
    assert reason.startswith("hopeless: every worker exited the same way"), reason
    assert error in reason and f'File "{script}", line {line}' in reason, reason
    # Two slots, each dead once: not 19. Deaths that all fell on one slice (a late-starting worker
    # took the first one's requeued slice) could be a poison slice: they go on until one falls on
    # another slice, which is at the latest after --max-slice-attempts (3) deaths on that one; and
    # one more death may land while the last is being judged.
    assert sum(report["relaunches"].values()) <= 3 + 1, report["relaunches"]
    assert len([e for e in report["worker_exits"] if e.get("error")]) <= 3 + 2
    # The root cause, with its file and line, printed once.
    assert r.stderr.count("the root cause, from") == 1, r.stderr
    block = [ln for ln in r.stderr.splitlines() if ln.startswith("  | ")]
    assert any(f'File "{script}", line {line}' in ln for ln in block), r.stderr
    assert any(error.split(":")[0] in ln for ln in block), r.stderr
    assert report["slices"]["committed"] == 0


def test_an_explicit_max_num_of_same_error_keeps_counting(tmp_path):
    """--max-num-of-same-error given: the user chose the count; the same crash fails at that count."""
    source, _, _ = PROGRAMS["missing-module"]
    _, r, report = _job(tmp_path, source, extra=("--max-num-of-same-error", "4"))
    assert r.returncode == 1, r.stderr
    assert "the same failure happened 4 times (--max-num-of-same-error=4)" in report["reason"], report["reason"]
    assert "the root cause, from" not in r.stderr


def _exit(message: str) -> Failure:
    return classify_exit(1, message)


def test_hopeless_needs_every_slot_and_two_deaths():
    h = HopelessCrashes(slots=2)
    assert not h.observe(0, _exit("SyntaxError: invalid syntax"), [], committed=False)
    assert h.observe(1, _exit("SyntaxError: invalid syntax"), [], committed=False)
    single = HopelessCrashes(slots=1)
    assert not single.observe(0, _exit("ImportError: x"), [], committed=False)
    assert single.observe(0, _exit("ImportError: x"), [], committed=False)


def test_messages_differing_in_paths_numbers_and_hex_are_one_crash():
    h = HopelessCrashes(slots=2)
    assert not h.observe(0, _exit("ValueError: cannot decode /data/a/f00012.txt: byte 17 at 0x7f3a2c"),
                         ["ds/000001"], committed=False)
    assert h.observe(1, _exit("ValueError: cannot decode /data/b/f00913.txt: byte 4021 at 0xdeadbeef"),
                     ["ds/000007"], committed=False)


def test_what_a_relaunch_may_fix_is_not_hopeless():
    # A worker that committed something: the program works (on some data).
    h = HopelessCrashes(slots=1)
    assert not h.observe(0, _exit("KeyError: 'x'"), [], committed=True)
    assert not h.observe(0, _exit("KeyError: 'x'"), [], committed=False)  # and stays so for the run
    # Killed by a signal, an environment error, a transient-looking message.
    for failure in (classify_exit(-9), classify_exit(75, "TableIOError: blip"),
                    _exit("ConnectionError: connection refused")):
        h = HopelessCrashes(slots=1)
        assert not h.observe(0, failure, [], committed=False)
        assert not h.observe(0, failure, [], committed=False)
    # One poison slice killing whoever takes it: the job must survive it.
    h = HopelessCrashes(slots=2)
    assert not h.observe(0, _exit("poisoned input d1/f1.txt"), ["ds/000005"], committed=False)
    assert not h.observe(1, _exit("poisoned input d1/f1.txt"), ["ds/000005"], committed=False)
    # Two deaths on one slice could be either; the next death of the same kind on another slice
    # tells a program that cannot run (even if the first two held prefetched slices as well).
    h = HopelessCrashes(slots=2)
    assert not h.observe(0, _exit("ValueError: cannot decode"), ["ds/000005", "ds/000006"], committed=False)
    assert not h.observe(1, _exit("ValueError: cannot decode"), ["ds/000005", "ds/000008"], committed=False)
    assert h.observe(0, _exit("ValueError: cannot decode"), ["ds/000007"], committed=False)
    # One slot, a poison slice with a prefetched neighbour that changes each time: still poison.
    h = HopelessCrashes(slots=1)
    for neighbour in ("000006", "000007", "000008"):
        assert not h.observe(0, _exit("poisoned input"), ["ds/000005", f"ds/{neighbour}"], committed=False)
    # Different errors on different slots.
    h = HopelessCrashes(slots=2)
    assert not h.observe(0, _exit("KeyError: 'a'"), [], committed=False)
    assert not h.observe(1, _exit("TypeError: bad"), [], committed=False)


def test_root_cause_keeps_the_traceback_with_its_file_and_line():
    tail = ["some log line", "Traceback (most recent call last):", '  File "/x/infer.py", line 9, in <module>',
            "    main()", '  File "/x/model.py", line 3, in main', "    raise ValueError('no')", "ValueError: no"]
    cause = root_cause(tail)
    assert cause[0].startswith("Traceback") and cause[-1] == "ValueError: no"
    assert where(cause) == 'File "/x/model.py", line 3'
    syntax = ["noise", '  File "/x/infer.py", line 1', "    def f(:", "          ^", "SyntaxError: invalid syntax"]
    assert root_cause(syntax)[0].strip() == 'File "/x/infer.py", line 1'
    assert where(root_cause(syntax)) == 'File "/x/infer.py", line 1'
    assert root_cause(["just one line"]) == ["just one line"] and where(["just one line"]) is None


def test_deaths_on_one_poison_slice_unseen_by_the_master_are_a_poison_slice_not_a_hopeless_program(tmp_path):
    """Each worker dies within milliseconds of claiming the job's one slice, and its exit revokes
    its lease (heartbeat included) before the master's next look: no heartbeat of it holding the
    slice is ever seen. The slice's attempts record still names it, so the deaths read as one poison
    slice (failed after --max-slice-attempts, listed for a retry), not as a program that cannot run."""
    make_files(str(tmp_path / "in"), 5, nested=False)
    (tmp_path / "in" / "f00000.txt").write_text("POISON header\n")
    r = run_aimaster("run", "-n", "1", "--job-id", "poison", "--state-dir", str(tmp_path / "s"), "--quiet",
                     "--max-slice-attempts", "3", "--", sys.executable, program("content_worker.py"),
                     str(tmp_path / "in"), str(tmp_path / "out"), "5", timeout=120)
    assert r.returncode == 1, r.stderr
    report = json.loads((tmp_path / "s" / "jobs" / "poison" / "report.json").read_text())
    assert report["state"] == "Failed"
    assert not (report["reason"] or "").startswith("hopeless"), report["reason"]
    [row] = report["failed_slices"]
    assert row["slice"] == "000000" and row["attempts"] == 3 and "cannot decode f00000.txt" in row["error"], row


FIXABLE = """
import os
import aimaster
from aimaster import inference as elastic_inference

if not os.environ.get("FIXED"):
    raise RuntimeError("model weights not configured")
client = elastic_inference.PosixFileClient(elastic_inference.PosixFileConfig(
    input_dir=os.environ["IN"], output_dir=os.environ["OUT"], slice_size=5))
while True:
    try:
        paths = client.get_next_slice()
    except aimaster.data.OutOfRangeException:
        break
    with client.open_slice_output(suffix=".txt") as out:
        for path in paths:
            out.write(os.path.relpath(path, os.environ["IN"]) + "\\n")
    client.commit_slice()
"""


def test_fixed_and_resumed_the_summary_counts_every_run(tmp_path):
    """A hopeless first run, fixed, resumed with the same --job-id: the end summary and the report
    add up both runs (the slices were always read from etcd; the relaunches and starts are carried)."""
    script, r1, report1 = _job(tmp_path, FIXABLE)
    assert r1.returncode == 1 and report1["reason"].startswith("hopeless"), r1.stderr
    env = {"IN": str(tmp_path / "in"), "OUT": str(tmp_path / "out"), "FIXED": "1"}
    r2 = run_aimaster("run", "-n", "2", "--job-id", "hopeless", "--state-dir", str(tmp_path / "state"), "--quiet",
                      "--", sys.executable, str(script), env=env, timeout=120)
    assert r2.returncode == 0, r2.stderr
    report2 = json.loads((tmp_path / "state" / "jobs" / "hopeless" / "report.json").read_text())
    runs = report2["all_runs"]
    assert runs["runs_reported"] == 2
    assert runs["relaunches"] == report1["relaunches"] and report2["relaunches"] == {}
    assert runs["launched"] == report1["launched"] + report2["launched"]
    assert "all 2 runs of the job: " in r2.stderr and \
        f"{sum(report1['relaunches'].values())} worker relaunch(es), {runs['launched']} worker start(s)" in r2.stderr
    assert_exactly_once(str(tmp_path / "out"), sorted(p.relative_to(tmp_path / "in").as_posix()
                                                      for p in (tmp_path / "in").rglob("*.txt")))


def test_all_runs_adds_only_an_earlier_run_of_the_same_job():
    from aimaster.master.runs import all_runs, summary_lines

    this = {"job_id": "j", "generation": 3, "duration_s": 10.0, "relaunches": {"exit:1": 1}, "launched": 2}
    prev = {"job_id": "j", "generation": 2, "all_runs": {"runs_reported": 1, "duration_s": 5.0,
                                                         "relaunches": {"exit:1": 2, "hang": 1}, "launched": 3}}
    total = all_runs(prev, this)
    assert total == {"runs_reported": 2, "duration_s": 15.0, "relaunches": {"exit:1": 3, "hang": 1}, "launched": 5}
    alone = {"runs_reported": 1, "duration_s": 10.0, "relaunches": {"exit:1": 1}, "launched": 2}
    assert all_runs({"job_id": "other", "generation": 2}, this) == alone
    assert all_runs({"job_id": "j", "generation": 3}, this) == alone  # not an earlier run
    assert all_runs({"job_id": "j", "generation": 1, "all_runs": {"relaunches": {"x": -4, "y": "many"},
                                                                    "duration_s": "long"}}, this)["relaunches"] == \
        {"exit:1": 1}
    assert all_runs(None, this) == alone
    [line] = summary_lines(dict(this, all_runs=total))
    assert line.startswith("  all 3 runs of the job (1 without a report: killed): 00:15 in all, 4 worker")
