"""One JobSettings owns every default: the command line shows them, the master and the workers use them,
and the environment and the job record carry them under the names they have always had."""

from __future__ import annotations

import click
import pytest

from aimaster.cli import cli
from aimaster.errors import ConfigError, EtcdDataError
from aimaster.master.run_options import RunOptions
from aimaster.settings import DEFAULTS, JobSettings

# aimaster run's option -> the JobSettings field it sets.
RUN_OPTIONS = {
    "min_workers": "min_workers", "launch_interval": "launch_interval", "job_execution_mode": "execution_mode",
    "fault_tolerant_policy": "fault_tolerant_policy", "job_hang_interval": "hang_interval",
    "lease_ttl": "lease_ttl", "max_slice_attempts": "max_slice_attempts", "speculation": "speculation",
    "speculation_multiplier": "speculation_multiplier", "max_slice_copies": "max_slice_copies",
    "slow_worker_multiplier": "slow_worker_multiplier", "slow_worker_min_samples": "slow_worker_min_samples",
    "log_max_bytes": "log_max_bytes", "log_backups": "log_backups",
}
# The names on the wire today: a job started by an older aimaster must read the same.
ENV_NAMES = {"AIMASTER_LEASE_TTL", "AIMASTER_MAX_SLICE_ATTEMPTS", "AIMASTER_SPECULATION",
             "AIMASTER_SPECULATION_MULTIPLIER", "AIMASTER_MAX_SLICE_COPIES"}
RECORD_NAMES = {"hang_detection", "hang_interval", "lease_ttl", "max_slice_attempts", "speculation",
                "speculation_multiplier", "max_slice_copies", "slow_worker_multiplier", "slow_worker_min_samples",
                "completion_grace", "fail_fast", "execution_mode", "fault_tolerant_policy", "max_num_of_same_error",
                "slice_timeout"}


def _params(command: str):
    return {p.name: p for p in cli.commands[command].params}


def test_the_defaults_are_the_ones_everyone_has_always_used():
    d = DEFAULTS
    assert (d.lease_ttl, d.max_slice_attempts, d.speculation, d.speculation_multiplier, d.max_slice_copies,
            d.preempt_grace) == (10, 4, True, 1.5, 1, 5.0)
    assert (d.execution_mode, d.fault_tolerant_policy, d.max_num_of_same_error, d.fail_fast) == \
        ("Async", "OnFailure", 20, True)


@pytest.mark.parametrize("option, name", sorted(RUN_OPTIONS.items()))
def test_run_help_shows_the_settings_default(option, name):
    command = cli.commands["run"]
    param = _params("run")[option]
    assert param.default == getattr(DEFAULTS, name)
    _, text = param.get_help_record(click.Context(command))
    value = getattr(DEFAULTS, name)
    shown = ("speculation" if value else "no-speculation") if isinstance(value, bool) else str(value)
    assert f"[default: {shown}" in text, text


def test_the_same_error_count_in_the_help_is_the_settings():
    _, text = _params("run")["max_num_of_same_error"].get_help_record(click.Context(cli.commands["run"]))
    assert f"[default: {DEFAULTS.max_num_of_same_error}]" in text


def test_join_takes_its_defaults_from_the_settings_too():
    params = _params("join")
    assert params["lease_ttl"].default == DEFAULTS.lease_ttl
    assert params["log_max_bytes"].default == DEFAULTS.log_max_bytes


def test_run_options_default_to_the_settings_and_give_them_back():
    opts = RunOptions(command=["x"], job_id="j")
    assert opts.settings == DEFAULTS
    changed = JobSettings(lease_ttl=3, execution_mode="Sync", max_num_of_same_error=7, fail_fast=False,
                          slow_worker_multiplier=0.0, slice_timeout=30.0)
    followed = opts.with_settings(changed)
    assert followed.settings == changed
    assert (followed.lease_ttl, followed.slow_multiplier, followed.policy.execution_mode,
            followed.policy.max_same_error, followed.policy.fail_fast) == (3, 0.0, "Sync", 7, False)
    assert opts.lease_ttl == DEFAULTS.lease_ttl  # a copy: the options it came from are unchanged


