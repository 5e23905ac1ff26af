"""``aimaster k8s submit/status/delete``: a job's objects through the official ``kubernetes`` client.

Submitting creates nothing if any of the job's objects already exists (a job id is one job: a
half-created set, or two jobs sharing a state volume, would be worse than a clear refusal naming
them). Deleting removes the Jobs (their pods with them), the Service and the Secrets; the state
volume, which holds the job's etcd data (what a resubmitted job resumes from), only with ``purge``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional

from aimaster.engines.k8s_manifests import COMPONENT_LABEL, JOB_LABEL
from aimaster.errors import ConfigError

# kind -> (API group attribute, create, read, delete), the client's method names for namespaced objects.
_KINDS = {
    "PersistentVolumeClaim": ("core", "persistent_volume_claim"),
    "Secret": ("core", "secret"),
    "Service": ("core", "service"),
    "Job": ("batch", "job"),
}
_API_VERSIONS = {"PersistentVolumeClaim": "v1", "Secret": "v1", "Service": "v1", "Job": "batch/v1"}


def _client():
    try:
        import kubernetes  # noqa: F401
    except ImportError:
        raise ConfigError("aimaster k8s submit/status/delete need the kubernetes client: pip install 'aimaster[k8s]'")
    import kubernetes

    return kubernetes


def api_client(kubeconfig: Optional[str] = None, context: Optional[str] = None):
    """An ApiClient from the kubeconfig (``--kubeconfig``, $KUBECONFIG, ~/.kube/config), or the
    pod's service account when run inside a cluster."""
    k = _client()
    configuration = k.client.Configuration()
    try:
        k.config.load_kube_config(config_file=kubeconfig, context=context, client_configuration=configuration)
    except (k.config.ConfigException, OSError, TypeError) as e:
        if kubeconfig or context:
            raise ConfigError(f"cannot use kubeconfig {kubeconfig or '(default)'}: {e}")
        try:
            k.config.load_incluster_config(client_configuration=configuration)
        except k.config.ConfigException:
            raise ConfigError(f"no Kubernetes configuration: {e} (give --kubeconfig, or run inside a cluster)")
    return k.client.ApiClient(configuration)


@dataclass
class Apis:
    core: Any
    batch: Any

    @classmethod
    def of(cls, api_client) -> Apis:
        k = _client()
        return cls(k.client.CoreV1Api(api_client), k.client.BatchV1Api(api_client))

    def method(self, verb: str, kind: str) -> Callable:
        group, noun = _KINDS[kind]
        return getattr(getattr(self, group), f"{verb}_namespaced_{noun}")


def _api_error(e) -> str:
    import json

    try:
        message = json.loads(e.body).get("message")
    except (TypeError, ValueError, AttributeError):
        message = None
    return f"{e.status} {e.reason}" + (f": {message}" if message else "")


def check_manifests(docs: List[Any], source: str) -> List[Dict[str, Any]]:
    """The objects of ``aimaster k8s render``'s output, checked enough to be applied (one line naming
    the document otherwise); they all belong to one job."""
    out, jobs = [], set()
    for i, doc in enumerate(docs, 1):
        if doc is None:
            continue
        what = f"{source}: document {i}"
        if not isinstance(doc, dict) or doc.get("kind") not in _KINDS:
            raise ConfigError(f"{what} is not one of aimaster's objects ({', '.join(_KINDS)})")
        if doc.get("apiVersion") != _API_VERSIONS[doc["kind"]]:
            raise ConfigError(f"{what}: a {doc['kind']} has apiVersion {_API_VERSIONS[doc['kind']]}")
        meta = doc.get("metadata")
        if not isinstance(meta, dict) or not all(isinstance(meta.get(k), str) for k in ("name", "namespace")):
            raise ConfigError(f"{what} lacks metadata.name or metadata.namespace")
        job = (meta.get("labels") or {}).get(JOB_LABEL)
        if not isinstance(job, str):
            raise ConfigError(f"{what} ({doc['kind']} {meta['name']}) has no {JOB_LABEL} label: not rendered by "
                              f"aimaster k8s render")
        jobs.add((job, meta["namespace"]))
        out.append(doc)
    if not out:
        raise ConfigError(f"{source} holds no objects")
    if len(jobs) > 1:
        raise ConfigError(f"{source} mixes objects of several jobs or namespaces: "
                          f"{', '.join(sorted(f'{j} in {n}' for j, n in jobs))}")
    return out


def _ref(doc: Dict[str, Any]) -> str:
    return f"{doc['kind'].lower()}/{doc['metadata']['name']}"


