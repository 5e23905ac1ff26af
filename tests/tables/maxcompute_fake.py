"""An in-memory MaxCompute service behind pyodps' HTTP layer, for tests.

No live MaxCompute is reachable from CI, so the MaxCompute backend is verified against this fake:
pyodps' real classes (``ODPS``, ``TableTunnel``, download/upload sessions, the Arrow reader, the
protobuf record writer, request signing) run unchanged. Either only ``RestClient.session`` -- the
``requests`` session every pyodps request goes through -- is replaced by one whose transport adapter
answers here (in-process tests), or the fake is served over real HTTP on two loopback ports
(:meth:`FakeMaxCompute.serve_http`) and pyodps talks to it through its own ``requests`` session, from
any process (job tests: the workers and their writer children are separate processes).

The wire formats are the ones pyodps speaks (read from its source, ``odps/tunnel``):

* table metadata: ``GET /projects/<p>/tables/<t>`` -> XML ``<Table>`` whose ``<Schema>`` is JSON;
* tunnel endpoint: ``GET /projects/<p>/tunnel?service`` -> the tunnel host name as text;
* download session: ``POST ...?downloads`` -> JSON ``DownloadID/Status/RecordCount/Schema``;
* row range: ``GET ...?data&arrow&downloadid=..&rowrange=(start,count)[&columns=..]`` -> Arrow IPC
  record-batch messages (no schema message) cut into CRC-checked chunks: a 4-byte big-endian chunk
  size, then each full chunk followed by its CRC, the last partial chunk followed by the CRC of all;
* upload session: ``POST ...?uploads`` / ``GET ...?uploadid=..`` -> JSON with ``UploadedBlockList``;
* block: ``PUT ...?uploadid=..&blockid=N`` with protobuf records (decoded with pyodps' own reader),
  or ``PUT ...?uploadid=..&blockid=N&arrow`` (pyodps' ``open_arrow_writer``) with Arrow IPC
  record-batch messages (no schema message: the table's schema applies) in the download's framing,
  each chunk's CRC and the CRC of all checked (a bad one is refused, as the tunnel does). A client
  that writes no rows sends only the 4-byte CRC of nothing;
* commit: ``POST ...?uploadid=..`` -- the request names no blocks: the server commits every block it
  holds, exactly as the real tunnel does (pyodps only checks the block list on the client side).

The service's rules that aimaster's exactly-once depends on are enforced, not assumed:

* **Sessions expire** ``upload_lifetime`` / ``download_lifetime`` seconds after their creation (24 h,
  as documented; tests shorten them, or move :meth:`advance` the fake's clock). An expired session
  reports status ``EXPIRED``; a block, a commit or a read on it is refused with the tunnel's
  ``StatusConflict`` / "The upload session is expired".
* **A commit takes the blocks in the order of the session's block list** (the order blocks were
  first uploaded; re-uploading a block replaces its rows in place), not in block-id order.
* **Every request must carry pyodps' signature** computed with the access key the fake was created
  with: the canonical string (method, ``Content-MD5``, ``Content-Type``, ``Date``, the ``x-odps-*``
  headers and parameters, the resource with its sorted parameters) is rebuilt here from the
  request as received, independently of pyodps' code, and HMAC-SHA1-signed with the secret; a
  missing or unknown key is ``401 Unauthorized``, a wrong signature ``403 SignatureNotMatch``.

Every request is logged in :attr:`FakeMaxCompute.requests` so tests can assert what went over the wire.
"""

from __future__ import annotations

import base64
import datetime
import email.utils
import hashlib
import hmac
import io
import itertools
import json
import struct
import threading
import time
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Tuple
from urllib.parse import parse_qs, parse_qsl, unquote, urlsplit
from xml.sax.saxutils import escape

import pyarrow as pa
import requests
import urllib3
from odps.models import TableSchema
from odps.tunnel.checksum import Checksum
from odps.tunnel.io.reader import TunnelRecordReader
from odps.tunnel.io.types import odps_schema_to_arrow_schema

