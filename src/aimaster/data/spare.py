"""Warm spares: worker processes started ahead of need, waiting at their first aimaster call.

Replacing a slow worker costs the replacement's start-up: a fresh interpreter importing torch and
building its model, 2-5 s on a busy small machine, a minute for a large model on a GPU host. For
that long the job is a worker short, which on a fleet of two is half the job's speed.
``aimaster run --warm-spares N`` starts N more processes of the worker command with
``AIMASTER_SPARE`` set to a spare id. Each runs the program up to its first aimaster call (the
imports, the model build), says so in etcd (``spares/<id>``: ``{"state": "ready", "pid": ...}``)
and waits there, holding no lease and no slice, invisible to progress, hang and slowness rules.

To replace a slow worker the master hands a ready spare the replacement's identity in the same key
(``{"state": "go", "worker_id", "slot", "incarnation", "by"}``, written only over the spare's own
"ready" record, by revision); the spare takes it on (``AIMASTER_WORKER_ID`` and the rest, also for
the children it starts later) and goes on as that worker, registering like any other. The
replacement then runs a fraction of a second after the decision instead of seconds.

A spare that is never needed is stopped with SIGTERM when the job ends. One whose master is gone
(its parent process changed: a master that takes over does not know about it) exits by itself.
What the spare reads back is validated: a record that is not a well-formed "go" for this spare
(garbage, another state, a worker id that is not a name) leaves it waiting, said once on stderr.
"""

from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass
from typing import Any, Optional, Tuple

from aimaster.data import keys
from aimaster.data.store import Store, loads
from aimaster.errors import EtcdDataError

SPARE_ENV = "AIMASTER_SPARE"
READY = "ready"
GO = "go"


@dataclass(frozen=True)
class Identity:
    """The worker a spare becomes."""

    worker_id: str
    slot: int
    incarnation: int


def _count(value: Any) -> Optional[int]:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None


def identity_problem(value: Any) -> Optional[str]:
    """Why ``value`` (a decoded ``spares/<id>`` record) is not a usable "go", or None."""
    if not isinstance(value, dict):
        return "it is not an object"
    if value.get("state") != GO:
        return f"its state is {value.get('state')!r:.20}"
    wid = value.get("worker_id")
    if not isinstance(wid, str) or not keys.is_name(wid):
        return f"its worker id {wid!r:.40} is not a name"
    if _count(value.get("slot")) is None or _count(value.get("incarnation")) is None:
        return "its slot or incarnation is not a count"
    return None


def identity(value: Any) -> Optional[Identity]:
    if identity_problem(value) is not None:
        return None
    return Identity(value["worker_id"], value["slot"], value["incarnation"])


def is_ready(value: Any, pid: Optional[int] = None) -> bool:
    """Whether ``value`` is a spare's own "ready" record (of process ``pid``, when given)."""
    return isinstance(value, dict) and value.get("state") == READY and _count(value.get("pid")) is not None \
        and (pid is None or value["pid"] == pid)


def read(store: Store, spare_id: str) -> Tuple[Any, Any]:
    """``spares/<id>`` decoded, with its metadata (for a compare by revision); ``(None, None)`` when
    there is none. A record that is not JSON comes back as its bytes: callers validate what they read."""
    key = keys.spare(spare_id)
    raw, meta = store.get_raw(key)
    if raw is None:
        return None, None
    try:
        return loads(raw, key, None), meta
    except EtcdDataError:
        return raw, meta


def wait_until_needed(store: Store, spare_id: str, poll: float = 0.05) -> Identity:
    """Say this spare is ready, then wait until the master hands it an identity.

    Exits the process (status 0) when the master that started it is gone. Never returns a worker id
    that did not come in a valid "go" record.
    """
    parent = os.getppid()
    key = keys.spare(spare_id)
    store.put(key, {"state": READY, "pid": os.getpid(), "t": time.time()})
    complained = None
    while True:
        value, _ = read(store, spare_id)
        found = identity(value)
        if found is not None:
            store.delete(key)  # from now on it is a worker: workers/<id> says so
            return found
        if not is_ready(value, os.getpid()):
            problem = "it is gone" if value is None else identity_problem(value)
            if problem != complained:
                print(f"aimaster: warm spare {spare_id}: ignoring its record {key} ({problem}); still waiting",
                      file=sys.stderr, flush=True)
                complained = problem
        if os.getppid() != parent:
            print(f"aimaster: warm spare {spare_id}: the master that started it is gone; exiting",
                  file=sys.stderr, flush=True)
            sys.stderr.flush()
            os._exit(0)
        time.sleep(poll)


def take_on(spare_id: str, ident: Identity) -> None:
    """Become the worker: its identity in the environment (read by the session, inherited by children)."""
    os.environ.pop(SPARE_ENV, None)
    os.environ.update(AIMASTER_WORKER_ID=ident.worker_id, AIMASTER_WORKER_SLOT=str(ident.slot),
                      AIMASTER_WORKER_INCARNATION=str(ident.incarnation))
    print(f"aimaster: warm spare {spare_id} runs as worker {ident.worker_id}", file=sys.stderr, flush=True)