def submit(apis: Apis, docs: List[Dict[str, Any]]) -> List[str]:
    """Create every object; ConfigError naming those that already exist (then nothing is created)."""
    k = _client()
    existing = []
    for doc in docs:
        try:
            apis.method("read", doc["kind"])(doc["metadata"]["name"], doc["metadata"]["namespace"])
            existing.append(_ref(doc))
        except k.client.ApiException as e:
            if e.status != 404:
                raise ConfigError(f"cannot look up {_ref(doc)}: {_api_error(e)}")
    if existing:
        raise ConfigError(f"already exist in namespace {docs[0]['metadata']['namespace']}: {', '.join(existing)}; "
                          f"nothing was created (aimaster k8s delete removes them)")
    created = []
    for doc in docs:
        try:
            apis.method("create", doc["kind"])(doc["metadata"]["namespace"], doc)
        except k.client.ApiException as e:
            done = f" (created before it: {', '.join(created)})" if created else ""
            raise ConfigError(f"cannot create {_ref(doc)}: {_api_error(e)}{done}")
        created.append(_ref(doc))
    return created


def _names(job_id: str) -> Dict[str, str]:
    from aimaster.engines.k8s_manifests import K8sJob

    return K8sJob(job_id, "", 1, []).names()


def delete(apis: Apis, job_id: str, namespace: str, purge: bool = False) -> List[str]:
    """Delete the job's objects; lines saying what was deleted and what was not there."""
    k = _client()
    names = _names(job_id)
    targets = [("Job", names["workers"]), ("Job", names["master"]), ("Service", names["service"]),
               ("Secret", names["join"]), ("Secret", names["master_tls"])]
    if purge:
        targets.append(("PersistentVolumeClaim", names["pvc"]))
    lines = []
    for kind, name in targets:
        ref = f"{kind.lower()}/{name}"
        kwargs = {"propagation_policy": "Background"} if kind == "Job" else {}  # the Job's pods go with it
        try:
            apis.method("delete", kind)(name, namespace, **kwargs)
            lines.append(f"deleted {ref}")
        except k.client.ApiException as e:
            if e.status != 404:
                raise ConfigError(f"cannot delete {ref}: {_api_error(e)}")
            lines.append(f"{ref} was not there")
    if not purge:
        lines.append(f"kept persistentvolumeclaim/{names['pvc']} (the job's etcd data: a resubmitted job resumes "
                     f"from it; --purge deletes it)")
    return lines


def _job_line(job) -> str:
    if job is None:
        return "not found"
    st = job.status
    conditions = [c.type for c in (st.conditions or []) if c.status == "True"]
    state = ",".join(conditions) or ("Running" if st.active else "Pending")
    parts = [state, f"active {st.active or 0}", f"succeeded {st.succeeded or 0}", f"failed {st.failed or 0}"]
    if getattr(st, "failed_indexes", None):
        parts.append(f"failed indexes {st.failed_indexes}")
    return ", ".join(parts)


def status(apis: Apis, job_id: str, namespace: str) -> Dict[str, Any]:
    """The Jobs' states and every pod of the job (component, index, phase, node, restarts)."""
    k = _client()
    names = _names(job_id)
    jobs = {}
    for role in ("master", "workers"):
        try:
            jobs[role] = apis.batch.read_namespaced_job(names[role], namespace)
        except k.client.ApiException as e:
            if e.status != 404:
                raise ConfigError(f"cannot read job/{names[role]}: {_api_error(e)}")
            jobs[role] = None
    try:
        pods = apis.core.list_namespaced_pod(namespace, label_selector=f"{JOB_LABEL}={job_id}").items
    except k.client.ApiException as e:
        raise ConfigError(f"cannot list the pods of job {job_id}: {_api_error(e)}")
    rows = []
    for pod in pods:
        meta_labels = pod.metadata.labels or {}
        annotations = pod.metadata.annotations or {}
        statuses = pod.status.container_statuses or []
        rows.append({"pod": pod.metadata.name, "component": meta_labels.get(COMPONENT_LABEL, "?"),
                     "index": annotations.get("batch.kubernetes.io/job-completion-index", "-"),
                     "phase": pod.status.phase or "?", "node": pod.spec.node_name or "-",
                     "restarts": sum(s.restart_count or 0 for s in statuses)})
    rows.sort(key=lambda r: (r["component"] != "master", r["index"], r["pod"]))
    return {"job_id": job_id, "namespace": namespace, "master": _job_line(jobs["master"]),
            "workers": _job_line(jobs["workers"]), "pods": rows}


def format_status(view: Dict[str, Any]) -> str:
    lines = [f"job {view['job_id']} in namespace {view['namespace']}",
             f"  master job:  {view['master']}", f"  workers job: {view['workers']}"]
    if view["pods"]:
        lines.append(f"  {'pod':<44} {'role':<7} {'index':>5} {'phase':<10} {'restarts':>8}  node")
        for r in view["pods"]:
            lines.append(f"  {r['pod'][:44]:<44} {r['component'][:7]:<7} {r['index']:>5} {r['phase'][:10]:<10} "
                         f"{r['restarts']:>8}  {r['node']}")
    else:
        lines.append("  no pods")
    return "\n".join(lines)