SERVICE_HOST = "service.fake-odps.test"
TUNNEL_HOST = "tunnel.fake-odps.test"
SERVICE_PREFIX = "/api"  # the service endpoint is http://<host>/api; signatures exclude it
CHUNK_SIZE = 256  # small, so that even tiny tables exercise multi-chunk framing
DAY = 24 * 3600.0
DEFAULT_CREDENTIALS = {"test-ak": "test-sk"}


@dataclass
class Request:
    method: str
    host: str
    path: str
    params: Dict[str, str]

    def has(self, *keys: str) -> bool:
        return all(k in self.params for k in keys)


@dataclass
class FakeTable:
    project: str
    name: str
    columns: List[Tuple[str, str]]
    partitions: List[Tuple[str, str]]
    data: Dict[str, List[tuple]] = field(default_factory=dict)  # partition spec ("" if none) -> rows

    def schema(self) -> TableSchema:
        return TableSchema.from_lists(
            [c for c, _ in self.columns],
            [t.lower() for _, t in self.columns],
            [p for p, _ in self.partitions] or None,
            [t.lower() for _, t in self.partitions] or None,
        )

    def schema_json(self) -> dict:
        return {
            "tableName": self.name,
            "columns": [{"name": c, "type": t.lower(), "comment": "", "isNullable": True}
                        for c, t in self.columns],
            "partitionKeys": [{"name": p, "type": t.lower(), "comment": ""} for p, t in self.partitions],
        }


def normalize_spec(spec: Optional[str]) -> str:
    if not spec:
        return ""
    parts = [p.strip() for p in spec.split(",") if p.strip()]
    return ",".join(f"{k.strip()}={v.strip().strip(chr(39))}" for k, v in (p.split("=", 1) for p in parts))


def canonical_string(method: str, headers, resource: str, query: str) -> str:
    """The string MaxCompute's v2 request signature covers, rebuilt from a request as received.

    ``resource`` and ``query`` are URL-decoded and relative to the endpoint. Written from the
    service's signing rules (the lines: method, then ``content-md5``, ``content-type``, ``date`` and
    every ``x-odps-*`` header or parameter sorted by name, ``x-odps-*`` ones as ``name:value``; last
    the resource with its parameters sorted, ``name`` alone for an empty value).
    """
    signed = {"content-md5": "", "content-type": ""}
    for name, value in headers.items():
        lname = name.lower()
        if lname in ("content-md5", "content-type") or lname.startswith("x-odps-"):
            signed[lname] = value
    signed["date"] = headers.get("Date") or ""
    params = dict(parse_qsl(query, keep_blank_values=True)) if query else {}
    for name, value in params.items():
        if name.startswith("x-odps-"):
            signed[name] = value
    lines = [method.upper()]
    for name in sorted(signed):
        lines.append(f"{name}:{signed[name]}" if name.startswith("x-odps-") else signed[name])
    if params:
        resource += "?" + "&".join(k if v == "" else f"{k}={v}" for k, v in sorted(params.items()))
    lines.append(resource)
    return "\n".join(lines)


