"""The test suite's MaxCompute stand-in, served over real HTTP for the table benchmark.

    python benchmarks/maxcompute_http.py          # prints {"service": PORT, "tunnel": PORT}, serves

No live MaxCompute is reachable here. The tests run pyodps against ``tests/tables/maxcompute_fake.py``
inside one process; a benchmark of the subprocess table writer needs two processes (the worker and
its writer child) talking to one service, over sockets, as they would to MaxCompute. This serves
that fake on two loopback ports (the service endpoint and the tunnel endpoint), so pyodps' real
code runs end to end on the client side: table metadata, upload sessions, the protobuf record
writer, compression and chunked HTTP uploads of every block.

Uploaded blocks are counted, not decoded: decoding them is the server's work, and the server shares
this machine's cores with the processes being measured.
"""

from __future__ import annotations

import json
import os
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tests", "tables"))

import maxcompute_fake  # noqa: E402 - the test suite's fake, found through the path above

OUTPUT_COLUMNS = [("id", "BIGINT"), ("y", "DOUBLE")]


class _Request:
    """What ``FakeMaxCompute.handle`` reads of a ``requests.PreparedRequest``."""

    def __init__(self, method: str, url: str, body: bytes, headers):
        self.method, self.url, self.body, self.headers = method, url, body, headers


def _handler(fake: maxcompute_fake.FakeMaxCompute, host: str):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, as pyodps' requests session expects

        def _body(self) -> bytes:
            if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                parts = []
                while True:
                    size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                    if size == 0:
                        while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                            pass  # trailers
                        return b"".join(parts)
                    parts.append(self.rfile.read(size))
                    self.rfile.readline()
            length = int(self.headers.get("Content-Length") or 0)
            return self.rfile.read(length) if length else b""

        def _serve(self) -> None:
            body = self._body()
            response = fake.handle(_Request(self.command, f"http://{host}{self.path}", body, self.headers))
            content = response.content or b""
            self.send_response(response.status_code)
            for name, value in response.headers.items():
                if name.lower() not in ("content-length", "transfer-encoding", "connection"):
                    self.send_header(name, value)
            self.send_header("Content-Length", str(len(content)))
            self.end_headers()
            self.wfile.write(content)

        do_GET = do_POST = do_PUT = do_HEAD = _serve

        def log_message(self, *args) -> None:
            pass

    return Handler


class CountingFake(maxcompute_fake.FakeMaxCompute):
    """The fake, counting uploaded block bytes instead of decoding the records."""

    def __init__(self) -> None:
        super().__init__()
        self.block_bytes = 0

    def _decode_records(self, table, body: bytes):
        self.block_bytes += len(body)
        return []


def serve() -> None:
    fake = CountingFake()
    fake.create_table("prj", "out", OUTPUT_COLUMNS)
    servers = [ThreadingHTTPServer(("127.0.0.1", 0), _handler(fake, host))
               for host in ("service.fake-odps.test", maxcompute_fake.TUNNEL_HOST)]
    for server in servers:
        server.daemon_threads = True
        threading.Thread(target=server.serve_forever, daemon=True).start()
    print(json.dumps({"service": servers[0].server_address[1], "tunnel": servers[1].server_address[1]}),
          flush=True)
    sys.stdin.read()  # serve until the benchmark closes our stdin (or dies)


def write_config(path: str, ports: dict) -> str:
    """An ``ODPS_CONFIG_FILE_PATH`` file pointing pyodps at the two endpoints."""
    with open(path, "w") as f:
        f.write("access_id=bench-ak\naccess_key=bench-sk\n"
                f"end_point=http://127.0.0.1:{ports['service']}/api\n"
                f"tunnel_endpoint=http://127.0.0.1:{ports['tunnel']}\n")
    return path


if __name__ == "__main__":
    serve()
