"""Every setting a job shares between the command line, the master and its workers, with its one default.

A setting travels three ways: the command line hands it to the master (``aimaster run --lease-ttl``),
the master hands it to the workers it launches through their environment (``AIMASTER_LEASE_TTL``),
and to machines that join later -- and to ``aimaster retry`` -- through the job record in etcd
(``options.lease_ttl``). :class:`JobSettings` is the one place where each default is written and each
name on each of those wires is spelt; the click options, :class:`~aimaster.master.run_options.RunOptions`
and the worker side take them from here, so a default cannot drift between them.

The names on the wire are those the code has always used (a job started by an older aimaster reads
the same). What comes back is checked here once: a bad value in the environment is a
:class:`~aimaster.errors.ConfigError` naming the variable; a wrong-typed value in the job record, an
:class:`~aimaster.errors.EtcdDataError` naming the field.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field, fields, replace
from typing import Any, Dict, Mapping, Optional

from aimaster.errors import ConfigError, EtcdDataError

# The fault policy's choices (aimaster.master.policy.FaultPolicy), as PAI ElasticBatch spells them.
EXECUTION_MODES = ("Async", "Sync")
POLICIES = ("OnFailure", "ExitCodeAndErrorMsg", "Never")

_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off", "")  # an empty variable has always meant "off"


def _wire(env: Optional[str] = None, record: Optional[str] = None, floor: Optional[float] = None,
          always: bool = True, optional: bool = False) -> Dict[str, Any]:
    """A field's names on the wire: its environment variable and its job record field (None: not there).

    ``floor``: a value below it read from the environment is raised to it (what the workers have
    always done). ``always``: the master hands the variable to every worker; otherwise only when it is
    not the default, so that a variable the user exported for the workers passes through untouched.
    ``optional``: None is a value (off).
    """
    return {"env": env, "record": record, "floor": floor, "always": always, "optional": optional}


@dataclass(frozen=True)
class JobSettings:
    """A job's settings. The defaults here are the defaults everywhere (``aimaster run --help`` shows them)."""

    # The slice protocol (the workers read these from their environment).
    lease_ttl: int = field(default=10, metadata=_wire("AIMASTER_LEASE_TTL", "lease_ttl"))
    max_slice_attempts: int = field(default=4, metadata=_wire("AIMASTER_MAX_SLICE_ATTEMPTS", "max_slice_attempts"))
    speculation: bool = field(default=True, metadata=_wire("AIMASTER_SPECULATION", "speculation"))
    speculation_multiplier: float = field(default=1.5, metadata=_wire(
        "AIMASTER_SPECULATION_MULTIPLIER", "speculation_multiplier", floor=0.0))
    max_slice_copies: int = field(default=1, metadata=_wire("AIMASTER_MAX_SLICE_COPIES", "max_slice_copies", floor=0))
    # How long a preempted (SIGTERM) worker may take to unwind: a worker-local knob, never recorded.
    preempt_grace: float = field(default=5.0, metadata=_wire("AIMASTER_PREEMPT_GRACE", floor=0.5, always=False))
    # The master's and every joiner's supervision (the job record carries them to joiners and retries).
    hang_detection: bool = field(default=False, metadata=_wire(record="hang_detection"))
    hang_interval: float = field(default=600.0, metadata=_wire(record="hang_interval"))
    slice_timeout: Optional[float] = field(default=None, metadata=_wire(record="slice_timeout", optional=True))
    slow_worker_multiplier: float = field(default=3.0, metadata=_wire(record="slow_worker_multiplier"))
    slow_worker_min_samples: int = field(default=5, metadata=_wire(record="slow_worker_min_samples"))
    completion_grace: float = field(default=0.25, metadata=_wire(record="completion_grace"))
    # The fault policy (aimaster.master.policy.FaultPolicy).
    execution_mode: str = field(default="Async", metadata=_wire(record="execution_mode"))
    fault_tolerant_policy: str = field(default="OnFailure", metadata=_wire(record="fault_tolerant_policy"))
    max_num_of_same_error: int = field(default=20, metadata=_wire(record="max_num_of_same_error"))
    fail_fast: bool = field(default=True, metadata=_wire(record="fail_fast"))
    # The command line's and the master's only (on no wire).
    min_workers: int = 1
    launch_interval: float = 0.0
    log_max_bytes: int = 50 * 1024 * 1024
    log_backups: int = 3

    # ------------------------------------------------------------------ the environment
    @classmethod
    def from_env(cls, environ: Mapping[str, str] = os.environ, base: Optional[JobSettings] = None) -> JobSettings:
        """The settings a worker was launched with: ``base`` (the defaults) with what its environment says.

        A variable set but empty is the default (for a switch: off, as it has always been). Cheap (a
        handful of lookups), so a worker may call it whenever it needs them.
        """
        changes: Dict[str, Any] = {}
        for f in fields(cls):
            name = f.metadata.get("env")
            if name is not None and name in environ:
                changes[f.name] = _from_env_text(f, name, environ[name])
        return replace(base or DEFAULTS, **changes)

    def to_env(self) -> Dict[str, str]:
        """The variables the master puts in each worker's environment (``from_env`` reads them back)."""
        env: Dict[str, str] = {}
        for f in fields(self):
            name = f.metadata.get("env")
            value = getattr(self, f.name)
            if name is not None and (f.metadata["always"] or value != f.default):
                env[name] = ("1" if value else "0") if isinstance(value, bool) else str(value)
        return env

    # ------------------------------------------------------------------ the job record
    def to_job_record(self) -> Dict[str, Any]:
        """The job record's ``options``: what a joining machine or ``aimaster retry`` follows."""
        return {f.metadata["record"]: getattr(self, f.name) for f in fields(self) if f.metadata.get("record")}

    @classmethod
    def from_job_record(cls, options: Mapping[str, Any], base: Optional[JobSettings] = None,
                        where: str = "the job record's options") -> JobSettings:
        """``base`` (the defaults) with the recorded settings; a field missing (an older job) keeps ``base``'s.

        The record comes from etcd: a value of the wrong type or out of its range is refused with
        :class:`EtcdDataError` naming the field, before anything acts on it.
        """
        if not isinstance(options, Mapping):
            raise EtcdDataError(f"{where} is not an object: {options!r:.80}")
        changes: Dict[str, Any] = {}
        for f in fields(cls):
            name = f.metadata.get("record")
            if name is not None and name in options:
                changes[f.name] = _from_record_value(f, f"{where}.{name}", options[name])
        return replace(base or DEFAULTS, **changes)


