"""No wrong Succeeded: every planned input committed once, nothing lost silently, nothing published
outside the job's output. Real etcd, real `aimaster run` subprocesses, real files and file systems."""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid

import pytest
from helpers import (
    aimaster_cmd,
    assert_exactly_once,
    clean_env,
    make_files,
    program,
    run_aimaster,
    spy_on_fsync,
    wait_for,
)

from aimaster.errors import EtcdDataError, JobError
from aimaster.io.files import STAGING_DIR, FileSink


def _run(tmp_path, job_id, inp, out, *extra, prog="integrity_worker.py", slice_size=4, env=None, timeout=120):
    return run_aimaster("run", "-n", "1", "--job-id", job_id, "--state-dir", str(tmp_path / "state"), "--quiet",
                        *extra, "--", sys.executable, program(prog), str(inp), str(out), str(slice_size),
                        env=env, timeout=timeout)


def _report(tmp_path, job_id):
    with open(tmp_path / "state" / "jobs" / job_id / "report.json") as f:
        return json.load(f)


def _error_lines(stderr: str):
    return [line for line in stderr.splitlines() if "aimaster: error:" in line]


def _output_names(out):
    names = []
    for name in sorted(os.listdir(out)):
        if name.endswith(".txt"):
            with open(os.path.join(out, name)) as f:
                names += [line.split("\t")[0] for line in f if line.strip()]
    return sorted(names)


class Processes:
    """Stand-ins for worker processes of a job without a master: each its own session (lease)."""

    def __init__(self, make_session, monkeypatch):
        self.make_session = make_session
        self.monkeypatch = monkeypatch
        self.sessions = []

    def start(self):
        """The next PosixFileClient made here belongs to a new process."""
        import aimaster.inference.posix as posix

        session = self.make_session(f"w-{uuid.uuid4().hex[:6]}")
        self.sessions.append(session)
        self.monkeypatch.setattr(posix, "current_session", lambda: session)
        return session

    def end_all(self):
        for s in self.sessions:
            s.close()  # as at a process's exit: its lease is revoked


@pytest.fixture
def processes(make_session, job_env, monkeypatch):
    p = Processes(make_session, monkeypatch)
    p.start()
    return p


# ---------------------------------------------------------------------------------- item 5: resume
def test_resumed_job_refuses_input_changed_since_it_was_planned(tmp_path):
    """Stopped half-way, files added, run again with the same --job-id: one line saying what changed,
    not a Succeeded that never saw the new files; restored, the run resumes and ends exactly once."""
    inp, out = tmp_path / "in", tmp_path / "out"
    inputs = make_files(str(inp), 40)
    cmd = aimaster_cmd("run", "-n", "1", "--job-id", "J", "--state-dir", str(tmp_path / "state"), "--quiet", "--",
                       sys.executable, program("integrity_worker.py"), str(inp), str(out), "4")
    proc = subprocess.Popen(cmd, env=clean_env({"FILE_SLEEP": "0.03"}), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: out.is_dir() and any(n.endswith(".txt") for n in os.listdir(out)), timeout=60,
                 what="a committed slice")
        proc.send_signal(signal.SIGINT)  # Ctrl-C: the job is Stopped, resumable
        proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert _report(tmp_path, "J")["state"] == "Stopped"
    before = sorted(os.listdir(out))
    for name in ("new/a.txt", "new/b.txt"):
        (inp / name).parent.mkdir(exist_ok=True)
        (inp / name).write_text("late\n")
    r = _run(tmp_path, "J", inp, out)
    assert r.returncode != 0, r.stderr
    errors = _error_lines(r.stderr)
    assert errors and "input of job J changed since it was planned: 2 files added (e.g. new/a.txt, new/b.txt), " \
                      "0 files removed; use a new --job-id" in errors[0], r.stderr
    assert "relaunched" not in r.stderr
    assert _report(tmp_path, "J")["state"] == "Failed"
    assert sorted(os.listdir(out)) == before  # nothing processed on top of a stale plan
    # The input as planned again: the job resumes and every planned file is committed exactly once.
    shutil.rmtree(inp / "new")
    r = _run(tmp_path, "J", inp, out)
    assert r.returncode == 0, r.stderr
    assert_exactly_once(str(out), [f"{name}\t{len(open(inp / name).read())}" for name in inputs])


