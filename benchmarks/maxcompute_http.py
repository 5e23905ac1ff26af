"""The test suite's MaxCompute stand-in, served over real HTTP for the table benchmark.

    python benchmarks/maxcompute_http.py          # prints {"service": URL, "tunnel": URL}, serves

No live MaxCompute is reachable here. The benchmark of the subprocess table writer needs two
processes (the worker and its writer child) talking to one service, over sockets, as they would to
MaxCompute; this serves ``tests/tables/maxcompute_fake.py`` (:meth:`FakeMaxCompute.serve_http`) on two
loopback ports, so pyodps' real code runs end to end on the client side: table metadata, request
signing, upload sessions, the protobuf record writer, compression and chunked HTTP uploads.

Blocks are kept as received and decoded only when rows are asked for
(``GET <service>/__fake__/rows/<project>/<table>`` -> ``{"rows": n}``, which the benchmark does after
each timed run): decoding is the server's work, and the server shares this machine's cores with the
processes being measured -- but the committed rows are really counted, so a lost or duplicated
slice fails the benchmark.
"""

from __future__ import annotations

import json
import os
import sys
import urllib.request

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tests", "tables"))

import maxcompute_fake  # noqa: E402 - the test suite's fake, found through the path above

OUTPUT_COLUMNS = [("id", "BIGINT"), ("y", "DOUBLE")]
ACCESS_ID, ACCESS_KEY = "bench-ak", "bench-sk"


def serve() -> None:
    fake = maxcompute_fake.FakeMaxCompute(credentials={ACCESS_ID: ACCESS_KEY}, lazy_blocks=True)
    fake.create_table("prj", "out", OUTPUT_COLUMNS)
    print(json.dumps(fake.serve_http()), flush=True)
    sys.stdin.read()  # serve until the benchmark closes our stdin (or dies)


def write_config(path: str, endpoints: dict) -> str:
    """An ``ODPS_CONFIG_FILE_PATH`` file pointing pyodps at the two endpoints."""
    return maxcompute_fake.write_config(path, endpoints, ACCESS_ID, ACCESS_KEY)


def committed_rows(config_path: str, project: str = "prj", table: str = "out") -> int:
    """Rows committed to ``table`` so far, asked of the stand-in named by an ODPS config file."""
    with open(config_path) as f:
        endpoint = next(line.split("=", 1)[1].strip() for line in f if line.startswith("end_point="))
    base = endpoint[: -len(maxcompute_fake.SERVICE_PREFIX)]
    with urllib.request.urlopen(f"{base}/__fake__/rows/{project}/{table}", timeout=600) as response:
        return int(json.load(response)["rows"])


if __name__ == "__main__":
    serve()
