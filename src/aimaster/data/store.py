"""The one place that talks to etcd: JSON values, a key prefix per job, retries with backoff.

Every other module goes through :class:`Store`, so that

* only JSON is ever written or read (values read back are validated: a garbage value is an
  :class:`~aimaster.errors.EtcdDataError` naming the key, never a crash loop or code execution);
* a transient etcd failure (a restart, a leader election, a dropped connection) is retried with
  backoff for ``retry_seconds`` instead of killing the worker, a failure mode torchelastic is known
  for; only then does it become :class:`~aimaster.errors.EtcdUnavailableError`;
* jobs are isolated by key prefix: callers name keys relative to it, transactions included
  (:class:`Compare`, :class:`Op`), and never hold the etcd client or build its operations.
"""

from __future__ import annotations

import copy
import json
import logging
import os
import random
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, List, Optional, Sequence, Tuple, TypeVar

import grpc
import pyetcd
import pyetcd.exceptions as etcd_exc
from pyetcd import etcdrpc
from pyetcd.client import Endpoint, KVMetadata, MultiEndpointEtcd3Client

from aimaster.errors import ConfigError, CredentialsError, EtcdDataError, EtcdUnavailableError

log = logging.getLogger(__name__)

_RETRY_CODES = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.INTERNAL,
                grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.UNKNOWN, grpc.StatusCode.ABORTED)
T = TypeVar("T")

ROOT = "/aimaster/v1/"
MAX_VALUE_BYTES = 1 << 20  # a value larger than this is not something aimaster wrote

_TRANSIENT = (
    etcd_exc.ConnectionFailedError,
    etcd_exc.ConnectionTimeoutError,
    etcd_exc.NoServerAvailableError,
    etcd_exc.InternalServerError,
)


@dataclass
class EtcdConfig:
    """How to reach etcd. ``endpoints`` are ``host:port`` strings."""

    endpoints: List[str]
    user: Optional[str] = None
    password: Optional[str] = field(default=None, repr=False)
    ca_cert: Optional[str] = None
    cert_cert: Optional[str] = None
    cert_key: Optional[str] = None
    retry_seconds: float = 60.0
    rpc_timeout: float = 10.0

    @classmethod
    def parse_endpoints(cls, text: str) -> List[str]:
        endpoints = []
        for part in text.split(","):
            part = part.strip()
            for scheme in ("http://", "https://"):
                if part.startswith(scheme):
                    part = part[len(scheme):]
            part = part.rstrip("/")
            if not part:
                continue
            host, sep, port = part.rpartition(":")
            if not sep or not host or not port.isdigit():
                raise ConfigError(f"bad etcd endpoint {part!r}: expected host:port")
            endpoints.append(f"{host}:{port}")
        if not endpoints:
            raise ConfigError(f"no etcd endpoint in {text!r}")
        return endpoints

    def to_env(self) -> dict:
        """Environment variables that let a worker process rebuild this config."""
        env = {"AIMASTER_ETCD_ENDPOINTS": ",".join(self.endpoints)}
        for name, value in (
            ("AIMASTER_ETCD_USER", self.user),
            ("AIMASTER_ETCD_PASSWORD", self.password),
            ("AIMASTER_ETCD_CA_CERT", self.ca_cert),
            ("AIMASTER_ETCD_CERT", self.cert_cert),
            ("AIMASTER_ETCD_KEY", self.cert_key),
        ):
            if value:
                env[name] = value
        # The retry window travels too: a worker must ride out the same etcd outage its launcher does.
        env["AIMASTER_ETCD_RETRY_SECONDS"] = f"{self.retry_seconds:g}"
        return env

    @classmethod
    def from_env(cls, environ=os.environ) -> Optional[EtcdConfig]:
        text = environ.get("AIMASTER_ETCD_ENDPOINTS")
        if not text:
            return None
        return cls(
            endpoints=cls.parse_endpoints(text),
            user=environ.get("AIMASTER_ETCD_USER") or None,
            password=environ.get("AIMASTER_ETCD_PASSWORD") or None,
            ca_cert=environ.get("AIMASTER_ETCD_CA_CERT") or None,
            cert_cert=environ.get("AIMASTER_ETCD_CERT") or None,
            cert_key=environ.get("AIMASTER_ETCD_KEY") or None,
            retry_seconds=retry_seconds_from_env(environ),
        )