def test_a_finished_job_rerun_on_a_changed_input_refuses_instead_of_nothing_to_do(tmp_path):
    """Every slice committed, then files added: no worker would start to notice, so the master checks."""
    inp, out = tmp_path / "in", tmp_path / "out"
    make_files(str(inp), 12)
    assert _run(tmp_path, "S", inp, out).returncode == 0
    (inp / "late.txt").write_text("late\n")
    r = _run(tmp_path, "S", inp, out)
    assert r.returncode != 0, r.stderr
    errors = _error_lines(r.stderr)
    assert errors and "input of job S changed since it was planned: 1 file added (e.g. late.txt)" in errors[0], \
        r.stderr


def test_workers_without_a_master_check_once_per_run(tmp_path, processes, job_id, monkeypatch):
    """Peers of one run adopt the plan without listing again; a later run lists once and refuses."""
    from aimaster.inference import PosixFileClient, PosixFileConfig

    inp, out = tmp_path / "in", tmp_path / "out"
    make_files(str(inp), 12)
    listings = []  # every listing of the input directory, by whatever code does it
    real = os.scandir
    monkeypatch.setattr(os, "scandir", lambda path=".": (listings.append(path) if str(path) == str(inp) else None)
                        or real(path))
    config = PosixFileConfig(str(inp), str(out), 5)
    PosixFileClient(config)  # plans: one listing
    (inp / "late.txt").write_text("late\n")
    processes.start()  # a peer joining while the planner lives: the same run
    PosixFileClient(config)
    assert len(listings) == 1, "a peer of the same run listed the input again"
    processes.end_all()  # the run is over (every process gone); the next one is a resume
    processes.start()
    with pytest.raises(JobError) as e:
        PosixFileClient(config)
    assert str(e.value) == (f"input of job {job_id} changed since it was planned: 1 file added (e.g. late.txt), "
                            "0 files removed; use a new --job-id (or restore the input as it was)")
    assert len(listings) == 2
    processes.start()  # its peer gets the verdict without listing
    with pytest.raises(JobError):
        PosixFileClient(config)
    assert len(listings) == 2


def test_a_process_without_the_config_checks_from_the_plan_alone(tmp_path, processes, job_id):
    """What the master needs before it calls a resumed job whose slices are all committed Succeeded."""
    import aimaster
    from aimaster.data.coordinator import Dataset
    from aimaster.inference import PosixFileClient, PosixFileConfig
    from aimaster.io import input_check

    inp, out = tmp_path / "in", tmp_path / "out"
    make_files(str(inp), 6)
    client = PosixFileClient(PosixFileConfig(str(inp), str(out), 4))
    while True:
        try:
            client.get_next_slice()
        except aimaster.data.OutOfRangeException:
            break
        client.commit_slice()
    ds_id = client.dataset.ds_id
    processes.end_all()
    (inp / "d0" / "gone.txt").write_text("x\n")
    os.unlink(inp / "d1" / "f00001.txt")
    master = processes.start()
    with pytest.raises(JobError) as e:
        input_check.ensure_unchanged_from_plan(master, Dataset(master, ds_id), job_id)
    assert "1 file added (e.g. d0/gone.txt), 1 file removed (e.g. d1/f00001.txt)" in str(e.value)


