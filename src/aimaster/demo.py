"""``aimaster demo``: a real job over generated files, on an embedded etcd, checked for exactly-once.

The worker program (``python -m aimaster.demo worker IN OUT``) is an ordinary ElasticBatch program: it
takes slices of text files, "infers" a label for each (a checksum of its words), writes one output
file per slice through the atomic output helper and commits.
"""

from __future__ import annotations

import hashlib
import os
import sys
import tempfile


def worker(input_dir: str, output_dir: str, slice_size: int = 20) -> None:
    import aimaster
    from aimaster import inference as elastic_inference

    client = elastic_inference.PosixFileClient(elastic_inference.PosixFileConfig(
        input_dir=input_dir, output_dir=output_dir, slice_size=slice_size))
    while True:
        try:
            paths = client.get_next_slice()
        except aimaster.data.OutOfRangeException:
            break
        with client.open_slice_output(suffix=".tsv") as out:
            for path in paths:
                with open(path, "rb") as f:
                    label = int(hashlib.sha256(f.read()).hexdigest(), 16) % 1000
                out.write(f"{os.path.basename(path)}\t{label}\n")
        client.commit_slice()


def make_files(directory: str, n: int) -> None:
    os.makedirs(directory, exist_ok=True)
    for i in range(n):
        with open(os.path.join(directory, f"doc_{i:06d}.txt"), "w") as f:
            f.write(f"sample document {i}\n" * (1 + i % 7))


def run_demo(workers: int, num_files: int, slice_size: int, workdir: str = None) -> int:
    from aimaster.master.master import Master, RunOptions

    workdir = os.path.abspath(workdir or tempfile.mkdtemp(prefix="aimaster-demo-"))
    input_dir, output_dir = os.path.join(workdir, "input"), os.path.join(workdir, "output")
    make_files(input_dir, num_files)
    print(f"demo: {num_files} files in {input_dir}; outputs in {output_dir}", file=sys.stderr)
    opts = RunOptions(
        command=[sys.executable, "-m", "aimaster.demo", "worker", input_dir, output_dir, str(slice_size)],
        job_id="demo-" + os.path.basename(workdir).replace("aimaster-demo-", "")[-12:].strip("_-") or "demo",
        workers=workers, state_root=os.path.join(workdir, "state"))
    rc = Master(opts).run()
    names = []
    for name in sorted(os.listdir(output_dir)):
        if name.endswith(".tsv"):
            with open(os.path.join(output_dir, name)) as f:
                names += [line.split("\t", 1)[0] for line in f if line.strip()]
    unique = len(set(names))
    print(f"demo: {len(names)} output rows for {num_files} inputs, {unique} distinct "
          f"({'exactly once' if len(names) == unique == num_files else 'MISMATCH'})", file=sys.stderr)
    return rc if len(names) == unique == num_files else 1


if __name__ == "__main__":
    if len(sys.argv) >= 4 and sys.argv[1] == "worker":
        worker(sys.argv[2], sys.argv[3], int(sys.argv[4]) if len(sys.argv) > 4 else 20)
    else:
        sys.exit("usage: python -m aimaster.demo worker INPUT_DIR OUTPUT_DIR [SLICE_SIZE]")
