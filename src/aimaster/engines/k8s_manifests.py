"""The Kubernetes objects of one job, as plain dicts (``aimaster k8s render`` prints them as YAML).

One job is six objects, all labelled ``aimaster.io/job=<job id>``:

- ``PersistentVolumeClaim <name>-state``: the job's state directory, above all its embedded etcd's
  data: what makes the job resumable when the master's pod is rescheduled;
- ``Secret <name>-master-tls`` (the job's whole TLS material, for the master) and
  ``Secret <name>-join`` (the join bundle only, for the workers), see :mod:`aimaster.engines.k8s_tls`;
- ``Service <name>-etcd``: the master's etcd client port, the address in the join bundle;
- ``Job <name>-master``: one pod running ``aimaster run -n 0 --listen 0.0.0.0:PORT`` (a master with
  no workers of its own, which waits for the ones that join), ready once its etcd holds the job;
- ``Job <name>-workers``: an *Indexed* Job of N pods, each ``aimaster join --bundle ... -n 1 -- COMMAND``.

Failures: a pod disrupted by Kubernetes (eviction, preemption, node drain: the ``DisruptionTarget``
condition) is replaced without counting as a failure; a worker pod whose ``aimaster join`` says the
job failed (exit 1: the job's fault policy gave up, or a worker hit a user error) or that exits with
aimaster's user-error code fails the worker Job at once (another pod would fail the same way); any
other failure is retried ``backoffLimitPerIndex`` times per index. Inside a pod, ``aimaster join``
relaunches a crashed worker under the job's fault policy, as on any host.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Tuple

from aimaster.data.runtime import USER_ERROR_EXIT
from aimaster.engines.k8s_tls import BUNDLE_FILE, MASTER_FILES, JobTls, service_names
from aimaster.master.job_state import EXIT_CODES, JobState

STATE_DIR = "/var/lib/aimaster"
MASTER_TLS_DIR = "/etc/aimaster/master-tls"
JOIN_DIR = "/etc/aimaster/join"
JOB_LABEL = "aimaster.io/job"
COMPONENT_LABEL = "aimaster.io/component"
GPU_RESOURCE = "nvidia.com/gpu"

_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_CPU = re.compile(r"^(?:[0-9]+(?:\.[0-9]+)?|[0-9]+m)$")
_MEMORY = re.compile(r"^[0-9]+(?:\.[0-9]+)?(?:Ki|Mi|Gi|Ti|Pi|Ei|k|M|G|T|P|E)?$")
MAX_JOB_ID = 40  # "aimaster-<id>-workers" stays within a 63-character DNS label


def check_dns_label(what: str, value: str, limit: int = 63) -> str:
    """``value`` if it is a Kubernetes name (DNS-1123 label), else ValueError naming ``what``."""
    if not _DNS_LABEL.match(value or "") or len(value) > limit:
        raise ValueError(f"{what} {value!r} is not a Kubernetes name: use at most {limit} lowercase letters, digits "
                         f"and '-', starting and ending with a letter or digit")
    return value


def check_cpu(value: str) -> str:
    if not _CPU.match(value) or not any(c in "123456789" for c in value):
        raise ValueError(f"--cpu {value!r} is not a CPU quantity (e.g. 2, 0.5 or 500m)")
    return value


def check_memory(value: str) -> str:
    if not _MEMORY.match(value) or not any(c in "123456789" for c in value.rstrip("KMGTPEik")):
        raise ValueError(f"{value!r} is not a memory quantity (e.g. 8Gi, 512Mi)")
    return value


def check_mount(value: str) -> Tuple[str, str]:
    """``CLAIM:PATH``: an existing PersistentVolumeClaim mounted at PATH in every pod."""
    claim, sep, path = value.partition(":")
    if not sep or not path.startswith("/"):
        raise ValueError(f"--mount {value!r}: expected CLAIM:/absolute/path")
    check_dns_label("--mount claim", claim, 253)
    return claim, path


@dataclass
class K8sJob:
    """What ``aimaster k8s render`` was asked for (checked by the command line)."""

    job_id: str
    image: str
    workers: int
    command: List[str]
    namespace: str = "default"
    gpus_per_worker: int = 0
    cpu: Optional[str] = None
    memory: Optional[str] = None
    state_size: str = "1Gi"
    storage_class: Optional[str] = None
    mounts: List[Tuple[str, str]] = field(default_factory=list)
    retries_per_worker: int = 3
    master_retries: int = 6
    port: int = 2379
    etcd_retry_seconds: int = 600

    @property
    def name(self) -> str:
        return f"aimaster-{self.job_id}"

    def names(self) -> Dict[str, str]:
        """Kind-qualified names of the job's objects, e.g. ``{"service": "aimaster-j-etcd", ...}``."""
        n = self.name
        return {"pvc": f"{n}-state", "master_tls": f"{n}-master-tls", "join": f"{n}-join",
                "service": f"{n}-etcd", "master": f"{n}-master", "workers": f"{n}-workers"}

    @property
    def etcd_host(self) -> str:
        return service_names(self.names()["service"], self.namespace)[0]