def test_a_forged_file_list_never_hands_out_a_path_outside_the_input(tmp_path, processes):
    from aimaster.inference import PosixFileClient, PosixFileConfig

    inp, out = tmp_path / "in", tmp_path / "out"
    make_files(str(inp), 3, nested=False)
    config = PosixFileConfig(str(inp), str(out), 3)
    client = PosixFileClient(config)
    ds = client.dataset
    chunk = ds.k.item_chunk(0)
    ds.store.put(chunk, ["../../etc/shadow", "f00001.txt", "f00002.txt"])
    processes.start()
    with pytest.raises(EtcdDataError) as e:
        PosixFileClient(config).get_next_slice()
    assert "'../../etc/shadow'" in str(e.value)


# ---------------------------------------------------------------------------------- item 5: listing
def test_unlistable_subdirectories_fail_the_job_naming_them(tmp_path):
    """A subdirectory that is a symlink to an unmounted share, or a symlink loop, is not "no files"."""
    inp, out = tmp_path / "in", tmp_path / "out"
    make_files(str(inp), 10)
    os.symlink("/nonexistent-mount/photos", inp / "photos")
    os.symlink("loop", inp / "loop")
    r = _run(tmp_path, "L", inp, out)
    assert r.returncode != 0, r.stderr
    errors = _error_lines(r.stderr)
    assert len(errors) == 1, r.stderr
    assert f"2 entries under input directory {inp} cannot be read: {inp}/loop (a symlink loop (loop)), " \
           f"{inp}/photos (a symlink to /nonexistent-mount/photos, which does not exist)" in errors[0]
    assert "relaunched" not in r.stderr
    assert _report(tmp_path, "L")["state"] == "Failed"


def test_a_symlinked_input_directory_is_listed(tmp_path):
    """A subdirectory that is a symlink to a directory used to contribute nothing, silently."""
    inp, out, elsewhere = tmp_path / "in", tmp_path / "out", tmp_path / "elsewhere"
    make_files(str(inp), 6, nested=False)
    make_files(str(elsewhere), 3, nested=False)
    os.symlink(elsewhere, inp / "more")
    r = _run(tmp_path, "S", inp, out)
    assert r.returncode == 0, r.stderr
    assert _output_names(out) == sorted([f"f{i:05d}.txt" for i in range(6)] + [f"more/f{i:05d}.txt" for i in range(3)])


def _setpriv():
    """A command prefix running as root without the capabilities that let root read anything."""
    tool = shutil.which("setpriv")
    if tool is None:
        pytest.skip("setpriv (util-linux) is not installed: cannot drop CAP_DAC_OVERRIDE for the job")
    prefix = [tool, "--bounding-set", "-dac_override,-dac_read_search", "--inh-caps", "-dac_override,-dac_read_search",
              "--"]
    probe = subprocess.run(prefix + ["true"], capture_output=True, text=True)
    if probe.returncode != 0:
        pytest.skip(f"setpriv cannot drop capabilities here: {probe.stderr.strip()}")
    return prefix


def test_unreadable_directory_and_file_fail_the_job_or_are_skipped_on_request(tmp_path):
    prefix = _setpriv()
    inp, out = tmp_path / "in", tmp_path / "out"
    inputs = make_files(str(inp), 8, nested=False)
    (inp / "locked").mkdir()
    (inp / "locked" / "x.txt").write_text("x\n")
    (inp / "secret.txt").write_text("s\n")
    os.chmod(inp / "locked", 0)
    os.chmod(inp / "secret.txt", 0)

    def run(job_id, out, env=None):
        cmd = prefix + aimaster_cmd("run", "-n", "1", "--job-id", job_id, "--state-dir", str(tmp_path / "state"),
                                    "--quiet", "--", sys.executable, program("integrity_worker.py"), str(inp),
                                    str(out), "3")
        return subprocess.run(cmd, env=clean_env(env), capture_output=True, text=True, timeout=120)

    try:
        r = run("U", out)
        assert r.returncode != 0, r.stderr
        errors = _error_lines(r.stderr)
        assert len(errors) == 1, r.stderr
        assert f"{inp}/locked (cannot list it: Permission denied), {inp}/secret.txt (Permission denied)" in errors[0]
        assert "skip_unreadable=True" in errors[0]
        # Asked to skip: the job does the rest, and says what it left out.
        r = run("U2", tmp_path / "out2", {"SKIP_UNREADABLE": "1"})
        assert r.returncode == 0, r.stderr
        assert _output_names(tmp_path / "out2") == inputs
        logs = "".join(open(p).read() for p in (tmp_path / "state" / "jobs" / "U2" / "logs").glob("*.err"))
        assert f"skipped 2 unreadable entries under input directory {inp}" in logs and f"{inp}/locked" in logs
    finally:
        os.chmod(inp / "locked", 0o755)


