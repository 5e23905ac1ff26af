"""``aimaster status`` from another directory finds the job through the user's job index, and
says where it looked when it finds none."""

import json
import sys

from helpers import make_files, program, run_aimaster


def test_status_from_another_directory(tmp_path):
    here, elsewhere = tmp_path / "here", tmp_path / "elsewhere"
    here.mkdir()
    elsewhere.mkdir()
    make_files(str(tmp_path / "in"), 10, nested=False)
    env = {"AIMASTER_JOB_INDEX": str(tmp_path / "index")}
    r = run_aimaster("run", "-n", "1", "--job-id", "far", "--quiet", "--", sys.executable, program("file_worker.py"),
                     str(tmp_path / "in"), str(tmp_path / "out"), "5", env=env, cwd=str(here), timeout=120)
    assert r.returncode == 0, r.stderr
    assert (here / ".aimaster" / "jobs" / "far").is_dir()

    for args in (("--job-id", "far"), ()):
        r = run_aimaster("status", "--json", *args, env=env, cwd=str(elsewhere), timeout=60)
        assert r.returncode == 0, r.stderr
        view = json.loads(r.stdout)
        assert view["job_id"] == "far" and view["state"] == "Succeeded"
        assert view["state_dir"] == str(here / ".aimaster")

    r = run_aimaster("status", "--job-id", "other", env=env, cwd=str(elsewhere), timeout=60)
    assert r.returncode != 0
    assert str(elsewhere / ".aimaster") in r.stderr and str(tmp_path / "index") in r.stderr, r.stderr

    # An explicit --state-dir is where to look, and only there.
    r = run_aimaster("status", "--job-id", "far", "--state-dir", str(elsewhere / "s"), env=env, cwd=str(elsewhere),
                     timeout=60)
    assert r.returncode != 0 and "no job far" in r.stderr

    # An index that knows nothing: the message names both places.
    r = run_aimaster("status", env={"AIMASTER_JOB_INDEX": str(tmp_path / "empty")}, cwd=str(elsewhere), timeout=60)
    assert r.returncode != 0
    assert "no jobs in state directory" in r.stderr and str(tmp_path / "empty") in r.stderr, r.stderr
