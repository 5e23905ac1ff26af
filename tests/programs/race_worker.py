"""Claims the (single) slice, writes its output, then commits only when the test says go."""

import os
import sys
import time

from aimaster import inference as elastic_inference

input_dir, output_dir, sync_dir, name = sys.argv[1:5]
client = elastic_inference.PosixFileClient(elastic_inference.PosixFileConfig(input_dir, output_dir, 4))
paths = client.get_next_slice()
with client.open_slice_output(suffix=".txt") as f:
    f.write(f"written by {name}\n")
    f.writelines(p + "\n" for p in paths)
open(os.path.join(sync_dir, f"{name}.ready"), "w").close()
while not os.path.exists(os.path.join(sync_dir, "go")):
    time.sleep(0.01)
print(f"commit={client.commit_slice()}", flush=True)
