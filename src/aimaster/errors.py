"""Errors a user can cause or the environment can, each naming the thing at fault.

The CLI prints any :class:`AimasterError` as one line (``aimaster: error: ...``) and exits non-zero;
anything else is a programming error and keeps its traceback.

Each error class also says *whose* fault it is (:attr:`AimasterError.environment`), because the
master acts on it when a worker dies of one:

* the input or the configuration is wrong (a missing input, a malformed meta file or URL, a schema
  mismatch, bad credentials, a corrupt value in etcd): every relaunch would fail the same way, so
  the worker exits with the *user error* code and the job fails at once;
* the environment failed (a storage read or write, etcd out of reach for longer than the retry
  window, a crashed writer subprocess, an I/O error of the machine): a new attempt may well work,
  so the worker exits with the *environment error* code and the master relaunches it under
  ``--fault-tolerant-policy``, counted toward ``--max-num-of-same-error``.

The exit codes live in :mod:`aimaster.data.runtime`; :func:`is_environment_error` decides for any
exception, including a plain :class:`OSError` raised by user code.
"""

from __future__ import annotations

import errno


class AimasterError(Exception):
    """Base of every error caused by input, configuration or environment (not by a bug)."""

    #: True: the environment failed and a relaunch may succeed; False: the input or configuration
    #: is wrong and a relaunch would fail the same way.
    environment = False


class ConfigError(AimasterError, ValueError):
    """A configuration value is invalid (bad slice size, both selected and excluded columns, ...)."""


class InputNotFoundError(AimasterError, FileNotFoundError):
    """An input directory, file, table or meta file does not exist."""


class EmptyInputError(AimasterError):
    """An input holds nothing to process (an empty directory, a table with no rows)."""


class MetaFileError(AimasterError, ValueError):
    """The ``input_file_meta_path`` JSON file is unreadable or inconsistent."""


class UrlError(AimasterError, ValueError):
    """A table or file URL is malformed or names an unsupported scheme."""


class SchemaError(AimasterError, ValueError):
    """Rows do not fit a table's schema, or columns named by the user do not exist."""


class TableIOError(AimasterError, OSError):
    """A table backend failed to read or write (including a crashed writer subprocess)."""

    environment = True


class EtcdUnavailableError(AimasterError, ConnectionError):
    """The coordination etcd cannot be reached (after retries)."""

    environment = True


class EtcdDataError(AimasterError, ValueError):
    """A value read from etcd is not the JSON aimaster wrote there (corrupt or hostile)."""


class CredentialsError(AimasterError):
    """Credentials (MaxCompute config file, etcd user/password/TLS files) are missing or wrong."""


class JobError(AimasterError):
    """A job-level problem: unknown job id, job already finished with another configuration, ..."""


# errno values of an OSError that say the machine or the network failed, not the program's input:
# a disk error, a full disk, a stale NFS handle, a dropped connection, a resource exhausted.
_ENVIRONMENT_ERRNOS = frozenset(
    getattr(errno, name) for name in (
        "EIO", "ENOSPC", "EDQUOT", "ESTALE", "EAGAIN", "EBUSY", "EINTR", "ENOMEM", "EMFILE", "ENFILE",
        "ETIMEDOUT", "ECONNRESET", "ECONNREFUSED", "ECONNABORTED", "EPIPE", "ENETDOWN", "ENETUNREACH",
        "ENETRESET", "EHOSTDOWN", "EHOSTUNREACH", "ENOLINK", "EREMOTEIO", "ENOBUFS",
    ) if hasattr(errno, name))


def is_environment_error(exc: BaseException) -> bool:
    """Whether ``exc`` says the environment failed (a relaunch may work) rather than the input.

    An :class:`AimasterError` says so itself. Of the other exceptions, a dropped connection, a
    timeout, and an :class:`OSError` whose errno is a machine's or network's failure (``EIO``,
    ``ENOSPC``, ``ESTALE``...) count; a missing file or a permission problem does not: that is the
    input or the configuration.
    """
    if isinstance(exc, AimasterError):
        return bool(exc.environment)
    if isinstance(exc, (ConnectionError, TimeoutError)):
        return True
    return isinstance(exc, OSError) and exc.errno in _ENVIRONMENT_ERRNOS