def retry_seconds_from_env(environ=os.environ, default: float = 60.0) -> float:
    """``AIMASTER_ETCD_RETRY_SECONDS``: how long every etcd call retries before giving up."""
    text = environ.get("AIMASTER_ETCD_RETRY_SECONDS", "")
    if not text.strip():
        return default
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value > 0 or value == float("inf"):
        raise ConfigError(f"AIMASTER_ETCD_RETRY_SECONDS must be a positive number of seconds, got {text!r}")
    return value


def _make_client(cfg: EtcdConfig) -> MultiEndpointEtcd3Client:
    creds = None
    if cfg.ca_cert or cfg.cert_cert:
        def read(path):
            if not path:
                return None
            try:
                with open(path, "rb") as f:
                    return f.read()
            except OSError as e:
                raise ConfigError(f"cannot read etcd TLS file {path}: {e.strerror}")

        creds = grpc.ssl_channel_credentials(read(cfg.ca_cert), read(cfg.cert_key), read(cfg.cert_cert))
    endpoints = []
    for ep in cfg.endpoints:
        host, _, port = ep.rpartition(":")
        # time_retry: pyetcd marks a failed endpoint unusable for 300 s by default, which turns a
        # one-second etcd restart into five minutes of errors; retry it almost at once instead.
        endpoints.append(Endpoint(host, int(port), secure=creds is not None, creds=creds, time_retry=0.2))
    return MultiEndpointEtcd3Client(
        endpoints=endpoints, timeout=cfg.rpc_timeout, user=cfg.user, password=cfg.password, failover=True
    )


def dumps(value: Any) -> str:
    """Compact, deterministic JSON, non-ASCII text kept as UTF-8 (a CJK name costs 3 bytes, not the
    6 of a ``\\u`` escape). A string that is not valid Unicode (a lone surrogate from a file name that
    is not UTF-8) cannot be UTF-8: such a value is written with escapes instead."""
    text = _utf8_json(value)
    if text.isascii():
        return text
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return _ASCII_JSON.encode(value)
    return text


# One encoder each, made once: ``json.dumps`` with options builds a new encoder on every call, a
# measurable part of a commit's client CPU (it writes four or five values).
_UTF8_JSON = json.JSONEncoder(separators=(",", ":"), sort_keys=True, ensure_ascii=False)
_ASCII_JSON = json.JSONEncoder(separators=(",", ":"), sort_keys=True)
# ``JSONEncoder.encode`` also builds its C encoder anew on every call; this is the same C encoder
# (the same arguments ``iterencode`` passes it), built once. Without circular-reference markers:
# aimaster's values are trees.
_C_UTF8_JSON = json.encoder.c_make_encoder(
    None, _UTF8_JSON.default, json.encoder.encode_basestring, None, ":", ",", True, False, True) \
    if json.encoder.c_make_encoder is not None else None


def _utf8_json(value: Any) -> str:
    if _C_UTF8_JSON is None or isinstance(value, str):
        return _UTF8_JSON.encode(value)
    return "".join(_C_UTF8_JSON(value, 0))


def _utf8(value: Any) -> bytes:
    """A value already encoded (bytes) or text, as the bytes of an etcd message."""
    return value if isinstance(value, bytes) else value.encode("utf-8")


def loads(raw: bytes, key: str, expect: type = dict) -> Any:
    """Decode a value read from etcd, refusing anything aimaster would not have written."""
    if len(raw) > MAX_VALUE_BYTES:
        raise EtcdDataError(f"value at {key} is {len(raw)} bytes, larger than aimaster ever writes")
    try:
        value = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        raise EtcdDataError(f"value at {key} is not JSON: {raw[:60]!r}")
    if expect is not None and not isinstance(value, expect):
        raise EtcdDataError(f"value at {key} is a {type(value).__name__}, expected {expect.__name__}")
    return value


