"""Table URLs: parsing, and the mapping of a URL to its backend.

Callers never look at a URL's scheme themselves (the fsspec ``url_to_fs`` idea): they call
:func:`open_table_source` / :func:`open_table_sink`, and the registry picks the backend --
``odps://`` goes to the local warehouse when ``AIMASTER_ODPS_WAREHOUSE`` is set and to MaxCompute
otherwise; a plain path or ``file://`` URL is Parquet. Backends are kinds of the ``table_backend``
group of :mod:`aimaster.plugins`, imported on first use, so ``import aimaster`` never pays for pyodps.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from typing import Any, Callable, Dict, Mapping, Optional, Tuple
from urllib.parse import parse_qsl, unquote, urlsplit

from aimaster import plugins
from aimaster.errors import UrlError

WAREHOUSE_ENV = "AIMASTER_ODPS_WAREHOUSE"


def parse_table_url(url: str) -> Tuple[str, Optional[int], Optional[int]]:
    """Split ``url`` into the table URL without its row range and the range's ``start``/``end``.

    ``odps://prj/tables/t?start=0&end=4096`` -> ``("odps://prj/tables/t", 0, 4096)``. ``end`` is
    exclusive; either bound may be absent (``None``). Any other query parameter is a UrlError.
    """
    if not isinstance(url, str) or not url.strip():
        raise UrlError(f"table URL must be a non-empty string, got {url!r}")
    url = url.strip()
    base, sep, query = url.partition("?")
    start = end = None
    if sep:
        seen = set()
        for key, value in parse_qsl(query, keep_blank_values=True):
            if key not in ("start", "end") or key in seen:
                raise UrlError(f"unexpected query parameter {key!r} in table URL {url} (only start= and end=)")
            seen.add(key)
            if not re.fullmatch(r"\d+", value):
                raise UrlError(f"{key}={value!r} in table URL {url} is not a non-negative integer")
            if key == "start":
                start = int(value)
            else:
                end = int(value)
        if start is not None and end is not None and end < start:
            raise UrlError(f"end {end} is before start {start} in table URL {url}")
    if not base:
        raise UrlError(f"table URL {url!r} names no table")
    return base, start, end


@dataclass(frozen=True)
class OdpsTableName:
    """``odps://project/tables/table[/p1=v1[/p2=v2]]`` taken apart."""

    project: str
    table: str
    partition: Tuple[Tuple[str, str], ...] = ()

    @property
    def partition_spec(self) -> str:
        """pyodps' partition spec string: ``p1=v1,p2=v2`` (empty when the URL names no partition)."""
        return ",".join(f"{k}={v}" for k, v in self.partition)

    @property
    def url(self) -> str:
        parts = [f"odps://{self.project}/tables/{self.table}"] + [f"{k}={v}" for k, v in self.partition]
        return "/".join(parts)


_NAME = re.compile(r"[A-Za-z0-9_$][A-Za-z0-9_$.\-]*")


def parse_odps_url(url: str) -> OdpsTableName:
    base, _, _ = parse_table_url(url)
    parts = urlsplit(base)
    if parts.scheme != "odps":
        raise UrlError(f"{url} is not an odps:// table URL")
    segments = [parts.netloc] + [s for s in parts.path.split("/")]
    segments = [unquote(s) for s in segments if s != ""]
    if len(segments) < 3 or segments[1] != "tables":
        raise UrlError(f"malformed MaxCompute table URL {url}: expected odps://project/tables/table[/p=v...]")
    project, table = segments[0], segments[2]
    for name, what in ((project, "project"), (table, "table")):
        if not _NAME.fullmatch(name):
            raise UrlError(f"bad {what} name {name!r} in table URL {url}")
    partition = []
    for seg in segments[3:]:
        key, eq, value = seg.partition("=")
        if not eq or not _NAME.fullmatch(key) or value == "" or "/" in value or "," in value:
            raise UrlError(f"bad partition {seg!r} in table URL {url}: expected name=value")
        partition.append((key, value))
    keys = [k for k, _ in partition]
    if len(set(keys)) != len(keys):
        raise UrlError(f"partition column repeated in table URL {url}")
    return OdpsTableName(project, table, tuple(partition))


def local_path(url: str) -> str:
    """The filesystem path of a ``file://`` URL or plain path (``~`` expanded)."""
    if url.startswith("file://"):
        url = unquote(url[len("file://"):])
    return os.path.abspath(os.path.expanduser(url))


# --- URL -> backend -------------------------------------------------------------------------------
# Which backend a URL's scheme goes to; the backends themselves are kinds of the "table_backend"
# group of :mod:`aimaster.plugins`, imported on first use.

_SCHEMES: Dict[str, Callable[[str], str]] = {}


def register_table_backend(name: str, module: str) -> None:
    """Make backend ``name`` the module ``module``, which defines ``open_source(url, **options)``,
    ``open_sink(url, **options)`` and ``source_from_description(description)``."""
    plugins.register("table_backend", name, module)


def register_table_scheme(scheme: str, resolver: Callable[[str], str]) -> None:
    """URLs with ``scheme`` go to the backend named by ``resolver(url)``."""
    _SCHEMES[scheme] = resolver


def _odps_backend(url: str) -> str:
    return "warehouse" if os.environ.get(WAREHOUSE_ENV) else "odps"


register_table_scheme("odps", _odps_backend)
register_table_scheme("file", lambda url: "parquet")
register_table_scheme("", lambda url: "parquet")


def backend_name(url: str) -> str:
    scheme = urlsplit(url).scheme if "://" in url else ""
    resolver = _SCHEMES.get(scheme)
    if resolver is None:
        known = ", ".join(sorted(s + "://" for s in _SCHEMES if s))
        raise UrlError(f"unsupported table URL scheme {scheme + '://'!r} in {url} (supported: {known}, "
                       "or a path to Parquet)")
    return resolver(url)


def backend_module(name: str) -> Any:
    try:
        return plugins.load("table_backend", name)
    except plugins.UnknownPluginError as e:
        raise UrlError(str(e))


def open_table_source(url: str, **options: Any):
    """Open the table ``url`` (without a row range) for reading: a :class:`TableSource`."""
    base, start, end = parse_table_url(url)
    if start is not None or end is not None:
        raise UrlError(f"{url} carries a row range; open the table URL and pass the range to read()")
    return backend_module(backend_name(base)).open_source(base, **options)


def open_table_sink(url: str, **options: Any):
    """Open the table ``url`` for exactly-once slice output: a :class:`TableSink`."""
    base, start, end = parse_table_url(url)
    if start is not None or end is not None:
        raise UrlError(f"output table URL {url} must not carry a row range")
    return backend_module(backend_name(base)).open_sink(base, **options)


def source_from_description(description: Mapping[str, Any]):
    """Reopen a source in another process from its :meth:`TableSource.describe` dict."""
    name = description.get("backend") if isinstance(description, Mapping) else None
    if not isinstance(name, str):
        raise UrlError(f"not a table source description: {description!r}")
    return backend_module(name).source_from_description(description)