def test_a_file_name_that_is_not_utf8_is_one_line_naming_it(tmp_path):
    inp, out = tmp_path / "in", tmp_path / "out"
    make_files(str(inp), 4, nested=False)
    with open(os.path.join(os.fsencode(inp), b"bad\xff.txt"), "w") as f:
        f.write("x\n")
    r = _run(tmp_path, "B", inp, out, prog="file_worker.py")
    assert r.returncode != 0, r.stderr
    errors = _error_lines(r.stderr)
    assert len(errors) == 1 and f"{inp}/bad\\xff.txt (its name is not valid UTF-8)" in errors[0], r.stderr
    assert "relaunched" not in r.stderr and "Traceback" not in r.stderr


# ---------------------------------------------------------------------------------- item 8
def test_input_replaced_by_a_fifo_fails_its_slice_instead_of_hanging(tmp_path):
    inp, out = tmp_path / "in", tmp_path / "out"
    make_files(str(inp), 9, nested=False)
    cmd = aimaster_cmd("run", "-n", "1", "--job-id", "F", "--state-dir", str(tmp_path / "state"), "--quiet", "--",
                       sys.executable, program("integrity_worker.py"), str(inp), str(out), "3")
    proc = subprocess.Popen(cmd, env=clean_env({"SWAP_TO_FIFO": "f00004.txt"}), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        _, stderr = proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        _unblock_readers(proc, inp / "f00004.txt")  # let the hung worker go, so nothing outlives the test
        pytest.fail("a worker hung opening an input that is a FIFO")
    assert proc.returncode != 0, stderr
    report = _report(tmp_path, "F")
    assert report["state"] == "Failed"
    assert [f["slice"] for f in report["failed_slices"]] == ["000001"]
    assert f"input {inp}/f00004.txt is a FIFO, not a regular file" in report["failed_slices"][0]["error"]
    assert _output_names(out) == [f"f{i:05d}.txt" for i in (0, 1, 2, 6, 7, 8)]


def _unblock_readers(proc, fifo, seconds=60.0):
    deadline = time.monotonic() + seconds
    while proc.poll() is None and time.monotonic() < deadline:
        try:
            os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))  # the reader's open() returns; it reads EOF
        except OSError:
            pass  # no reader at the moment
        time.sleep(0.2)
    proc.communicate(timeout=30)