# -- transactions on relative keys -----------------------------------------------------------------
# Callers describe a transaction with :class:`Compare` and :class:`Op` on keys relative to the job
# prefix; :meth:`Store.txn` alone turns them into etcd request messages. So no module outside this one
# builds pyetcd objects, writes the job prefix into a key, or serialises a value differently from
# :meth:`Store.put`.

_RESULTS = {"==": etcdrpc.Compare.EQUAL, "!=": etcdrpc.Compare.NOT_EQUAL, "<": etcdrpc.Compare.LESS,
            ">": etcdrpc.Compare.GREATER}
_TARGETS = {"mod": etcdrpc.Compare.MOD, "version": etcdrpc.Compare.VERSION, "create": etcdrpc.Compare.CREATE,
            "value": etcdrpc.Compare.VALUE}
_OPERAND_FIELDS = {"mod": "mod_revision", "version": "version", "create": "create_revision"}


def _encoded(value: Any) -> Any:
    """What a value is on the wire: text and bytes as given (already JSON, or a raw value read back),
    anything else through :func:`dumps`, exactly as :meth:`Store.put` would write it."""
    return value if isinstance(value, (str, bytes)) else dumps(value)


def _relative(rel: Any, who: str) -> str:
    """Refuse what is not a relative key: an absolute one would be prefixed twice and silently miss."""
    if not isinstance(rel, str) or not rel:
        raise TypeError(f"{who} takes a key relative to the job prefix (a non-empty str), got {rel!r:.80}")
    if rel.startswith("/"):
        raise TypeError(f"{who} got the absolute key {rel!r:.80}: pass it relative to the job prefix")
    return rel


class Compare:
    """One comparison of a transaction, on a relative key, completed with ``==``, ``!=``, ``<``, ``>``::

        Compare.mod(rel) == revision        Compare.version(rel) == 0      (0: the key does not exist)
        Compare.create(rel) == revision     Compare.value(rel) == value    (str/bytes as is, else dumps)
        Compare.prefix_version(rel) == 0    (0: no key under the prefix ``rel``)

    The operand is checked when the comparison is written, so a wrong type fails at the line that
    wrote it (a :class:`TypeError`), not as an opaque gRPC error inside a retry loop.
    """

    __slots__ = ("target", "rel", "whole_prefix", "op", "operand")
    __hash__ = None  # == builds a comparison; it does not compare two of them

    def __init__(self, target: str, rel: str, whole_prefix: bool = False):
        self.target = target
        self.rel = _relative(rel, f"Compare.{target}")
        self.whole_prefix = whole_prefix
        self.op: Optional[str] = None
        self.operand: Any = None

    @classmethod
    def mod(cls, rel: str) -> Compare:
        """The key's last modification revision (0: it does not exist)."""
        return cls("mod", rel)

    @classmethod
    def version(cls, rel: str) -> Compare:
        """How many times the key was written since it was created (0: it does not exist)."""
        return cls("version", rel)

    @classmethod
    def create(cls, rel: str) -> Compare:
        """The revision that created the key (0: it does not exist)."""
        return cls("create", rel)

    @classmethod
    def value(cls, rel: str) -> Compare:
        """The key's value, as :meth:`Store.put` writes it."""
        return cls("value", rel)

    @classmethod
    def prefix_version(cls, rel: str) -> Compare:
        """Version over every key under the prefix ``rel``: ``== 0`` means there is none (etcd compares
        each key of the range; a missing key has version 0)."""
        return cls("version", rel, whole_prefix=True)

    def _complete(self, op: str, operand: Any) -> Compare:
        if self.op is not None:
            raise TypeError(f"{self!r} is already complete; write one comparison per Compare")
        if self.target == "value":
            operand = _encoded(operand)
        elif isinstance(operand, bool) or not isinstance(operand, int):
            raise TypeError(f"{self!r} compares with an int revision or version, "
                            f"got {type(operand).__name__} {operand!r:.80}")
        self.op, self.operand = op, operand
        return self

    def __eq__(self, operand: Any) -> Compare:  # type: ignore[override]
        return self._complete("==", operand)

    def __ne__(self, operand: Any) -> Compare:  # type: ignore[override]
        return self._complete("!=", operand)

    def __lt__(self, operand: Any) -> Compare:
        return self._complete("<", operand)

    def __gt__(self, operand: Any) -> Compare:
        return self._complete(">", operand)

    def __repr__(self) -> str:
        name = "prefix_version" if self.whole_prefix else self.target
        tail = f" {self.op} {self.operand!r:.80}" if self.op else ""
        return f"Compare.{name}({self.rel!r}){tail}"

    def _fill(self, store: Store, message: etcdrpc.Compare) -> None:
        """Write this comparison into ``message`` (a new entry of the request's ``compare`` list)."""
        if self.op is None:
            raise TypeError(f"{self!r} has no comparison: write e.g. {self!r} == 0")
        key = store.key_bytes(self.rel)
        message.key = key
        message.result = _RESULTS[self.op]
        target = self.target
        message.target = _TARGETS[target]
        if self.whole_prefix:
            message.range_end = pyetcd.utils.prefix_range_end(key)
        if target == "value":
            operand = self.operand
            message.value = _utf8(operand)
        elif target == "mod":
            message.mod_revision = self.operand
        else:
            setattr(message, _OPERAND_FIELDS[target], self.operand)