class FakeMaxCompute:
    """The service state plus a ``requests`` adapter answering pyodps' calls from it."""

    def __init__(self, credentials: Optional[Dict[str, str]] = None, lazy_blocks: bool = False) -> None:
        self.tables: Dict[Tuple[str, str], FakeTable] = {}
        self.requests: List[Request] = []
        self.downloads: Dict[str, dict] = {}
        self.uploads: Dict[str, dict] = {}
        self.commits: List[Tuple[str, List[int]]] = []
        self.fail_next: Dict[str, Tuple[int, str, str]] = {}  # request kind -> (status, code, message)
        self.credentials = dict(DEFAULT_CREDENTIALS if credentials is None else credentials)
        self.upload_lifetime = DAY
        self.download_lifetime = DAY
        self.lazy_blocks = lazy_blocks  # keep blocks as received; decode only when rows are asked for
        self.on_request: Optional[Callable[[Request], None]] = None  # tests: hold or observe a request
        self._offset = 0.0
        self._ids = itertools.count(1)
        self._lock = threading.RLock()
        self._servers: list = []

    # --- test-facing helpers -------------------------------------------------------------------
    def create_table(self, project, name, columns, partitions=()):
        table = FakeTable(project, name, [(c, t.upper()) for c, t in columns],
                          [(p, t.upper()) for p, t in partitions])
        if not table.partitions:
            table.data[""] = []
        with self._lock:
            self.tables[(project, name)] = table
        return table

    def add_rows(self, project, name, rows, partition=None):
        table = self.tables[(project, name)]
        with self._lock:
            table.data.setdefault(normalize_spec(partition), []).extend(tuple(r) for r in rows)

    def rows(self, project, name, partition=None):
        table = self.tables[(project, name)]
        with self._lock:
            data = table.data.get(normalize_spec(partition), [])
            return [row for item in data for row in self._rows_of(table, item)]

    def requests_of(self, *keys: str, method: Optional[str] = None) -> List[Request]:
        with self._lock:
            return [r for r in self.requests if r.has(*keys) and (method is None or r.method == method)]

    def now(self) -> float:
        return time.monotonic() + self._offset

    def advance(self, seconds: float) -> None:
        """Move the fake's clock (session expiry) forward."""
        self._offset += seconds

    def expire_all(self) -> None:
        """Every open session is past its lifetime now (as after a long outage)."""
        with self._lock:
            for session in list(self.uploads.values()) + list(self.downloads.values()):
                session["created"] = -1e18

    def upload_status(self, sid: str) -> str:
        with self._lock:
            return self._status(self.uploads[sid], self.upload_lifetime)

    def session(self) -> requests.Session:
        s = requests.Session()
        adapter = _Adapter(self)
        s.mount("http://", adapter)
        s.mount("https://", adapter)
        return s

    # --- dispatch ------------------------------------------------------------------------------
    def handle(self, req) -> requests.Response:
        parts = urlsplit(req.url)
        params = {k: v[0] for k, v in parse_qs(parts.query, keep_blank_values=True).items()}
        path = unquote(parts.path)
        record = Request(req.method.upper(), parts.hostname or "", path, params)
        with self._lock:
            self.requests.append(record)
        if self.on_request is not None:
            self.on_request(record)
        body = _body_bytes(req.body)
        try:
            self._check_signature(req, record.host)
            with self._lock:
                if record.host == TUNNEL_HOST:
                    return self._tunnel(record, body, req)
                return self._service(record, req)
        except _HttpError as e:
            return _response(req, e.status, json.dumps({"Code": e.code, "Message": e.message}),
                             "application/json")

    def _check_signature(self, req, host: str) -> None:
        auth = req.headers.get("Authorization") or ""
        if not auth.startswith("ODPS ") or ":" not in auth:
            raise _HttpError(401, "Unauthorized", "The request authorization header is invalid or missing")
        access_id, _, signature = auth[5:].rpartition(":")
        secret = self.credentials.get(access_id)
        if secret is None:
            raise _HttpError(401, "Unauthorized", "The request authorization header is invalid or missing")
        date = req.headers.get("Date")
        try:
            sent = email.utils.parsedate_to_datetime(date).timestamp()
        except (TypeError, ValueError):
            raise _HttpError(403, "SignatureNotMatch", "the request has no valid Date header")
        if abs(time.time() - sent) > 900:
            raise _HttpError(403, "AuthenticationRequestExpired", "the request's Date is too far from now")
        parts = urlsplit(unquote(req.url))
        resource = parts.path
        if host != TUNNEL_HOST and resource.startswith(SERVICE_PREFIX):
            resource = resource[len(SERVICE_PREFIX):]
        text = canonical_string(req.method, req.headers, resource, parts.query)
        expected = base64.b64encode(hmac.new(secret.encode(), text.encode(), hashlib.sha1).digest()).decode()
        if not hmac.compare_digest(expected, signature):
            raise _HttpError(403, "SignatureNotMatch", "The request signature we calculated does not match "
                                                       "the signature you provided")

    def _maybe_fail(self, kind: str) -> None:
        if kind in self.fail_next:
            status, code, message = self.fail_next.pop(kind)
            raise _HttpError(status, code, message)

    def _table(self, path: str) -> FakeTable:
        segs = [s for s in path.split("/") if s]
        if "api" in segs:
            segs = segs[segs.index("api") + 1:]
        # projects/<p>/tables/<t>  or projects/<p>/schemas/<s>/tables/<t>
        project, name = segs[1], segs[-1]
        table = self.tables.get((project, name))
        if table is None:
            raise _HttpError(404, "NoSuchTable", f"ODPS-0130131:Table not found - '{project}.{name}'")
        return table

    def _service(self, r: Request, req) -> requests.Response:
        if r.path.endswith("/logview/host"):
            return _response(req, 200, "http://logview.fake-odps.test", "text/plain")
        if r.path.endswith("/tunnel") and "service" in r.params:
            return _response(req, 200, TUNNEL_HOST, "text/plain")
        if "/tables/" in r.path and r.method == "GET":
            self._maybe_fail("meta")
            table = self._table(r.path)
            xml = (
                f'<?xml version="1.0" encoding="UTF-8"?><Table><Name>{escape(table.name)}</Name>'
                f"<TableId>tid-{escape(table.name)}</TableId><Owner>ALIYUN$test</Owner>"
                f"<Schema><![CDATA[{json.dumps(table.schema_json())}]]></Schema></Table>"
            )
            return _response(req, 200, xml, "application/xml")
        return _response(req, 404, json.dumps({"Code": "NoSuchObject", "Message": f"no {r.path}"}),
                         "application/json")

    # --- sessions ------------------------------------------------------------------------------
    def _status(self, session: dict, lifetime: float) -> str:
        if session["status"] == "normal" and self.now() - session["created"] >= lifetime:
            session["status"] = "expired"
        return session["status"]

    def _usable(self, session: dict, lifetime: float, kind: str) -> None:
        status = self._status(session, lifetime)
        if status == "expired":
            raise _HttpError(409, "StatusConflict", f"The {kind} session is expired")
        if status != "normal":
            raise _HttpError(409, "StatusConflict", f"The {kind} session is {status}")

    # --- tunnel --------------------------------------------------------------------------------
    def _tunnel(self, r: Request, body: bytes, req) -> requests.Response:
        table = self._table(r.path)
        spec = normalize_spec(r.params.get("partition"))
        if r.method == "POST" and "downloads" in r.params:
            self._maybe_fail("download")
            if table.partitions and not spec:
                raise _HttpError(400, "InvalidPartitionSpec", "partitioned table needs a partition spec")
            if spec not in table.data:
                raise _HttpError(404, "NoSuchPartition", f"partition {spec} does not exist")
            sid = f"dl-{next(self._ids)}"
            # A download session reads a snapshot: the rows as they are now.
            rows = [row for item in table.data[spec] for row in self._rows_of(table, item)]
            self.downloads[sid] = {"table": table, "spec": spec, "rows": rows, "status": "normal",
                                   "created": self.now()}
            return self._json(req, self._download_json(sid))
        if "downloadid" in r.params:
            sid = r.params["downloadid"]
            if sid not in self.downloads:
                raise _HttpError(404, "NoSuchDownload", f"download {sid} does not exist")
            if "data" in r.params:
                self._usable(self.downloads[sid], self.download_lifetime, "download")
                self._maybe_fail("data")
                return _response(req, 200, self._arrow_body(sid, r.params), "application/octet-stream")
            return self._json(req, self._download_json(sid))
        if r.method == "POST" and "uploads" in r.params:
            self._maybe_fail("upload")
            if table.partitions and not spec:
                raise _HttpError(400, "InvalidPartitionSpec", "partitioned table needs a partition spec")
            if spec not in table.data:
                if r.params.get("create_partition") != "true":
                    raise _HttpError(404, "NoSuchPartition", f"partition {spec} does not exist")
                table.data[spec] = []
            sid = f"up-{next(self._ids)}"
            self.uploads[sid] = {"table": table, "spec": spec, "blocks": {}, "order": [], "status": "normal",
                                 "created": self.now()}
            return self._json(req, self._upload_json(sid))
        if "uploadid" in r.params:
            sid = r.params["uploadid"]
            up = self.uploads.get(sid)
            if up is None or up["table"] is not table or up["spec"] != spec:
                raise _HttpError(404, "NoSuchUpload", f"upload {sid} does not exist")
            if r.method == "GET":
                return self._json(req, self._upload_json(sid))
            self._usable(up, self.upload_lifetime, "upload")
            if r.method == "PUT":
                self._maybe_fail("block")
                block = int(r.params["blockid"])
                if not 0 <= block < 20000:
                    raise _HttpError(400, "InvalidBlockID", f"The specified block id is not valid: {block}")
                if "arrow" in r.params:
                    data = ArrowBlock(unframe_chunks(body))  # the framing is checked even when lazy
                    up["blocks"][block] = data if self.lazy_blocks else self._decode_arrow(table, data)
                else:
                    up["blocks"][block] = body if self.lazy_blocks else self._decode_records(table, body)
                if block not in up["order"]:
                    up["order"].append(block)
                return _response(req, 200, "", "text/plain")
            if r.method == "POST":
                self._maybe_fail("commit")
                for b in up["order"]:
                    table.data[up["spec"]].append(up["blocks"][b])
                up["status"] = "closed"
                self.commits.append((sid, list(up["order"])))
                return self._json(req, self._upload_json(sid))
        raise _HttpError(400, "InvalidArgument", f"unexpected tunnel request {r.method} {r.params}")

    def _rows_of(self, table: FakeTable, item) -> List[tuple]:
        """A table's data is rows and committed blocks (lists of rows, or raw bodies)."""
        if isinstance(item, tuple):
            return [item]
        if isinstance(item, ArrowBlock):
            return self._decode_arrow(table, item)
        if isinstance(item, (bytes, bytearray)):
            return self._decode_records(table, bytes(item))
        return list(item)

    def _json(self, req, obj) -> requests.Response:
        return _response(req, 200, json.dumps(obj), "application/json")

    def _download_json(self, sid: str) -> dict:
        down = self.downloads[sid]
        return {"DownloadID": sid, "Status": self._status(down, self.download_lifetime).upper(),
                "RecordCount": len(down["rows"]), "Schema": down["table"].schema_json(), "QuotaName": ""}

    def _upload_json(self, sid: str) -> dict:
        up = self.uploads[sid]
        return {"UploadID": sid, "Status": self._status(up, self.upload_lifetime).upper(),
                "Schema": up["table"].schema_json(),
                "UploadedBlockList": [{"BlockID": b} for b in up["order"]],
                "MaxFieldSize": 8 * 1024 * 1024, "QuotaName": ""}

    def _arrow_body(self, sid: str, params: Dict[str, str]) -> bytes:
        down = self.downloads[sid]
        table = down["table"]
        start, count = (int(x) for x in params["rowrange"].strip("()").split(","))
        rows = down["rows"][start:start + count]
        arrow_schema = odps_schema_to_arrow_schema(table.schema())
        names = [c for c, _ in table.columns]
        wanted = params.get("columns")
        keep = [i for i, n in enumerate(names) if not wanted or n in wanted.split(",")]
        arrays = []
        for i in keep:
            values = [row[i] for row in rows]
            typ = arrow_schema.field(i).type
            if pa.types.is_timestamp(typ):
                values = [None if v is None else int(v.timestamp() * 1000) for v in values]
                arrays.append(pa.array(values, pa.int64()).cast(typ))
            else:
                arrays.append(pa.array(values, typ))
        batch = pa.RecordBatch.from_arrays(arrays, names=[names[i] for i in keep])
        return frame_chunks(batch.serialize().to_pybytes() if rows else b"")

    def _decode_records(self, table: FakeTable, body: bytes) -> List[tuple]:
        def stream_creator(cursor, row_number=None, raw_size=None):
            if cursor != 0:
                raise AssertionError("fake server reads a block in one pass")
            return io.BytesIO(body)

        reader = TunnelRecordReader(table.schema(), stream_creator)
        out = []
        while True:
            record = reader.read()
            if record is None:
                break
            out.append(tuple(record.values[: len(table.columns)]))
        return out

    def _decode_arrow(self, table: FakeTable, data: bytes) -> List[tuple]:
        """Rows of an Arrow block (unframed), as the record reader would return them."""
        schema = odps_schema_to_arrow_schema(table.schema())
        out: List[tuple] = []
        if not data:
            return out
        try:
            reader = pa.ipc.MessageReader.open_stream(pa.py_buffer(data))
            while True:
                try:
                    message = reader.read_next_message()
                except StopIteration:
                    break
                if message is None:
                    break
                batch = pa.ipc.read_record_batch(message, schema)
                columns = []
                for i, column in enumerate(batch.columns):
                    values = column.to_pylist()
                    if pa.types.is_timestamp(schema.field(i).type):  # the record reader's naive local time
                        values = [None if v is None else datetime.datetime.fromtimestamp(v.timestamp())
                                  for v in values]
                    columns.append(values)
                out.extend(zip(*columns))
        except (pa.ArrowInvalid, pa.ArrowTypeError) as e:
            raise _HttpError(400, "MalformedDataStream", f"cannot read the Arrow block: {e}") from None
        return out

    # --- over HTTP -----------------------------------------------------------------------------
    def serve_http(self) -> Dict[str, str]:
        """Serve this fake on two loopback ports; returns the service and tunnel endpoints.

        Requests are answered by :meth:`handle` as received (headers, body, signature), so pyodps in
        any process -- a job's workers, their writer children -- talks to this one fake.
        """
        from http.server import ThreadingHTTPServer

        servers = [ThreadingHTTPServer(("127.0.0.1", 0), _http_handler(self, host))
                   for host in (SERVICE_HOST, TUNNEL_HOST)]
        for server in servers:
            server.daemon_threads = True
            threading.Thread(target=server.serve_forever, daemon=True).start()
        self._servers += servers
        return {"service": f"http://127.0.0.1:{servers[0].server_address[1]}{SERVICE_PREFIX}",
                "tunnel": f"http://127.0.0.1:{servers[1].server_address[1]}"}

    def stop_http(self) -> None:
        for server in self._servers:
            server.shutdown()
            server.server_close()
        self._servers = []


