"""A table worker whose attempt loses to the end of the job: it stages after the job's finalize ran.

usage: table_late_stage.py INPUT_TABLE OUTPUT_TABLE SLICE_SIZE BUFFER_SIZE
Claims a slice, writes its rows, prints ``claimed <slice>``, then waits until another worker (a
speculative copy) committed the slice and the job finalized its output -- cleaned up the staging
area, committed the MaxCompute upload session -- and only then commits (stages) its own attempt.
Prints one JSON line: ``{"committed": bool}`` or ``{"error": "<type>: <message>"}``.
"""

import json
import sys
import time

from aimaster import inference as elastic_inference

input_table, output_table, slice_size, buffer_size = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
client = elastic_inference.MaxComputeTableClient(
    elastic_inference.MaxComputeTableConfig(input_table, slice_size=slice_size, output_table=output_table))
writer = client.create_table_writer(buffer_size=buffer_size)
path = client.get_next_slice()
start, end = (int(part.split("=")[1]) for part in path.split("?")[1].split("&"))
writer.write([(i, i * 1.0) for i in range(start, end)], col_indices=(0, 1))
print(f"claimed {client.get_slice_id()}", flush=True)
ds = client.dataset
deadline = time.monotonic() + 60
while ds.store.get_value(ds.k.finalized) is None and time.monotonic() < deadline:
    time.sleep(0.05)
try:
    result = {"committed": client.commit_slice(), "finalized": ds.store.get_value(ds.k.finalized) is not None}
except Exception as e:  # noqa: BLE001 - reported to the test
    result = {"error": f"{type(e).__name__}: {e}"}
print(json.dumps(result), flush=True)
writer.close()