class Op:
    """One operation of a transaction, on a relative key: ``Op.put(rel, value, lease=None)``,
    ``Op.delete(rel)``, ``Op.delete_prefix(rel)``, ``Op.get(rel)``. A put's value is written as
    :meth:`Store.put` writes it (str/bytes as is, anything else through :func:`dumps`).

    A plain slotted class, not a dataclass: a commit builds a dozen of these, and a frozen
    dataclass's ``__init__`` costs several times as much (it sets each field through ``object``).
    """

    __slots__ = ("kind", "rel", "value", "lease")

    def __init__(self, kind: str, rel: str, value: Any = None, lease: Any = None):
        self.kind = kind
        self.rel = rel
        self.value = value
        self.lease = lease

    def __repr__(self) -> str:
        return f"Op({self.kind!r}, {self.rel!r}, {self.value!r:.80}, {self.lease!r})"

    def __eq__(self, other: Any) -> bool:
        return isinstance(other, Op) and (self.kind, self.rel, self.value, self.lease) == \
            (other.kind, other.rel, other.value, other.lease)

    __hash__ = None  # type: ignore[assignment]  # mutable slots: not a dict key

    @classmethod
    def put(cls, rel: str, value: Any, lease=None) -> Op:
        return cls("put", _relative(rel, "Op.put"), _encoded(value), lease)

    @classmethod
    def delete(cls, rel: str) -> Op:
        return cls("delete", _relative(rel, "Op.delete"))

    @classmethod
    def delete_prefix(cls, rel: str) -> Op:
        return cls("delete_prefix", _relative(rel, "Op.delete_prefix"))

    @classmethod
    def get(cls, rel: str) -> Op:
        """Read the key; its response is pyetcd's ``[(raw value, metadata)]`` (empty: no such key)."""
        return cls("get", _relative(rel, "Op.get"))

    @classmethod
    def txn(cls, compare: Sequence[Compare], success: Sequence[Op] = (), failure: Sequence[Op] = ()) -> Op:
        """A transaction nested in this branch, decided by its own ``compare`` (a claim of the next slice
        riding inside a commit: the commit applies even when that claim does not). Its response is
        etcd's ``TxnResponse`` message (``.response_txn.succeeded``)."""
        return cls("txn", "", (tuple(compare), tuple(success), tuple(failure)))

    def _fill(self, store: Store, what: str, message: etcdrpc.RequestOp) -> None:
        """Write etcd's own request message for this operation into ``message`` (a new entry of the
        request's ``success``/``failure`` list), in place: building each message on its own and
        copying it into the list cost twice as much, a tenth of a slice's client CPU (and going
        through pyetcd's operation objects a second translation on top)."""
        if self.kind == "txn":
            compare, success, failure = self.value
            store._fill_txn(what, message.request_txn, compare, success, failure)
            return
        key = store.key_bytes(self.rel)
        kind = self.kind
        if kind == "put":
            put = message.request_put
            put.key = key
            value = self.value
            put.value = _utf8(value)
            lease = self.lease
            if lease is not None:
                lease = lease.id if hasattr(lease, "id") else int(lease)
                if lease:
                    put.lease = lease
        elif kind == "delete":
            message.request_delete_range.key = key
        elif kind == "delete_prefix":
            delete = message.request_delete_range
            delete.key = key
            delete.range_end = pyetcd.utils.prefix_range_end(key)
        else:
            message.request_range.key = key


