import os
import sys
import tempfile
import uuid

import pytest

sys.path.insert(0, os.path.dirname(__file__))
# Every `aimaster run` notes its state directory in the user's job index; the tests' jobs (and the
# workers and CLIs they start, which inherit this) note theirs in a throw-away one, not in ~.
os.environ.setdefault("AIMASTER_JOB_INDEX", tempfile.mkdtemp(prefix="aimaster-job-index-"))

from aimaster.data.etcd_server import EmbeddedEtcd  # noqa: E402
from aimaster.data.session import WorkerSession  # noqa: E402
from aimaster.data.store import EtcdConfig, Store, job_prefix  # noqa: E402


@pytest.fixture(scope="session")
def etcd():
    """One real embedded etcd for the whole test session; tests isolate themselves by job id."""
    with EmbeddedEtcd() as server:
        yield server


@pytest.fixture
def job_id():
    return "t-" + uuid.uuid4().hex[:10]


@pytest.fixture
def job_env(etcd, job_id, monkeypatch):
    """Environment of a worker of a fresh job on the shared etcd (as `aimaster run` would set it)."""
    env = {"AIMASTER_ETCD_ENDPOINTS": etcd.endpoint, "AIMASTER_JOB_ID": job_id}
    for k in list(os.environ):
        if k.startswith("AIMASTER_"):
            monkeypatch.delenv(k)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    return env


@pytest.fixture
def make_session(etcd, job_id):
    """Worker sessions (each its own etcd client and lease) in this test process."""
    sessions = []

    def make(worker_id="w-test", ttl=10):
        store = Store(EtcdConfig([etcd.endpoint], retry_seconds=10), job_prefix(job_id))
        s = WorkerSession(store, worker_id, ttl=ttl)
        sessions.append(s)
        return s

    yield make
    for s in sessions:
        s.close()
