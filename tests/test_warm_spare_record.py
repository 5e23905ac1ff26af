"""A warm spare believes only a well-formed "go" record for itself (aimaster.data.spare).

The spare waits in this process, on the real etcd, in a thread; the records it reads are written
with a real etcd client: garbage, a "go" whose worker id is a path, then a valid "go".
"""

from __future__ import annotations

import os
import threading

from helpers import wait_for

from aimaster.data import spare
from aimaster.data.store import EtcdConfig, Store, job_prefix


def test_a_spare_ignores_forged_records_and_takes_on_only_a_valid_go(etcd, job_id, capfd):
    store = Store(EtcdConfig([etcd.endpoint], retry_seconds=10), job_prefix(job_id))
    result = {}
    waiter = threading.Thread(target=lambda: result.update(ident=spare.wait_until_needed(store, "spare3", 0.02)),
                              daemon=True)
    try:
        waiter.start()
        wait_for(lambda: spare.is_ready(spare.read(store, "spare3")[0], os.getpid()), timeout=20, what="ready")
        store.client.put(store.key("spares/spare3"), b"\xff not json")
        wait_for(lambda: "is not an object" in capfd.readouterr().err, timeout=20, what="the garbage noticed")
        bad = {"state": "go", "worker_id": "../w0", "slot": 0, "incarnation": 1}
        store.put("spares/spare3", bad)
        wait_for(lambda: "'../w0' is not a name" in capfd.readouterr().err, timeout=20, what="the bad id noticed")
        store.put("spares/spare3", dict(bad, slot=-2, worker_id="w0-r1"))  # a negative slot: not a count
        wait_for(lambda: "not a count" in capfd.readouterr().err, timeout=20, what="the bad slot noticed")
        assert waiter.is_alive() and "ident" not in result
        store.put("spares/spare3", {"state": "go", "worker_id": "w0-r1", "slot": 0, "incarnation": 1, "by": "m"})
        waiter.join(20)
        assert result["ident"] == spare.Identity("w0-r1", 0, 1)
        assert store.get_raw("spares/spare3")[0] is None, "a spare that became a worker leaves no spare record"
    finally:
        store.close()


def test_a_go_record_is_checked_field_by_field():
    good = {"state": "go", "worker_id": "w2-r1", "slot": 2, "incarnation": 1}
    assert spare.identity(good) == spare.Identity("w2-r1", 2, 1)
    for broken in ([], "go", dict(good, state="ready"), dict(good, worker_id=""), dict(good, worker_id="a/b"),
                   dict(good, slot=True), dict(good, incarnation="1"), dict(good, slot=-1)):
        assert spare.identity(broken) is None and spare.identity_problem(broken), broken
    assert spare.is_ready({"state": "ready", "pid": 12}, 12) and not spare.is_ready({"state": "ready", "pid": 12}, 13)
    assert not spare.is_ready({"state": "ready", "pid": "12"})
