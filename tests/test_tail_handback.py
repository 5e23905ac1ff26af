"""No hoarding at the tail: slices a framework reader queued ahead go back once no slice is free.

A ``SliceFeed`` claims ``prefetch`` slices beyond the one its reader reads. Once any worker finds no
free slice (it writes the dataset's ``drained`` marker), the feed gives those queued slices back to
todo, uncounted, so the idle worker takes them instead of waiting for a slow holder to get to them.
"""

from __future__ import annotations

import json
import subprocess
import sys

from helpers import clean_env, make_files, program


def test_a_slice_queued_ahead_goes_to_the_peer_that_found_none_free(tmp_path, job_env):
    make_files(str(tmp_path / "in"), 8, nested=False)
    env = clean_env(dict(job_env, AIMASTER_WORKER_ID="reader", AIMASTER_SPECULATION="0"))
    r = subprocess.run([sys.executable, program("feed_handback.py"), str(tmp_path / "in"), str(tmp_path / "out"), "2"],
                       env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-3000:]
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert len(out["taken"]) == 2, out  # 4 slices: one read, one queued, two free for the peer
    assert len(out["queued"]) == 1, out
    assert out["got"] == out["queued"][0], out
    assert out["got_attempt_no"] == 1, out  # given back uncounted: the peer's is the first attempt