@pytest.fixture
def full_disk(tmp_path):
    """A real 64 KiB file system (tmpfs), to fill up."""
    mnt = tmp_path / "small"
    mnt.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mnt)], capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here (needs root and mount permission): {r.stderr.strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", str(mnt)], capture_output=True)


def test_a_full_disk_error_names_the_output(tmp_path, processes, full_disk):
    from aimaster.inference import PosixFileClient, PosixFileConfig

    inp, out = tmp_path / "in", full_disk / "out"
    make_files(str(inp), 2, nested=False)
    client = PosixFileClient(PosixFileConfig(str(inp), str(out), 1))
    client.get_next_slice()
    sid = client.get_slice_id()
    with pytest.raises(OSError) as e:
        with client.open_slice_output(suffix=".bin", mode="wb") as f:
            for _ in range(64):
                f.write(b"x" * 4096)
    assert e.value.errno == errno.ENOSPC
    assert f"{out}/{STAGING_DIR}/{sid}/" in str(e.value) and f"{sid}.bin" in str(e.value), str(e.value)
    staged = [files for _, _, files in os.walk(out / STAGING_DIR)]
    assert not any(staged), f"a partial file was left behind: {staged}"


# ---------------------------------------------------------------------------------- item 11
def test_forged_output_refs_are_refused_and_touch_nothing(tmp_path):
    out = tmp_path / "out"
    (out / "keep").mkdir(parents=True)
    (out / "keep" / "data.txt").write_text("precious\n")
    victim = tmp_path / "victim"
    victim.write_text("precious\n")
    sink = FileSink(str(out))
    good_staged = f"{STAGING_DIR}/000001/w0.abc/000001.txt"
    forged = [
        {"staged": "../../etc/x", "final": "/tmp/y"},
        {"staged": "../victim", "final": "000000.txt"},
        {"staged": "keep/data.txt", "final": "000000.txt"},
        {"staged": f"{STAGING_DIR}/000000/w0.abc/../../../victim", "final": "../victim"},
        {"staged": f"{STAGING_DIR}/000000/w0.abc/{STAGING_DIR}/x", "final": f"{STAGING_DIR}/x"},
        {"staged": good_staged, "final": "000001.txt"},  # another slice's output
        {"staged": f"{STAGING_DIR}/000000/w0.abc/a.txt", "final": "b.txt"},
        {"staged": ["x"], "final": 3},
        "not a ref",
    ]
    for ref in forged:
        with pytest.raises(EtcdDataError) as e:
            sink.publish("000000", ref)
        assert repr(ref)[:40] in str(e.value)
    for ref in forged[:5]:
        with pytest.raises(EtcdDataError):
            sink.discard(ref)
    with pytest.raises(EtcdDataError):
        FileSink.from_description({"kind": "files"})
    assert (out / "keep" / "data.txt").read_text() == "precious\n"
    assert victim.read_text() == "precious\n"
    assert sorted(os.listdir(out)) == ["keep"]


def test_staging_and_publishing_fsync_their_directories(tmp_path, processes, monkeypatch):
    """A staged or published name a power cut can undo would make the commit record point at nothing."""
    from aimaster.inference import PosixFileClient, PosixFileConfig

    inp, out = tmp_path / "in", tmp_path / "out"
    make_files(str(inp), 2, nested=False)
    client = PosixFileClient(PosixFileConfig(str(inp), str(out), 2))
    synced = spy_on_fsync(monkeypatch)
    client.get_next_slice()
    with client.open_slice_output(suffix=".txt") as f:
        f.write("a\n")
    path = client.slice_output_path(suffix=".npy")
    with open(path, "wb") as f:  # as a library given a path would write it, without fsync
        f.write(b"b")
    attempt_dir = os.path.dirname(path)
    assert attempt_dir in synced, synced
    synced.clear()
    assert client.commit_slice()
    assert path in synced and attempt_dir in synced, synced  # the library's file made durable
    assert synced.count(str(out)) == 2, synced  # each publish rename, before the staging dir goes
    assert sorted(os.listdir(out)) == ["000000.npy", "000000.txt"]


def test_a_path_a_library_never_wrote_is_no_output_of_the_commit(tmp_path, processes):
    """``slice_output_path()`` asked for, nothing written there (a slice with nothing to say): the
    commit records no output for it, so publishing never meets a staged file that never was; a file
    of the same slice that was written is published as usual."""
    from aimaster.inference import PosixFileClient, PosixFileConfig

    inp, out = tmp_path / "in", tmp_path / "out"
    make_files(str(inp), 2, nested=False)
    client = PosixFileClient(PosixFileConfig(str(inp), str(out), 2))
    client.get_next_slice()
    client.slice_output_path(suffix=".npy")  # never written
    written = client.slice_output_path(suffix=".txt")
    with open(written, "w") as f:
        f.write("a\n")
    assert client.commit_slice()
    [(_, record)] = list(client._dataset.committed())
    assert [o["ref"]["final"] for o in record["out"]] == ["000000.txt"]
    assert sorted(os.listdir(out)) == ["000000.txt"]