def write_config(path: str, endpoints: Dict[str, str], access_id: str = "test-ak",
                 access_key: str = "test-sk") -> str:
    """An ``ODPS_CONFIG_FILE_PATH`` file pointing pyodps at :meth:`FakeMaxCompute.serve_http`'s ports."""
    with open(path, "w") as f:
        f.write(f"access_id={access_id}\naccess_key={access_key}\nend_point={endpoints['service']}\n"
                f"tunnel_endpoint={endpoints['tunnel']}\n")
    return path


def frame_chunks(data: bytes) -> bytes:
    """Cut ``data`` the way the tunnel frames Arrow streams (see the module docstring)."""
    out = io.BytesIO()
    out.write(struct.pack("!I", CHUNK_SIZE))
    crc, crccrc = Checksum(), Checksum()
    pos = 0
    while len(data) - pos >= CHUNK_SIZE:
        chunk = data[pos:pos + CHUNK_SIZE]
        crc.update(chunk)
        crccrc.update(chunk)
        out.write(chunk)
        out.write(struct.pack("!I", crc.getvalue()))
        crc.reset()
        pos += CHUNK_SIZE
    tail = data[pos:]
    crccrc.update(tail)
    out.write(tail)
    out.write(struct.pack("!I", crccrc.getvalue()))
    return out.getvalue()


