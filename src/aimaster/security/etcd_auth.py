"""etcd users and roles of a job that serves other hosts.

- ``root`` (role ``root``): the master's host. It authenticates with its client certificate; its
  generated password stays in the job's state directory for an operator's ``etcdctl``.
- :data:`WORKER_USER` (role :data:`WORKER_ROLE`): every worker and ``aimaster join`` supervisor.
  The role may read and write ``[job prefix, end of prefix)`` and nothing else: not another job's
  keys, not the etcd-wide job index, not users or roles. Everything a worker does (claims, commits,
  beats, leases bound to its own keys, revoking its own leases) is inside the prefix.

Set up over gRPC (never ``etcdctl user add root:PASSWORD``, whose command line any local user can
read), with the root certificate, every time the embedded etcd starts: each step is idempotent, so
a setup interrupted half-way is completed by the next start, and a resumed job keeps its users.
"""

from __future__ import annotations

import secrets

import grpc
import pyetcd.utils
from pyetcd.etcdrpc import auth_pb2, rpc_pb2

from aimaster.data.store import EtcdConfig, _make_client
from aimaster.errors import EtcdUnavailableError

ROOT_USER = "root"
WORKER_USER = "aimaster-worker"
WORKER_ROLE = "aimaster-job"


def new_password() -> str:
    return secrets.token_urlsafe(24)


def _tolerate_exists(call, *args) -> None:
    try:
        call(*args)
    except grpc.RpcError as e:
        if e.code() != grpc.StatusCode.FAILED_PRECONDITION or "already exists" not in (e.details() or ""):
            raise


def ensure_users(root_cfg: EtcdConfig, prefix: str, root_password: str, timeout: float = 10.0) -> None:
    """Create root and the worker user (limited to ``prefix``) and enable authentication, idempotently."""
    client = _make_client(EtcdConfig(root_cfg.endpoints, ca_cert=root_cfg.ca_cert, cert_cert=root_cfg.cert_cert,
                                     cert_key=root_cfg.cert_key, rpc_timeout=timeout))
    stub = client.authstub
    key = prefix.encode("utf-8")
    try:
        _tolerate_exists(stub.UserAdd, rpc_pb2.AuthUserAddRequest(name=ROOT_USER, password=root_password), timeout)
        stub.UserGrantRole(rpc_pb2.AuthUserGrantRoleRequest(user=ROOT_USER, role="root"), timeout)
        # The worker authenticates by its certificate only; this password is never stored anywhere.
        _tolerate_exists(stub.UserAdd, rpc_pb2.AuthUserAddRequest(name=WORKER_USER, password=new_password()),
                         timeout)
        _tolerate_exists(stub.RoleAdd, rpc_pb2.AuthRoleAddRequest(name=WORKER_ROLE), timeout)
        perm = auth_pb2.Permission(permType=auth_pb2.Permission.READWRITE, key=key,
                                   range_end=pyetcd.utils.prefix_range_end(key))
        stub.RoleGrantPermission(rpc_pb2.AuthRoleGrantPermissionRequest(name=WORKER_ROLE, perm=perm), timeout)
        stub.UserGrantRole(rpc_pb2.AuthUserGrantRoleRequest(user=WORKER_USER, role=WORKER_ROLE), timeout)
        stub.AuthEnable(rpc_pb2.AuthEnableRequest(), timeout)
    except grpc.RpcError as e:
        raise EtcdUnavailableError(f"could not set up authentication on the job's etcd at "
                                   f"{','.join(root_cfg.endpoints)}: {e.code().name}: {e.details()}")
    finally:
        client.close()