def labels(job: K8sJob, component: Optional[str] = None) -> Dict[str, str]:
    out = {"app.kubernetes.io/name": "aimaster", "app.kubernetes.io/instance": job.job_id, JOB_LABEL: job.job_id}
    if component:
        out[COMPONENT_LABEL] = component
    return out


def _meta(job: K8sJob, name: str, component: Optional[str] = None) -> Dict[str, Any]:
    return {"name": name, "namespace": job.namespace, "labels": labels(job, component)}


def _secret(job: K8sJob, name: str, files: Dict[str, bytes], component: str) -> Dict[str, Any]:
    import base64

    return {"apiVersion": "v1", "kind": "Secret", "metadata": _meta(job, name, component), "type": "Opaque",
            "data": {k: base64.b64encode(v).decode("ascii") for k, v in files.items()}}


def _resources(job: K8sJob, gpus: bool) -> Dict[str, Any]:
    requests: Dict[str, str] = {}
    if job.cpu:
        requests["cpu"] = job.cpu
    if job.memory:
        requests["memory"] = job.memory
    limits = dict(requests)
    if gpus and job.gpus_per_worker:
        limits[GPU_RESOURCE] = str(job.gpus_per_worker)
    out: Dict[str, Any] = {}
    if requests:
        out["requests"] = requests
    if limits:
        out["limits"] = limits
    return out


def _env(job: K8sJob) -> List[Dict[str, str]]:
    # The job index (``aimaster status`` from anywhere) and etcd's retry window: a master pod being
    # rescheduled (its volume moved to another node) takes minutes, which workers wait out.
    return [{"name": "AIMASTER_STATE_DIR", "value": STATE_DIR},
            {"name": "AIMASTER_JOB_INDEX", "value": f"{STATE_DIR}/job-index"},
            {"name": "AIMASTER_ETCD_RETRY_SECONDS", "value": str(job.etcd_retry_seconds)}]


def _data_mounts(job: K8sJob) -> Tuple[List[Dict[str, Any]], List[Dict[str, Any]]]:
    volumes, mounts = [], []
    for i, (claim, path) in enumerate(job.mounts):
        volumes.append({"name": f"data-{i}", "persistentVolumeClaim": {"claimName": claim}})
        mounts.append({"name": f"data-{i}", "mountPath": path})
    return volumes, mounts


def _failure_policy(container: str, fail_codes: List[int]) -> Dict[str, Any]:
    return {"rules": [
        {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]},
        {"action": "FailJob", "onExitCodes": {"containerName": container, "operator": "In",
                                              "values": sorted(set(fail_codes))}},
    ]}


def master_command(job: K8sJob) -> List[str]:
    return ["aimaster", "run", "-n", "0", "--job-id", job.job_id, "--state-dir", STATE_DIR,
            "--listen", f"0.0.0.0:{job.port}", "--advertise", job.etcd_host, "--", *job.command]


def ready_command(job: K8sJob) -> List[str]:
    return ["aimaster", "k8s", "ready", "--job-id", job.job_id, "--state-dir", STATE_DIR]


def worker_command(job: K8sJob) -> List[str]:
    return ["aimaster", "join", "--bundle", f"{JOIN_DIR}/{BUNDLE_FILE}", "-n", "1", "--", *job.command]


def _install_tls_script(job: K8sJob) -> str:
    """The init container's copy of the Secret into the state directory (0700/0600, as the master
    keeps it): a Secret volume is read-only and ``aimaster run`` sets the modes of its own files."""
    target = f"{STATE_DIR}/jobs/{job.job_id}/security"
    files = " ".join(MASTER_FILES)
    return (f"set -e; d={shlex.quote(target)}; mkdir -p \"$d\"; chmod 700 \"$d\"; "
            f"for f in {files}; do cp \"{MASTER_TLS_DIR}/$f\" \"$d/$f.tmp\"; chmod 600 \"$d/$f.tmp\"; "
            f"mv \"$d/$f.tmp\" \"$d/$f\"; done")


