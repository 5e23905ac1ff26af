"""``aimaster demo``: a real job over generated inputs, on an embedded etcd, checked for exactly-once.

With torch installed, a CNN classifies generated images (:mod:`aimaster.demo_images`); without it
(or with ``--text``) the text demo runs: its worker program (``python -m aimaster.demo worker IN
OUT``) is an ordinary ElasticBatch program that takes slices of text files, "infers" a label for
each (a checksum of its words), writes one output file per slice through the atomic output helper
and commits. Either way the job shows the live display and the report, and the demo ends with one
line on what it showed: every input in the outputs, once, and the throughput.
"""

from __future__ import annotations

import hashlib
import os
import sys
import tempfile
import time


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


def torch_available() -> bool:
    try:
        import torch  # noqa: F401
    except ImportError:
        return False
    return True


def run_demo(workers: int, num_files: int, slice_size: int, workdir: str = None, text: bool = False,
             out=None) -> int:
    """Run the demo job; its closing line says what it showed. 0 if every input came out once.

    With torch installed (and ``text`` not asked for) the job classifies generated images with a
    CNN (:mod:`aimaster.demo_images`); without it, it says so and labels text files instead.
    """
    from aimaster.master.master import Master, RunOptions

    out = out or sys.stderr
    images = not text and torch_available()
    if not text and not images:
        print("demo: torch is not installed (pip install torch), so no CNN: running the text demo instead",
              file=out, flush=True)
    workdir = os.path.abspath(workdir or tempfile.mkdtemp(prefix="aimaster-demo-"))
    input_dir, output_dir = os.path.join(workdir, "input"), os.path.join(workdir, "output")
    if images:
        from aimaster.demo_images import make_images

        make_images(input_dir, num_files)
        what, module = "generated images", "aimaster.demo_images"
    else:
        make_files(input_dir, num_files)
        what, module = "text files", "aimaster.demo"
    print(f"demo: {num_files} {what} in {input_dir}; outputs in {output_dir}", file=out, flush=True)
    job_id = "demo-" + os.path.basename(workdir).replace("aimaster-demo-", "")[-12:].strip("_-") or "demo"
    opts = RunOptions(command=[sys.executable, "-m", module, "worker", input_dir, output_dir, str(slice_size)],
                      job_id=job_id, workers=workers, state_root=os.path.join(workdir, "state"))
    t0 = time.monotonic()
    rc = Master(opts).run()
    elapsed = time.monotonic() - t0
    names = []
    for name in sorted(os.listdir(output_dir)) if os.path.isdir(output_dir) else []:
        if name.endswith(".tsv"):
            with open(os.path.join(output_dir, name)) as f:
                names += [line.split("\t", 1)[0] for line in f if line.strip()]
    once = len(names) == len(set(names)) == num_files
    print(closing_line(images, num_files, names, workers, elapsed), file=out, flush=True)
    return rc if once else 1


def closing_line(images: bool, num_files: int, names, workers: int, elapsed: float) -> str:
    """What the demo showed, in one line: every input, once, and at what rate."""
    distinct = len(set(names))
    model = "a CNN classified" if images else "the workers labelled"
    noun = "images" if images else "files"
    rate = f"{len(names) / elapsed:.1f} {noun}/s over {elapsed:.1f} s, start-up included"
    if len(names) == distinct == num_files:
        return (f"demo: {model} all {num_files} {noun} on {workers} workers, each exactly once "
                f"({len(names)} output lines, {distinct} distinct), {rate}")
    return (f"demo: MISMATCH: {len(names)} output lines for {num_files} {noun}, {distinct} distinct, "
            f"{num_files - distinct} missing")


if __name__ == "__main__":
    if len(sys.argv) >= 4 and sys.argv[1] == "worker":
        worker(sys.argv[2], sys.argv[3], int(sys.argv[4]) if len(sys.argv) > 4 else 20)
    else:
        sys.exit("usage: python -m aimaster.demo worker INPUT_DIR OUTPUT_DIR [SLICE_SIZE]")