class ArrowBlock(bytes):
    """An Arrow upload's record-batch messages, unframed (told apart from a protobuf block)."""


def unframe_chunks(body: bytes) -> bytes:
    """The data of a body framed as pyodps' Arrow writer frames it; a bad CRC is a 400, as upstream.

    A 4-byte big-endian chunk size (absent when no data was written at all), then each full chunk
    followed by its CRC, then the last (partial, maybe empty) chunk and the CRC of all the data.
    """
    def crc_of(data: bytes) -> int:
        c = Checksum()
        c.update(data)
        return c.getvalue()

    def bad(why: str) -> _HttpError:
        return _HttpError(400, "DataCheckSumError", f"arrow upload: {why}")

    if len(body) == 4:
        if struct.unpack("!I", body)[0] != crc_of(b""):
            raise bad("the checksum of an empty body does not match")
        return b""
    if len(body) < 8:
        raise bad(f"a body of {len(body)} bytes is too short")
    size = struct.unpack("!I", body[:4])[0]
    if size <= 0:
        raise bad("chunk size 0")
    parts, pos = [], 4
    while len(body) - pos > size + 4:
        chunk = body[pos:pos + size]
        if struct.unpack("!I", body[pos + size:pos + size + 4])[0] != crc_of(chunk):
            raise bad(f"the checksum of the chunk at byte {pos} does not match")
        parts.append(chunk)
        pos += size + 4
    parts.append(body[pos:-4])
    data = b"".join(parts)
    if struct.unpack("!I", body[-4:])[0] != crc_of(data):
        raise bad("the checksum of the whole body does not match")
    return data


