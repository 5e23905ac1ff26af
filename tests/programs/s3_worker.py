"""A test worker over an object store: reads every input through fsspec, writes "<name>\\t<content>".

usage: s3_worker.py INPUT_URL OUTPUT_URL SLICE_SIZE [META_URL]
env:   FILE_SLEEP    seconds of "inference" per file
       STARTED_LOG   directory: each worker process creates "<worker>.started" before anything else
       KILL_AT       before-copy | after-copy: the first worker to publish slice KILL_SLICE SIGKILLs itself
                     right before the server-side copy to the final key, or right after it (before
                     the staged object is deleted) -- a crash in the middle of publishing, for real
       KILL_SLICE    that slice's id (default 000001)
       SLOW_SLICE    slice ids (comma-separated) whose first attempt waits until another attempt (a
                     speculative copy) committed the slice, then writes and commits anyway: a late
                     loser. Every other attempt at such a slice first waits until COPIES copies of it
                     have started (at most 30 s), then takes COPY_SECONDS (1.5) longer, so that
                     several copies race however late the workers started.
       MARKS         directory for the markers that make KILL_AT and SLOW_SLICE act once
"""

import os
import signal
import sys
import time

import fsspec

import aimaster
from aimaster import inference as elastic_inference
from aimaster.io import object_store


def once(name: str) -> bool:
    """True for the first process of the job to ask for ``name`` (an O_EXCL marker file)."""
    try:
        os.close(os.open(os.path.join(os.environ["MARKS"], name), os.O_CREAT | os.O_EXCL))
        return True
    except FileExistsError:
        return False


def arm_kill(step: str, slice_id: str) -> None:
    """SIGKILL this process at ``step`` of publishing slice ``slice_id`` (the first time only)."""
    name = "copy_to_final" if step == "before-copy" else "remove_staged"  # after-copy: before the delete
    real = getattr(object_store, name)

    def die_first(fs, src, *rest):
        if f"/{slice_id}/" in src and once(f"kill-{slice_id}"):
            os.kill(os.getpid(), signal.SIGKILL)
        return real(fs, src, *rest)

    setattr(object_store, name, die_first)


def wait_for_copies(client, slice_id: str) -> None:
    want = int(os.environ.get("COPIES", "1"))
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        record = client.dataset.store.get_value(client.dataset.k.attempts + slice_id)
        if isinstance(record, dict) and isinstance(record.get("b"), int) and record["b"] >= want:
            return
        time.sleep(0.05)


def wait_until_committed(client, slice_id: str) -> None:
    ds = client.dataset
    deadline = time.monotonic() + 60
    while ds.store.get_value(ds.k.done + slice_id) is None and time.monotonic() < deadline:
        time.sleep(0.05)


def main() -> None:
    input_url, output_url, slice_size = sys.argv[1], sys.argv[2], int(sys.argv[3])
    meta = sys.argv[4] if len(sys.argv) > 4 else ""
    worker = os.environ.get("AIMASTER_WORKER_ID", f"standalone-{os.getpid()}")
    if os.environ.get("STARTED_LOG"):
        open(os.path.join(os.environ["STARTED_LOG"], f"{worker}.started"), "w").close()
    if os.environ.get("KILL_AT"):
        arm_kill(os.environ["KILL_AT"], os.environ.get("KILL_SLICE", "000001"))
    sleep = float(os.environ.get("FILE_SLEEP", "0"))
    slow = set(filter(None, os.environ.get("SLOW_SLICE", "").split(",")))
    client = elastic_inference.PosixFileClient(elastic_inference.PosixFileConfig(
        input_dir=input_url if not meta else "", output_dir=output_url, slice_size=slice_size,
        input_file_meta_path=meta))
    while True:
        try:
            urls = client.get_next_slice()
        except aimaster.data.OutOfRangeException:
            break
        sid = client.get_slice_id()
        late = sid in slow and once(f"{sid}.first")
        if sid in slow and not late:
            wait_for_copies(client, sid)
            time.sleep(float(os.environ.get("COPY_SECONDS", "1.5")))
        if late:
            wait_until_committed(client, sid)
        with client.open_slice_output(suffix=".tsv") as out:
            for url in urls:
                with fsspec.open(url, "rb") as f:
                    content = f.read().decode()
                time.sleep(sleep)
                out.write(f"{url}\t{content.strip()}\n")
        client.commit_slice()


if __name__ == "__main__":
    main()
