"""Publishing a committed output exactly once on a file system with no atomic rename.

An object store (S3, OSS, GCS, Azure Blob) has no rename and no directories: ``mv`` is a copy and a
delete, and a "directory" is only a key prefix. What it does have is what exactly-once needs:

* an object appears whole or not at all: a PUT (or the completion of a multipart upload) makes it
  visible at once, so a staged object is never seen half-written, and neither is a copied one;
* a server-side copy (``CopyObject``; OSS ``CopyObject``; GCS ``rewrite``) makes the final key from
  the staged one without the bytes travelling through the worker.

So publishing a slice's output is three steps, each safe to redo (:func:`publish`):

1. the staged object, written by the attempt before its commit, is there: copy it to the final key
   (server side). A crash before the copy leaves the final key absent and the staged object in
   place: the finalizer's redo copies it.
2. the final key is checked to hold an object of the staged object's size (a copy that failed
   half-way must not pass for a published one).
3. the staged object is deleted. A crash between the copy and this delete leaves both: the redo
   copies again (the same bytes onto the same key: readers see the same content before and after)
   and deletes. Once the staged object is gone, a redo finds the final key and does nothing.

Only the attempt whose etcd commit won is ever published, and the final key is derived from the
slice id only, so a loser (which never copies) cannot leave a second object, and a redo cannot land
anywhere else. A staged object that is missing while the final key is absent too means the output
was lost: that is an error (:class:`StagedOutputMissingError`), never a silent success.

Listings are cached by fsspec file systems (s3fs keeps a ``dircache`` per process, shared by every
user of the same instance); a long-lived process (the master) that listed a prefix earlier would not
see an object written since by a worker. Every check here therefore drops the cache first.

Failures of the store itself come from botocore, oss2 or aiohttp, whose exceptions share no base
class: :func:`remote_errors` words them in one line naming the URL and says whose fault they are
(credentials: the configuration's; an endpoint out of reach: the environment's).
"""

from __future__ import annotations

import contextlib
import posixpath
from typing import Any, Iterator

import fsspec

from aimaster.errors import AimasterError, CredentialsError
from aimaster.io.staging import StagedOutputMissingError

#: fsspec protocols of flat object stores: keys, not directories; no rename.
OBJECT_STORE_PROTOCOLS = frozenset({"s3", "s3a", "oss", "gs", "gcs", "az", "abfs", "abfss", "adl", "cos", "obs",
                                    "r2", "tos"})


class ObjectStoreError(AimasterError, OSError):
    """An object store request failed while publishing (a network blip, throttling, a 5xx).

    An environment failure: the worker is relaunched and the finalizer redoes the publish.
    """

    environment = True


class StorageAccessError(AimasterError, PermissionError):
    """The remote storage refused access (wrong credentials, a bucket policy): a configuration error."""


@contextlib.contextmanager
def remote_errors(url: str, doing: str) -> Iterator[None]:
    """Turn a remote file system's failure into one line naming ``url`` (not a botocore traceback).

    A missing object stays a ``FileNotFoundError`` for the caller to word. Refused access and
    missing credentials are the configuration's fault (the job fails at once); anything else -- an
    endpoint out of reach, throttling, a 5xx -- is the environment's (the worker is relaunched).
    """
    try:
        yield
    except (AimasterError, FileNotFoundError):
        raise
    except PermissionError as e:
        raise StorageAccessError(f"{doing} {url}: access denied ({e}); check the storage credentials "
                                 "(see docs/object-stores.md)")
    except Exception as e:  # noqa: BLE001 - botocore/oss2/aiohttp errors share no base class
        if not (isinstance(e, OSError) or _from_storage_library(e)):
            raise  # a programming error keeps its traceback
        if type(e).__name__ in ("NoCredentialsError", "PartialCredentialsError", "NoAuthTokenError"):
            raise CredentialsError(f"{doing} {url}: no storage credentials found ({e}); set them in the "
                                   "environment (see docs/object-stores.md)")
        raise ObjectStoreError(f"{doing} {url} failed: {type(e).__name__}: {e}")


#: Packages whose exceptions are the storage's failures (their errors share no base class).
_STORAGE_LIBRARIES = frozenset({"botocore", "aiobotocore", "boto3", "s3fs", "aiohttp", "urllib3", "requests",
                                "oss2", "ossfs", "gcsfs", "google", "adlfs", "azure", "fsspec", "asyncio"})


def _from_storage_library(error: BaseException) -> bool:
    return any(cls.__module__.split(".")[0] in _STORAGE_LIBRARIES for cls in type(error).__mro__[:-2])


def is_object_store(fs: fsspec.AbstractFileSystem) -> bool:
    protocols = fs.protocol if isinstance(fs.protocol, (tuple, list)) else (fs.protocol,)
    return any(p in OBJECT_STORE_PROTOCOLS for p in protocols)


def refresh(fs: fsspec.AbstractFileSystem, path: str) -> None:
    """Forget what this process's instance of ``fs`` cached about ``path`` and its parents."""
    try:
        fs.invalidate_cache(path)
        fs.invalidate_cache(posixpath.dirname(path))
    except (AttributeError, NotImplementedError, TypeError):
        pass


def _size(fs: fsspec.AbstractFileSystem, path: str) -> Any:
    """The size of object ``path``, or None if there is none (a prefix holding objects is none)."""
    refresh(fs, path)
    try:
        info = fs.info(path)
    except FileNotFoundError:
        return None
    return info.get("size") if info.get("type", "file") == "file" else None


def copy_to_final(fs: fsspec.AbstractFileSystem, src: str, dst: str) -> None:
    """Step 1: the server-side copy of the staged object onto the final key."""
    fs.copy(src, dst)


def remove_staged(fs: fsspec.AbstractFileSystem, src: str) -> None:
    """Step 3: delete the staged object (a missing one is fine: a concurrent redo deleted it)."""
    try:
        fs.rm_file(src)
    except FileNotFoundError:
        pass


def publish(fs: fsspec.AbstractFileSystem, src: str, dst: str, display: str) -> None:
    """Copy the committed staged object ``src`` to its final key ``dst``, then delete ``src``.

    Idempotent, and safe after a crash at any point (see the module docstring). ``display`` names
    the final object in errors (the user's URL, not the file system's internal path).
    """
    with remote_errors(display, "publishing"):
        staged = _size(fs, src)
        if staged is None:
            if _size(fs, dst) is not None:
                return  # published already: this is a redo after the staged object was removed
            raise StagedOutputMissingError(
                f"the committed output {display} was never published and its staged object "
                f"{fs.unstrip_protocol(src)} is gone: the slice's output is lost")
        copy_to_final(fs, src, dst)
        final = _size(fs, dst)
        if final != staged:
            raise ObjectStoreError(f"publishing {display}: the copy of {fs.unstrip_protocol(src)} holds "
                                   f"{final} bytes, not {staged}")
        remove_staged(fs, src)


def remove_prefix(fs: fsspec.AbstractFileSystem, prefix: str) -> None:
    """Delete every object under ``prefix`` (an attempt's or the job's staging area); none is fine."""
    refresh(fs, prefix)
    with remote_errors(fs.unstrip_protocol(prefix), "removing staged objects under"):
        try:
            keys = fs.find(prefix)
            if keys:
                fs.rm(keys)
        except FileNotFoundError:
            pass