DEFAULTS = JobSettings()


def _kind(f) -> str:
    """The field's value type, from its default (annotations are strings under ``from __future__``)."""
    if f.metadata.get("optional"):
        return "optional float"
    return type(f.default).__name__


def _from_env_text(f, name: str, text: str) -> Any:
    kind = _kind(f)
    value: Any
    if kind == "bool":
        lowered = text.strip().lower()
        if lowered not in _TRUE + _FALSE:
            raise ConfigError(f"${name}={text!r}: expected 1 or 0 (true/false, yes/no)")
        return lowered in _TRUE
    if not text.strip():  # an empty number is an unset one
        return f.default
    try:
        value = int(text.strip()) if kind == "int" else float(text.strip())
    except ValueError:
        raise ConfigError(f"${name}={text!r}: expected {'an integer' if kind == 'int' else 'a number'}") from None
    if not math.isfinite(value):
        raise ConfigError(f"${name}={text!r}: expected a finite number")
    floor = f.metadata.get("floor")
    return max(type(value)(floor), value) if floor is not None else value


def _from_record_value(f, where: str, value: Any) -> Any:
    kind = _kind(f)
    if kind == "optional float" and value is None:
        return None
    if kind == "bool":
        if not isinstance(value, bool):
            raise EtcdDataError(f"{where} is not true or false: {value!r:.80}")
        return value
    if kind == "str":
        choices = _choices(f.name)
        if not isinstance(value, str) or value not in choices:
            raise EtcdDataError(f"{where} is not one of {', '.join(choices)}: {value!r:.80}")
        return value
    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    if kind == "int" and not (number and isinstance(value, int) and value >= 0):
        raise EtcdDataError(f"{where} is not a non-negative integer: {value!r:.80}")
    if kind != "int" and not (number and math.isfinite(value) and value >= 0):
        raise EtcdDataError(f"{where} is not a non-negative number: {value!r:.80}")
    return value if kind == "int" else float(value)


def _choices(name: str):
    return EXECUTION_MODES if name == "execution_mode" else POLICIES