def test_environment_round_trip():
    settings = JobSettings(lease_ttl=3, max_slice_attempts=2, speculation=False, speculation_multiplier=2.5,
                           max_slice_copies=0, preempt_grace=1.5)
    env = settings.to_env()
    assert set(env) == ENV_NAMES | {"AIMASTER_PREEMPT_GRACE"}
    assert env["AIMASTER_SPECULATION"] == "0" and env["AIMASTER_LEASE_TTL"] == "3"
    assert JobSettings.from_env(env) == settings
    assert JobSettings.from_env({}) == DEFAULTS


def test_an_exported_preempt_grace_passes_through_to_the_workers():
    """The master does not set the worker-local grace: a variable the user exported is not overwritten."""
    assert set(DEFAULTS.to_env()) == ENV_NAMES
    assert JobSettings.from_env({"AIMASTER_PREEMPT_GRACE": "9"}).preempt_grace == 9.0


def test_environment_values_read_as_the_workers_always_have():
    s = JobSettings.from_env({"AIMASTER_SPECULATION": "", "AIMASTER_SPECULATION_MULTIPLIER": "-1",
                              "AIMASTER_MAX_SLICE_COPIES": "-2", "AIMASTER_PREEMPT_GRACE": "0.1",
                              "AIMASTER_LEASE_TTL": ""})
    assert (s.speculation, s.speculation_multiplier, s.max_slice_copies, s.preempt_grace, s.lease_ttl) == \
        (False, 0.0, 0, 0.5, DEFAULTS.lease_ttl)
    assert JobSettings.from_env({"AIMASTER_SPECULATION": "yes"}).speculation is True


@pytest.mark.parametrize("name, text", [
    ("AIMASTER_LEASE_TTL", "ten"), ("AIMASTER_MAX_SLICE_ATTEMPTS", "4.5"), ("AIMASTER_SPECULATION", "maybe"),
    ("AIMASTER_SPECULATION_MULTIPLIER", "fast"), ("AIMASTER_PREEMPT_GRACE", "inf"),
])
def test_a_bad_environment_value_is_one_line_naming_the_variable(name, text):
    with pytest.raises(ConfigError) as e:
        JobSettings.from_env({name: text})
    assert name in str(e.value) and len(str(e.value).splitlines()) == 1


def test_job_record_round_trip_keeps_the_wire_names():
    settings = JobSettings(hang_detection=True, hang_interval=60.0, lease_ttl=5, slice_timeout=12.5,
                           execution_mode="Sync", fault_tolerant_policy="Never", max_num_of_same_error=3,
                           fail_fast=False, completion_grace=0.0, slow_worker_min_samples=2)
    record = settings.to_job_record()
    assert set(record) == RECORD_NAMES
    assert record["slow_worker_multiplier"] == settings.slow_worker_multiplier
    assert JobSettings.from_job_record(record) == settings


def test_an_older_record_keeps_the_base_for_what_it_lacks():
    base = JobSettings(lease_ttl=7)
    assert JobSettings.from_job_record({"speculation": False}, base=base) == JobSettings(lease_ttl=7, speculation=False)
    assert JobSettings.from_job_record({"hang_interval": 30}).hang_interval == 30.0  # JSON wrote an int


@pytest.mark.parametrize("name, value", [
    ("lease_ttl", "10"), ("lease_ttl", True), ("max_slice_attempts", -1), ("speculation", 1),
    ("speculation_multiplier", float("nan")), ("slice_timeout", "soon"), ("execution_mode", "Sometimes"),
    ("fault_tolerant_policy", 3),
])
def test_a_hostile_record_value_is_refused_naming_the_field(name, value):
    with pytest.raises(EtcdDataError) as e:
        JobSettings.from_job_record({name: value}, where="/aimaster/jobs/j/job options")
    assert f"/aimaster/jobs/j/job options.{name}" in str(e.value)


def test_a_record_that_is_not_an_object_is_refused():
    with pytest.raises(EtcdDataError, match="options"):
        JobSettings.from_job_record(["lease_ttl"])