def _kv_call(client: MultiEndpointEtcd3Client, method: Callable, request: Any) -> Any:
    """One KV RPC (``client.kvstub.Txn``, ``.Range``) with a request built here, its gRPC errors
    turned into pyetcd's exceptions (and the endpoint marked failed) so that :meth:`Store._retry`
    judges them as it judges pyetcd's own calls."""
    try:
        return method(request, client.timeout, credentials=client.call_credentials, metadata=client.metadata)
    except grpc.RpcError as exc:
        client._manage_grpc_errors(exc)
        raise


def _send_txn(client: MultiEndpointEtcd3Client, request: etcdrpc.TxnRequest) -> TxnResult:
    """Send a built transaction the way pyetcd's ``transaction`` does: ``(succeeded, responses)``, a
    read's response as ``[(raw value, metadata)]``, errors as :func:`_kv_call` raises them."""
    reply = _kv_call(client, client.kvstub.Txn, request)
    responses: list = []
    for response in reply.responses:
        kind = response.WhichOneof("response")
        if kind == "response_range":
            responses.append([(kv.value, KVMetadata(kv, reply.header)) for kv in response.response_range.kvs])
        else:
            responses.append(response)
    return TxnResult(reply.succeeded, responses, reply.header.revision)


class TxnResult(tuple):
    """``(succeeded, responses)``, as pyetcd's ``transaction`` answers, with ``revision``: the
    store's revision after it, which is the mod revision of every key a successful transaction
    wrote (a claimant compares its claim key against that number at commit, not against its whole
    value)."""

    revision: int

    def __new__(cls, succeeded: bool, responses: list, revision: int) -> TxnResult:
        result = super().__new__(cls, (succeeded, responses))
        result.revision = revision
        return result


