"""Shared helpers for tests: real files, real subprocesses, real etcd."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from typing import Dict, List, Optional

PROGRAMS = os.path.join(os.path.dirname(__file__), "programs")
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def program(name: str) -> str:
    return os.path.join(PROGRAMS, name)


def make_files(directory: str, n: int, nested: bool = True) -> List[str]:
    names = []
    for i in range(n):
        rel = f"d{i % 7}/f{i:05d}.txt" if nested else f"f{i:05d}.txt"
        path = os.path.join(directory, rel)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w") as f:
            f.write(f"file {i}\n")
        names.append(rel)
    return sorted(names)


def read_outputs(output_dir: str, suffix: str = ".txt") -> List[str]:
    """Every line of every published output file (the staging area excluded)."""
    lines = []
    for name in sorted(os.listdir(output_dir)):
        path = os.path.join(output_dir, name)
        if name.endswith(suffix) and os.path.isfile(path):
            with open(path) as f:
                lines += [line.rstrip("\n") for line in f if line.strip()]
    return lines


def assert_exactly_once(output_dir: str, inputs: List[str]) -> None:
    lines = read_outputs(output_dir)
    dups = sorted({x for x in lines if lines.count(x) > 1}) if len(lines) != len(set(lines)) else []
    assert not dups, f"duplicated outputs: {dups[:10]}"
    assert sorted(lines) == sorted(inputs), (
        f"{len(set(inputs) - set(lines))} inputs missing, {len(set(lines) - set(inputs))} unexpected")
    assert not os.path.exists(os.path.join(output_dir, ".aimaster-staging")), "staging area left behind"


def aimaster_cmd(*args: str) -> List[str]:
    return [sys.executable, "-m", "aimaster.cli", *args]


def run_aimaster(*args: str, env: Optional[Dict[str, str]] = None, timeout: float = 180,
                 cwd: Optional[str] = None) -> subprocess.CompletedProcess:
    full_env = clean_env(env)
    return subprocess.run(aimaster_cmd(*args), env=full_env, cwd=cwd, capture_output=True, text=True,
                          timeout=timeout)


def clean_env(extra: Optional[Dict[str, str]] = None) -> Dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AIMASTER_") or k == "AIMASTER_JOB_INDEX"}
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra or {})
    return env


def wait_for(predicate, timeout: float = 60.0, interval: float = 0.1, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def spy_on_fsync(monkeypatch) -> List[str]:
    """The paths ``os.fsync`` is called on from now on (in this process), in order."""
    synced: List[str] = []
    real_fsync = os.fsync

    def spy(fd):
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        return real_fsync(fd)

    monkeypatch.setattr(os, "fsync", spy)
    return synced