class _HttpError(Exception):
    def __init__(self, status: int, code: str, message: str):
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


class _Adapter(requests.adapters.BaseAdapter):
    def __init__(self, server: FakeMaxCompute):
        super().__init__()
        self.server = server

    def send(self, request, **kwargs):
        return self.server.handle(request)

    def close(self):
        pass


class _ReceivedRequest:
    """What :meth:`FakeMaxCompute.handle` reads of a request: as a ``requests.PreparedRequest``."""

    def __init__(self, method: str, url: str, body: bytes, headers):
        self.method, self.url, self.body, self.headers = method, url, body, headers


def _http_handler(fake: FakeMaxCompute, host: str):
    from http.server import BaseHTTPRequestHandler

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
            if self.path.startswith("/__fake__/rows/"):  # a test's or benchmark's look at a table
                project, table = self.path.split("/")[3:5]
                content = json.dumps({"rows": len(fake.rows(project, table))}).encode()
                status = 200
            else:
                response = fake.handle(_ReceivedRequest(self.command, f"http://{host}{self.path}", body,
                                                        self.headers))
                content, status = response.content or b"", response.status_code
            self.send_response(status)
            if not self.path.startswith("/__fake__/"):
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


def _body_bytes(body) -> bytes:
    if body is None:
        return b""
    if isinstance(body, (bytes, bytearray)):
        return bytes(body)
    if isinstance(body, str):
        return body.encode()
    return b"".join(bytes(chunk) for chunk in body)


def _response(req, status: int, content, content_type: str) -> requests.Response:
    resp = requests.Response()
    resp.status_code = status
    resp._content = content if isinstance(content, bytes) else content.encode("utf-8")
    resp.headers["Content-Type"] = content_type
    resp.headers["x-odps-request-id"] = "fake-request"
    resp.url = req.url
    resp.request = req
    resp.raw = urllib3.HTTPResponse(body=io.BytesIO(resp._content), status=status, preload_content=False,
                                    decode_content=False)
    resp.encoding = "utf-8"
    return resp


def naive_local(ts_ms: int) -> datetime.datetime:
    return datetime.datetime.fromtimestamp(ts_ms / 1000)
