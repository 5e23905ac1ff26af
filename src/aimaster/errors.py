"""Errors a user can cause, each naming the thing at fault.

The CLI prints any :class:`AimasterError` as one line (``aimaster: error: ...``) and exits non-zero;
anything else is a programming error and keeps its traceback.
"""

from __future__ import annotations


class AimasterError(Exception):
    """Base of every error caused by input, configuration or environment (not by a bug)."""


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


class EtcdUnavailableError(AimasterError, ConnectionError):
    """The coordination etcd cannot be reached (after retries)."""


class EtcdDataError(AimasterError, ValueError):
    """A value read from etcd is not the JSON aimaster wrote there (corrupt or hostile)."""


class CredentialsError(AimasterError):
    """Credentials (MaxCompute config file, etcd user/password/TLS files) are missing or wrong."""


class JobError(AimasterError):
    """A job-level problem: unknown job id, job already finished with another configuration, ..."""