def master_job(job: K8sJob) -> Dict[str, Any]:
    names = job.names()
    data_volumes, data_mounts = _data_mounts(job)
    state_mount = {"name": "state", "mountPath": STATE_DIR}
    container = {
        "name": "master", "image": job.image, "command": master_command(job), "env": _env(job),
        "ports": [{"name": "etcd", "containerPort": job.port, "protocol": "TCP"}],
        # Ready (the Service routes workers to it) once its etcd holds the job (aimaster.engines.k8s_ready).
        "readinessProbe": {"exec": {"command": ready_command(job)}, "periodSeconds": 10, "timeoutSeconds": 10},
        "volumeMounts": [state_mount, *data_mounts],
    }
    pod = {
        "metadata": {"labels": labels(job, "master")},
        "spec": {
            "restartPolicy": "Never",
            "initContainers": [{
                "name": "install-tls", "image": job.image, "command": ["sh", "-c", _install_tls_script(job)],
                "volumeMounts": [state_mount, {"name": "master-tls", "mountPath": MASTER_TLS_DIR, "readOnly": True}],
            }],
            "containers": [container],
            "volumes": [
                {"name": "state", "persistentVolumeClaim": {"claimName": names["pvc"]}},
                {"name": "master-tls", "secret": {"secretName": names["master_tls"], "defaultMode": 0o400}},
                *data_volumes,
            ],
        },
    }
    # Exit 1: the job Failed; 130: it was stopped (aimaster stop): rerunning would resume what the
    # user stopped. Both are final. A disrupted master pod is replaced and resumes from the volume.
    return {"apiVersion": "batch/v1", "kind": "Job", "metadata": _meta(job, names["master"], "master"),
            "spec": {"parallelism": 1, "completions": 1, "backoffLimit": job.master_retries,
                     "podFailurePolicy": _failure_policy(
                         "master", [EXIT_CODES[JobState.FAILED], EXIT_CODES[JobState.STOPPED]]),
                     "template": pod}}


def workers_job(job: K8sJob) -> Dict[str, Any]:
    names = job.names()
    data_volumes, data_mounts = _data_mounts(job)
    container: Dict[str, Any] = {
        "name": "worker", "image": job.image, "command": worker_command(job),
        "env": _env(job),
        "volumeMounts": [{"name": "state", "mountPath": STATE_DIR},
                         {"name": "join", "mountPath": JOIN_DIR, "readOnly": True}, *data_mounts],
    }
    resources = _resources(job, gpus=True)
    if resources:
        container["resources"] = resources
    pod = {
        "metadata": {"labels": labels(job, "worker")},
        "spec": {
            "restartPolicy": "Never",  # required by podFailurePolicy; aimaster join relaunches inside the pod
            "containers": [container],
            "volumes": [
                {"name": "state", "emptyDir": {}},
                {"name": "join", "secret": {"secretName": names["join"], "defaultMode": 0o400,
                                            "items": [{"key": BUNDLE_FILE, "path": BUNDLE_FILE}]}},
                *data_volumes,
            ],
        },
    }
    return {"apiVersion": "batch/v1", "kind": "Job", "metadata": _meta(job, names["workers"], "worker"),
            "spec": {"completionMode": "Indexed", "completions": job.workers, "parallelism": job.workers,
                     "backoffLimitPerIndex": job.retries_per_worker,
                     # A replacement starts once the old pod is gone (its slices given back), not before.
                     "podReplacementPolicy": "Failed",
                     "podFailurePolicy": _failure_policy("worker", [EXIT_CODES[JobState.FAILED], USER_ERROR_EXIT]),
                     "template": pod}}


def service(job: K8sJob) -> Dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Service", "metadata": _meta(job, job.names()["service"], "master"),
            "spec": {"selector": {JOB_LABEL: job.job_id, COMPONENT_LABEL: "master"},
                     "ports": [{"name": "etcd", "port": job.port, "targetPort": job.port, "protocol": "TCP"}]}}


def state_claim(job: K8sJob) -> Dict[str, Any]:
    spec: Dict[str, Any] = {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": job.state_size}}}
    if job.storage_class:
        spec["storageClassName"] = job.storage_class
    return {"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": _meta(job, job.names()["pvc"], "state"),
            "spec": spec}


def render(job: K8sJob, tls: JobTls) -> List[Dict[str, Any]]:
    """Every object of the job, in the order they are created."""
    names = job.names()
    return [
        state_claim(job),
        _secret(job, names["master_tls"], tls.master_files, "master"),
        _secret(job, names["join"], {BUNDLE_FILE: tls.bundle}, "worker"),
        service(job),
        master_job(job),
        workers_job(job),
    ]


def to_yaml(manifests: List[Dict[str, Any]]) -> str:
    import yaml

    class Dumper(yaml.SafeDumper):
        def ignore_aliases(self, data) -> bool:  # no &id001 anchors: plain YAML for any reader
            return True

    return yaml.dump_all(manifests, Dumper=Dumper, sort_keys=False, default_flow_style=False)