class Store:
    """A job-scoped, retrying, JSON-only view of etcd.

    Keys passed to methods are relative to ``prefix``. Create one per process: gRPC channels must not
    cross ``fork`` (see :meth:`for_this_process`).
    """

    def __init__(self, cfg: EtcdConfig, prefix: str):
        if not prefix.endswith("/"):
            prefix += "/"
        self.cfg = cfg
        self.prefix = prefix
        self._pid = os.getpid()
        self._lock = threading.Lock()
        self._client = self._connect()

    def _connect(self) -> MultiEndpointEtcd3Client:
        def connect():
            return _make_client(self.cfg)

        return self._retry(connect, what="connect")

    def for_this_process(self) -> Store:
        """This store, or a fresh one after a ``fork`` (the parent's gRPC channel is unusable there)."""
        if os.getpid() == self._pid:
            return self
        return Store(self.cfg, self.prefix)

    @property
    def client(self) -> MultiEndpointEtcd3Client:
        """The raw pyetcd client, for tests that forge keys. The code uses this class's named methods
        (add one here for what a caller needs) and :class:`Compare`/:class:`Op` transactions."""
        return self._client

    def key(self, rel: str) -> str:
        """The absolute key of ``rel``: for naming it in a message. Operations take ``rel`` itself."""
        return self.prefix + rel

    def key_bytes(self, rel: str) -> bytes:
        """The absolute key of ``rel`` as etcd's messages hold it."""
        return (self.prefix + rel).encode("utf-8")

    def with_prefix(self, prefix: str) -> Store:
        """The same connection, keys relative to another prefix: for what lives outside the job's
        (the etcd-wide job index). Closing either closes the connection of both."""
        other = copy.copy(self)
        other.prefix = prefix if prefix.endswith("/") else prefix + "/"
        return other

    def close(self) -> None:
        try:
            self._client.close()
        except Exception:  # closing a broken channel must not mask the error that got us here
            pass

    # -- retry ---------------------------------------------------------------------------------
    def _retry(self, fn: Callable[[], T], what: str) -> T:
        deadline = time.monotonic() + self.cfg.retry_seconds
        delay = 0.05
        while True:
            try:
                return fn()
            except _TRANSIENT as e:
                err = e
            except grpc.RpcError as e:
                code = e.code() if hasattr(e, "code") else None
                details = e.details() if hasattr(e, "details") else str(e)
                if code in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED) or \
                        "authentication failed" in (details or ""):
                    who = f" for user {self.cfg.user}" if self.cfg.user else " (no --etcd-user given)"
                    raise CredentialsError(
                        f"etcd at {','.join(self.cfg.endpoints)} refused the credentials{who}: {details}")
                if code not in _RETRY_CODES:
                    raise  # NOT_FOUND (an expired lease), INVALID_ARGUMENT...: retrying cannot help
                err = e
            except ValueError as e:  # pyetcd: "Trying to use a failed node"
                err = e
            if time.monotonic() >= deadline:
                raise EtcdUnavailableError(
                    f"etcd at {','.join(self.cfg.endpoints)} unreachable for {self.cfg.retry_seconds:.0f}s "
                    f"({what}: {type(err).__name__}: {err})"
                )
            log.debug("etcd %s failed (%s); retrying in %.2fs", what, err, delay)
            time.sleep(delay * (0.5 + random.random()))
            delay = min(delay * 2, 2.0)

    def call(self, what: str, fn: Callable[[MultiEndpointEtcd3Client], T]) -> T:
        return self._retry(lambda: fn(self._client), what)

    # -- JSON key/value --------------------------------------------------------------------------
    def get(self, rel: str, expect: type = dict) -> Tuple[Any, Optional[Any]]:
        """(value or None, metadata or None)."""
        k = self.key(rel)
        raw, meta = self.call(f"get {k}", lambda c: c.get(k))
        if raw is None:
            return None, None
        return loads(raw, k, expect), meta

    def get_raw(self, rel: str) -> Tuple[Optional[bytes], Optional[Any]]:
        """(raw bytes or None, metadata or None): for a caller that judges the value itself (a record
        that may be garbage, or only its revision matters). Decode with :func:`loads`."""
        k = self.key(rel)
        return self.call(f"get {k}", lambda c: c.get(k))

    def get_value(self, rel: str, expect: type = dict) -> Any:
        return self.get(rel, expect)[0]

    def put(self, rel: str, value: Any, lease=None) -> None:
        k = self.key(rel)
        data = dumps(value)
        self.call(f"put {k}", lambda c: c.put(k, data, lease=lease))

    def delete(self, rel: str) -> None:
        k = self.key(rel)
        self.call(f"delete {k}", lambda c: c.delete(k))

    def delete_prefix(self, rel: str) -> None:
        k = self.key(rel)
        self.call(f"delete prefix {k}", lambda c: c.delete_prefix(k))

    def range(self, rel: str, keys_only: bool = False, limit: Optional[int] = None,
              expect: type = dict) -> List[Tuple[str, Any, Any]]:
        """[(relative key, value or None if keys_only, metadata)] sorted by key."""
        k = self.key(rel)
        kwargs = {"keys_only": keys_only, "sort_order": "ascend", "sort_target": "key"}
        if limit:
            kwargs["limit"] = limit
        items = self.call(f"range {k}", lambda c: list(c.get_prefix(k, **kwargs)))
        out = []
        n = len(self.prefix)
        for raw, meta in items:
            key = meta.key.decode("utf-8", "replace")
            out.append((key[n:], None if keys_only else loads(raw, key, expect), meta))
        return out

    def range_between(self, start_rel: str, end_rel: Optional[str], limit: int,
                      expect: type = dict) -> List[Tuple[str, Any, Any]]:
        """Like :meth:`range` over ``[start_rel, end_rel)`` (``end_rel`` None: to the end of the
        prefix that ``start_rel``'s parent directory names). Bounded ranges matter: etcd counts every
        key of a range even when ``limit`` is set."""
        start = self.key(start_rel)
        if end_rel is None:
            parent = start_rel.rsplit("/", 1)[0] + "/"
            end = pyetcd.utils.prefix_range_end(pyetcd.utils.to_bytes(self.key(parent)))
        else:
            end = self.key(end_rel)
        items = self.call(f"range {start}", lambda c: list(c.get_range(start, end, limit=limit, sort_order="ascend",
                                                                       sort_target="key")))
        n = len(self.prefix)
        out = []
        for raw, meta in items:
            key = meta.key.decode("utf-8", "replace")
            out.append((key[n:], loads(raw, key, expect), meta))
        return out

    def raw_between(self, start_rel: str, end_rel: str, limit: int) -> List[Tuple[str, bytes, Any]]:
        """[(relative key, raw bytes, metadata)] over ``[start_rel, end_rel)``, at most ``limit``, by key:
        for a caller that judges each value itself, so one bad value spoils no other."""
        start, end = self.key(start_rel), self.key(end_rel)
        items = self.call(f"range {start}", lambda c: list(c.get_range(start, end, limit=limit, sort_order="ascend",
                                                                       sort_target="key")))
        return self._relative_items(items)

    def changed_since(self, rel: str, revision: int) -> List[Tuple[str, bytes, Any]]:
        """[(relative key, raw bytes, metadata)] of the keys under ``rel`` written after ``revision``
        (0: every key): reading only what is new keeps a poll over a growing prefix cheap."""
        k = self.key(rel)
        kwargs = {"min_mod_revision": revision + 1} if revision else {}
        return self._relative_items(self.call(f"range {k}", lambda c: list(c.get_prefix(k, **kwargs))))

    def any_changed_since(self, rel: str, revision: int) -> bool:
        """Whether a key under ``rel`` was written after ``revision`` (keys only, at most one sent).

        Not a count: etcd's ``count`` ignores the revision filters (it counts the whole range), so
        the filtered keys themselves are asked for. etcd applies the limit after the filter.
        """
        k = self.key(rel)
        items = self.call(f"changed-since {k}", lambda c: list(c.get_prefix(k, keys_only=True, limit=1,
                                                                            min_mod_revision=revision + 1)))
        return bool(items)

    def first_created_before(self, prefix_rel: str, revision: int, from_rel: Optional[str] = None) -> Optional[str]:
        """A key (relative) under ``prefix_rel`` (from ``from_rel`` on, if given) created before
        ``revision``, or None: keys only, at most one sent.

        The request is built here: pyetcd's ``get_range`` puts ``max_create_revision`` into the
        request's ``min_mod_revision`` field (a different filter altogether).
        """
        prefix = self.key_bytes(prefix_rel)
        start = prefix if from_rel is None else self.key_bytes(from_rel)
        request = etcdrpc.RangeRequest(key=start, range_end=pyetcd.utils.prefix_range_end(prefix), keys_only=True,
                                       limit=1, max_create_revision=max(revision - 1, 1))
        reply = self.call(f"created-before {start.decode()}", lambda c: _kv_call(c, c.kvstub.Range, request))
        return reply.kvs[0].key.decode("utf-8", "replace")[len(self.prefix):] if reply.kvs else None

    def revision(self) -> int:
        """The store's current revision: every key written from now on has a higher mod revision."""
        k = self.key("")
        return self.call(f"revision {k}",
                         lambda c: c.get_prefix_response(k + "\0", count_only=True).header.revision)

    def _relative_items(self, items) -> List[Tuple[str, bytes, Any]]:
        n = len(self.prefix)
        return [(meta.key.decode("utf-8", "replace")[n:], raw, meta) for raw, meta in items]

    def keys(self, rel: str) -> List[str]:
        n = len(self.prefix) + len(rel)
        return [k[n - len(self.prefix):] for k, _, _ in self.range(rel, keys_only=True)]

    def count(self, rel: str) -> int:
        k = self.key(rel)
        return self.call(f"count {k}", lambda c: c.get_prefix_response(k, count_only=True).count)

    def count_between(self, start_rel: str, end_rel: str) -> int:
        """How many keys lie in ``[start_rel, end_rel)``, counted by etcd without sending them."""
        start, end = self.key(start_rel), self.key(end_rel)
        return self.call(f"count {start}", lambda c: c.get_range_response(start, end, count_only=True).count)

    def txn(self, what: str, compare: Sequence, success: Sequence = (), failure: Sequence = ()):
        """Run a transaction: ``(succeeded, responses)``, retried like every call.

        ``compare`` holds :class:`Compare`, ``success``/``failure`` hold :class:`Op`, all on keys relative
        to this store's prefix; anything else (pyetcd's own objects on absolute keys included) is a
        :class:`TypeError` naming ``what``. Everything is translated before the first attempt, so a bad
        operand never reaches the retry loop.
        """
        request = etcdrpc.TxnRequest()
        self._fill_txn(what, request, compare, success, failure)
        return self.call(what, lambda c: _send_txn(c, request))

    def _fill_txn(self, what: str, request: etcdrpc.TxnRequest, compare: Sequence, success: Sequence,
                  failure: Sequence) -> None:
        """Fill a (possibly nested) transaction request in place, refusing anything that is not a
        :class:`Compare` or :class:`Op` (pyetcd's own objects on absolute keys included)."""
        for c in compare:
            if not isinstance(c, Compare):
                raise TypeError(f"transaction {what!r}: {c!r:.80} is not a Compare (write e.g. "
                                f"Compare.version(rel) == 0)")
            c._fill(self, request.compare.add())
        for branch, ops in ((request.success, success), (request.failure, failure)):
            for o in ops:
                if not isinstance(o, Op):
                    raise TypeError(f"transaction {what!r}: {o!r:.80} is not an Op (Op.put, Op.delete, "
                                    f"Op.delete_prefix, Op.get)")
                o._fill(self, what, branch.add())

    def iter_prefix_chunks(self, rel: str, page: int = 1000) -> Iterator[Tuple[str, bytes, Any]]:
        """Walk a large prefix in pages, so a million keys never sit in one gRPC response."""
        start = self.key(rel)
        end = pyetcd.utils.prefix_range_end(pyetcd.utils.to_bytes(start))
        while True:
            items = self.call(
                f"range {start}",
                lambda c, s=start: list(c.get_range(s, end, limit=page, sort_order="ascend",
                                                    sort_target="key")),
            )
            for raw, meta in items:
                yield meta.key.decode("utf-8", "replace")[len(self.prefix):], raw, meta
            if len(items) < page:
                return
            start = items[-1][1].key + b"\0"

    def put_once(self, rel: str, value: Any) -> None:
        """One try at a put, no retries: for a process on its way out, which must not wait
        ``retry_seconds`` on an etcd that is gone (the error is the caller's to judge)."""
        key = self.key(rel)
        self._client.put(key, _encoded(value))

    # -- leases ----------------------------------------------------------------------------------
    def grant_lease(self, ttl: int):
        return self.call("grant lease", lambda c: c.lease(ttl))

    def refresh_lease(self, lease) -> int:
        """Keep a lease alive; returns the remaining TTL (0 if the lease has already expired)."""
        responses = self.call("refresh lease", lambda c: list(c.refresh_lease(lease.id)))
        return responses[0].TTL if responses else 0

    def revoke_lease(self, lease) -> None:
        """Revoke a lease, ours (a lease object) or one read from a record (its id), ignoring failure."""
        lease_id = lease if isinstance(lease, int) else lease.id
        try:
            self._client.revoke_lease(lease_id)
        except Exception:  # an expired lease or an etcd that is going away: the TTL releases it anyway
            pass


def job_prefix(job_id: str) -> str:
    return f"{ROOT}jobs/{job_id}/"
