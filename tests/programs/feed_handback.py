"""A reader sits on a slice it queued ahead while a peer runs out of free slices.

usage: feed_handback.py INPUT_DIR OUTPUT_DIR SLICE_SIZE
Prints one JSON line: the slice being read (``reading``), the one the feed queued (``queued``), the
slices the peer claimed until none was free (``taken``), and the claim the peer got next (``got``,
with its attempt number), or null if it got none within 10 s.
"""

import json
import os
import sys
import time

from aimaster import inference as elastic_inference
from aimaster.data.coordinator import Dataset
from aimaster.data.session import WorkerSession
from aimaster.data.store import EtcdConfig, Store, job_prefix
from aimaster.frameworks.feed import SliceFeed, load_file_slice


def main() -> None:
    input_dir, output_dir, slice_size = sys.argv[1], sys.argv[2], int(sys.argv[3])
    client = elastic_inference.PosixFileClient(elastic_inference.PosixFileConfig(
        input_dir=input_dir, output_dir=output_dir, slice_size=slice_size))
    dataset = client.create_torch_dataset()
    dataset._spec.tracked = True
    feed = iter(SliceFeed(dataset._spec, load_file_slice, prefetch=1))
    reading, _ = next(feed)
    ds = client.dataset
    deadline = time.monotonic() + 10
    while ds.store.count(ds.k.claim) < 2 and time.monotonic() < deadline:
        time.sleep(0.02)  # the feed claims one slice ahead
    endpoints = os.environ["AIMASTER_ETCD_ENDPOINTS"].split(",")
    store = Store(EtcdConfig(endpoints), job_prefix(os.environ["AIMASTER_JOB_ID"]))
    peer = Dataset(WorkerSession(store, "peer"), ds.ds_id)
    peer.load_plan()
    taken = []
    while True:
        claim = peer.try_claim()
        if claim is None:
            break
        taken.append(claim.slice_id)
    queued = sorted(set(peer.slice_id(i) for i in range(peer.num_slices)) - set(taken) - {reading.slice_id})
    got = None
    deadline = time.monotonic() + 10
    while got is None and time.monotonic() < deadline:
        got = peer.try_claim()
        time.sleep(0.05)
    print(json.dumps({"reading": reading.slice_id, "queued": queued, "taken": taken,
                      "got": got.slice_id if got else None, "got_attempt_no": got.attempt_no if got else None,
                      "todo_after": ds.store.count(ds.k.todo)}), flush=True)
    os._exit(0)  # claims and leases end with the process


if __name__ == "__main__":
    main()
