"""An in-memory MaxCompute service behind pyodps' HTTP layer, for tests.

No live MaxCompute is reachable from CI, so the MaxCompute backend is verified against this fake:
pyodps' real classes (``ODPS``, ``TableTunnel``, download/upload sessions, the Arrow reader, the
protobuf record writer) run unchanged, and only ``RestClient.session`` -- the ``requests`` session
every pyodps request goes through -- is replaced by one whose transport adapter answers here.

The wire formats are the ones pyodps speaks (read from its source, ``odps/tunnel``):

* table metadata: ``GET /projects/<p>/tables/<t>`` -> XML ``<Table>`` whose ``<Schema>`` is JSON;
* tunnel endpoint: ``GET /projects/<p>/tunnel?service`` -> the tunnel host name as text;
* download session: ``POST ...?downloads`` -> JSON ``DownloadID/Status/RecordCount/Schema``;
* row range: ``GET ...?data&arrow&downloadid=..&rowrange=(start,count)[&columns=..]`` -> Arrow IPC
  record-batch messages (no schema message) cut into CRC-checked chunks: a 4-byte big-endian chunk
  size, then each full chunk followed by its CRC, the last partial chunk followed by the CRC of all;
* upload session: ``POST ...?uploads`` / ``GET ...?uploadid=..`` -> JSON with ``UploadedBlockList``;
* block: ``PUT ...?uploadid=..&blockid=N`` with protobuf records (decoded with pyodps' own reader);
* commit: ``POST ...?uploadid=..`` -- the request names no blocks: the server commits every block it
  holds, exactly as the real tunnel does (pyodps only checks the block list on the client side).

Every request is logged in :attr:`FakeMaxCompute.requests` so tests can assert what went over the wire.
"""

from __future__ import annotations

import datetime
import io
import itertools
import json
import struct
import threading
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple
from urllib.parse import parse_qs, unquote, urlsplit
from xml.sax.saxutils import escape

import pyarrow as pa
import requests
import urllib3
from odps.models import TableSchema
from odps.tunnel.checksum import Checksum
from odps.tunnel.io.reader import TunnelRecordReader
from odps.tunnel.io.types import odps_schema_to_arrow_schema

TUNNEL_HOST = "tunnel.fake-odps.test"
CHUNK_SIZE = 256  # small, so that even tiny tables exercise multi-chunk framing


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


class FakeMaxCompute:
    """The service state plus a ``requests`` adapter answering pyodps' calls from it."""

    def __init__(self) -> None:
        self.tables: Dict[Tuple[str, str], FakeTable] = {}
        self.requests: List[Request] = []
        self.downloads: Dict[str, Tuple[FakeTable, str]] = {}
        self.uploads: Dict[str, dict] = {}
        self.commits: List[Tuple[str, List[int]]] = []
        self.fail_next: Dict[str, Tuple[int, str, str]] = {}  # request kind -> (status, code, message)
        self._ids = itertools.count(1)
        self._lock = threading.Lock()

    # --- test-facing helpers -------------------------------------------------------------------
    def create_table(self, project, name, columns, partitions=()):
        table = FakeTable(project, name, [(c, t.upper()) for c, t in columns],
                          [(p, t.upper()) for p, t in partitions])
        if not table.partitions:
            table.data[""] = []
        self.tables[(project, name)] = table
        return table

    def add_rows(self, project, name, rows, partition=None):
        table = self.tables[(project, name)]
        table.data.setdefault(normalize_spec(partition), []).extend(tuple(r) for r in rows)

    def rows(self, project, name, partition=None):
        return list(self.tables[(project, name)].data.get(normalize_spec(partition), []))

    def requests_of(self, *keys: str, method: Optional[str] = None) -> List[Request]:
        return [r for r in self.requests if r.has(*keys) and (method is None or r.method == method)]

    def session(self) -> requests.Session:
        s = requests.Session()
        adapter = _Adapter(self)
        s.mount("http://", adapter)
        s.mount("https://", adapter)
        return s

    # --- dispatch ------------------------------------------------------------------------------
    def handle(self, req: requests.PreparedRequest) -> requests.Response:
        parts = urlsplit(req.url)
        params = {k: v[0] for k, v in parse_qs(parts.query, keep_blank_values=True).items()}
        path = unquote(parts.path)
        record = Request(req.method.upper(), parts.hostname or "", path, params)
        with self._lock:
            self.requests.append(record)
        body = _body_bytes(req.body)
        try:
            if record.host == TUNNEL_HOST:
                return self._tunnel(record, body, req)
            return self._service(record, req)
        except _HttpError as e:
            return _response(req, e.status, json.dumps({"Code": e.code, "Message": e.message}),
                             "application/json")

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
            self.downloads[sid] = (table, spec)
            return self._json(req, self._download_json(sid))
        if "downloadid" in r.params:
            sid = r.params["downloadid"]
            if sid not in self.downloads:
                raise _HttpError(404, "NoSuchDownload", f"download {sid} does not exist")
            if "data" in r.params:
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
            self.uploads[sid] = {"table": table, "spec": spec, "blocks": {}, "status": "normal"}
            return self._json(req, self._upload_json(sid))
        if "uploadid" in r.params:
            sid = r.params["uploadid"]
            up = self.uploads.get(sid)
            if up is None:
                raise _HttpError(404, "NoSuchUpload", f"upload {sid} does not exist")
            if r.method == "GET":
                return self._json(req, self._upload_json(sid))
            if up["status"] != "normal":
                raise _HttpError(409, "StatusConflict", f"upload {sid} is {up['status']}")
            if r.method == "PUT":
                self._maybe_fail("block")
                rows = self._decode_records(table, body)
                up["blocks"][int(r.params["blockid"])] = rows
                return _response(req, 200, "", "text/plain")
            if r.method == "POST":
                self._maybe_fail("commit")
                blocks = sorted(up["blocks"])
                for b in blocks:
                    table.data[up["spec"]].extend(up["blocks"][b])
                up["status"] = "closed"
                self.commits.append((sid, blocks))
                return self._json(req, self._upload_json(sid))
        raise _HttpError(400, "InvalidArgument", f"unexpected tunnel request {r.method} {r.params}")

    def _json(self, req, obj) -> requests.Response:
        return _response(req, 200, json.dumps(obj), "application/json")

    def _download_json(self, sid: str) -> dict:
        table, spec = self.downloads[sid]
        return {"DownloadID": sid, "Status": "normal", "RecordCount": len(table.data[spec]),
                "Schema": table.schema_json(), "QuotaName": ""}

    def _upload_json(self, sid: str) -> dict:
        up = self.uploads[sid]
        return {"UploadID": sid, "Status": up["status"], "Schema": up["table"].schema_json(),
                "UploadedBlockList": [{"BlockID": b} for b in sorted(up["blocks"])],
                "MaxFieldSize": 8 * 1024 * 1024, "QuotaName": ""}

    def _arrow_body(self, sid: str, params: Dict[str, str]) -> bytes:
        table, spec = self.downloads[sid]
        start, count = (int(x) for x in params["rowrange"].strip("()").split(","))
        rows = table.data[spec][start:start + count]
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
