"""``aimaster k8s``: the rendered manifests fit the Kubernetes API field by field and say what the job
needs; ``submit``/``status``/``delete`` drive the official client's real classes, only the HTTP layer
(urllib3's ``PoolManager.request``) answering like an API server from memory. No cluster runs here.
"""

from __future__ import annotations

import base64
import json
import os
import stat
import subprocess
import sys
import urllib.parse

import pytest

pytest.importorskip("kubernetes")
yaml = pytest.importorskip("yaml")

import urllib3  # noqa: E402
from helpers import run_aimaster  # noqa: E402
from k8s_schema import check_manifest, problems  # noqa: E402

from aimaster.data.runtime import USER_ERROR_EXIT  # noqa: E402
from aimaster.engines import k8s_manifests as m  # noqa: E402
from aimaster.security import bundle, certs  # noqa: E402
from aimaster.security.job_security import JobSecurity  # noqa: E402
from aimaster.security.listen import parse as parse_listen  # noqa: E402

COMMAND = ["python", "infer.py", "--batch", "8"]


def _render(*args: str) -> list:
    r = run_aimaster("k8s", "render", *args, "--", *COMMAND, timeout=120)
    assert r.returncode == 0, r.stderr
    return list(yaml.safe_load_all(r.stdout))


@pytest.fixture(scope="module")
def docs():
    return _render("--image", "registry.example/infer:1", "-n", "4", "--job-id", "nightly", "--namespace", "ml",
                   "--gpus-per-worker", "2", "--cpu", "8", "--memory", "32Gi", "--mount", "datasets:/data",
                   "--retries-per-worker", "5")


def _by_name(docs, name):
    return next(d for d in docs if d["metadata"]["name"] == name)


def test_every_object_fits_the_api_models(docs):
    assert [(d["kind"], d["metadata"]["name"]) for d in docs] == [
        ("PersistentVolumeClaim", "aimaster-nightly-state"), ("Secret", "aimaster-nightly-master-tls"),
        ("Secret", "aimaster-nightly-join"), ("Service", "aimaster-nightly-etcd"), ("Job", "aimaster-nightly-master"),
        ("Job", "aimaster-nightly-workers")]
    for doc in docs:
        assert doc["metadata"]["namespace"] == "ml" and doc["metadata"]["labels"][m.JOB_LABEL] == "nightly"
        check_manifest(doc)


def test_the_checker_catches_a_misplaced_field(docs):
    """The checker is no rubber stamp: a typo and a field one level too high are both named."""
    workers = json.loads(json.dumps(_by_name(docs, "aimaster-nightly-workers")))
    workers["spec"]["backoffLimitPerIndx"] = 3
    workers["spec"]["template"]["spec"]["image"] = "x"
    assert sorted(problems(workers, "V1Job", "Job")) == ["Job.spec.backoffLimitPerIndx: not a field of V1JobSpec",
                                                         "Job.spec.template.spec.image: not a field of V1PodSpec"]


def test_workers_are_an_indexed_job_running_aimaster_join_and_the_command(docs):
    spec = _by_name(docs, "aimaster-nightly-workers")["spec"]
    assert spec["completionMode"] == "Indexed" and spec["completions"] == 4 and spec["parallelism"] == 4
    assert spec["backoffLimitPerIndex"] == 5 and "backoffLimit" not in spec
    pod = spec["template"]["spec"]
    assert pod["restartPolicy"] == "Never"  # what podFailurePolicy requires
    (c,) = pod["containers"]
    assert c["command"] == ["aimaster", "join", "--bundle", "/etc/aimaster/join/join.json", "-n", "1", "--", *COMMAND]
    assert c["resources"]["limits"] == {"cpu": "8", "memory": "32Gi", "nvidia.com/gpu": "2"}
    assert c["resources"]["requests"] == {"cpu": "8", "memory": "32Gi"}
    mounts = {v["mountPath"]: v["name"] for v in c["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes[mounts["/etc/aimaster/join"]]["secret"] == {
        "secretName": "aimaster-nightly-join", "defaultMode": 0o400,
        "items": [{"key": "join.json", "path": "join.json"}]}
    assert volumes[mounts["/data"]]["persistentVolumeClaim"] == {"claimName": "datasets"}


def test_the_failure_policy(docs):
    rules = _by_name(docs, "aimaster-nightly-workers")["spec"]["podFailurePolicy"]["rules"]
    assert rules[0] == {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]}
    fail = rules[1]
    assert fail["action"] == "FailJob" and fail["onExitCodes"]["containerName"] == "worker"
    assert fail["onExitCodes"]["operator"] == "In" and USER_ERROR_EXIT in fail["onExitCodes"]["values"]
    assert 1 in fail["onExitCodes"]["values"] and 0 not in fail["onExitCodes"]["values"]
    master_rules = _by_name(docs, "aimaster-nightly-master")["spec"]["podFailurePolicy"]["rules"]
    assert master_rules[0] == rules[0]
    assert master_rules[1]["onExitCodes"] == {"containerName": "master", "operator": "In", "values": [1, 130]}


def test_the_master_serves_its_etcd_through_the_service(docs):
    master = _by_name(docs, "aimaster-nightly-master")["spec"]
    assert master["completions"] == 1 and master["parallelism"] == 1
    pod = master["template"]
    (c,) = pod["spec"]["containers"]
    assert c["command"] == ["aimaster", "run", "-n", "0", "--job-id", "nightly", "--state-dir", m.STATE_DIR,
                            "--listen", "0.0.0.0:2379", "--advertise", "aimaster-nightly-etcd.ml.svc", "--", *COMMAND]
    assert c["ports"] == [{"name": "etcd", "containerPort": 2379, "protocol": "TCP"}]
    assert c["readinessProbe"]["exec"]["command"] == ["aimaster", "k8s", "ready", "--job-id", "nightly",
                                                      "--state-dir", m.STATE_DIR]
    svc = _by_name(docs, "aimaster-nightly-etcd")["spec"]
    assert svc["ports"] == [{"name": "etcd", "port": 2379, "targetPort": 2379, "protocol": "TCP"}]
    assert all(pod["metadata"]["labels"].get(k) == v for k, v in svc["selector"].items())
    worker_labels = _by_name(docs, "aimaster-nightly-workers")["spec"]["template"]["metadata"]["labels"]
    assert not all(worker_labels.get(k) == v for k, v in svc["selector"].items())  # only the master serves it
    volumes = {v["name"]: v for v in pod["spec"]["volumes"]}
    state = next(v for v in c["volumeMounts"] if v["mountPath"] == m.STATE_DIR)
    assert volumes[state["name"]]["persistentVolumeClaim"] == {"claimName": "aimaster-nightly-state"}
    pvc = _by_name(docs, "aimaster-nightly-state")["spec"]
    assert pvc["accessModes"] == ["ReadWriteOnce"] and pvc["resources"]["requests"] == {"storage": "1Gi"}


def _secret_files(doc) -> dict:
    return {k: base64.b64decode(v) for k, v in doc["data"].items()}


def test_the_join_bundle_is_signed_for_the_service_and_holds_no_ca_key(docs, tmp_path):
    join = _secret_files(_by_name(docs, "aimaster-nightly-join"))
    master_files = _secret_files(_by_name(docs, "aimaster-nightly-master-tls"))
    assert set(join) == {"join.json"}
    value = json.loads(join["join.json"])
    assert value["key"] == master_files["worker-key.pem"].decode()  # the one private key it holds
    assert [k for k, v in value.items() if "PRIVATE KEY" in str(v)] == ["key"]
    assert master_files["root.pem"].decode() not in json.dumps(value)
    path = tmp_path / "join.json"
    path.write_bytes(join["join.json"])
    loaded = bundle.load(str(path), "nightly")  # signature, certificates and key checked
    assert loaded.endpoints == ["aimaster-nightly-etcd.ml.svc:2379"]
    assert loaded.ca == master_files["ca.pem"] and loaded.cert == master_files["worker.pem"]
    server = certs.load_cert(master_files["server.pem"], "server")
    assert {"aimaster-nightly-etcd.ml.svc", "aimaster-nightly-etcd", "127.0.0.1"} <= set(certs.names_of(server))


def test_the_init_container_installs_what_the_master_reuses(docs, tmp_path):
    """The init container's script, run for real (its two directories moved under tmp_path), leaves
    the job's security directory as aimaster keeps it; ``aimaster run --listen`` then reuses it all."""
    master_files = _secret_files(_by_name(docs, "aimaster-nightly-master-tls"))
    secret_dir, state = tmp_path / "secret", tmp_path / "state"
    secret_dir.mkdir()
    for name, data in master_files.items():
        (secret_dir / name).write_bytes(data)
        os.chmod(secret_dir / name, 0o400)
    init = _by_name(docs, "aimaster-nightly-master")["spec"]["template"]["spec"]["initContainers"][0]
    assert init["command"][:2] == ["sh", "-c"]
    script = init["command"][2].replace(m.STATE_DIR, str(state)).replace(m.MASTER_TLS_DIR, str(secret_dir))
    subprocess.run(["sh", "-c", script], check=True, timeout=60)
    security_dir = state / "jobs" / "nightly" / "security"
    assert stat.S_IMODE(os.stat(security_dir).st_mode) == 0o700
    for name, data in master_files.items():
        assert (security_dir / name).read_bytes() == data
        assert stat.S_IMODE(os.stat(security_dir / name).st_mode) == 0o600
    security = JobSecurity(str(state / "jobs" / "nightly"), "nightly")
    security.set_listen(parse_listen("0.0.0.0:2379", "aimaster-nightly-etcd.ml.svc"))
    for name in ("ca.pem", "ca-key.pem", "server.pem", "worker.pem", "root.pem", "root-password"):
        assert (security_dir / name).read_bytes() == master_files[name], f"{name} was reissued"


def test_each_render_makes_a_new_ca():
    a, b = (_secret_files(_render("--image", "i", "--job-id", "j")[1])["ca.pem"] for _ in range(2))
    assert a != b


# A missing value is one line; a bad one is click's usage error (usage, hint, the error naming the option).
@pytest.mark.parametrize("args, says, lines", [
    (["--job-id", "j"], "Error: k8s render needs --image IMAGE", 1),
    (["--image", "i"], "Error: --job-id is needed", 1),
    (["--image", "i", "--job-id", "Nightly_1"], "'Nightly_1' is not a Kubernetes name", 1),
    (["--image", "i", "--job-id", "j", "--gpus-per-worker", "-1"], "Invalid value for '--gpus-per-worker'", 3),
    (["--image", "i", "--job-id", "j", "--memory", "12XB"], "'12XB' is not a memory quantity", 3),
    (["--image", "i", "--job-id", "j", "--memory", "0Gi"], "'0Gi' is not a memory quantity", 3),
    (["--image", "i", "--job-id", "j", "--cpu", "two"], "--cpu 'two' is not a CPU quantity", 3),
    (["--image", "i", "--job-id", "j", "--mount", "data"], "expected CLAIM:/absolute/path", 3),
])
def test_bad_input_is_refused_clearly(args, says, lines):
    r = run_aimaster("k8s", "render", *args, "--", "python", "infer.py", timeout=60)
    assert r.returncode == 2 and r.stdout == "", r.stdout
    assert says in r.stderr.splitlines()[-1] and "Traceback" not in r.stderr, r.stderr
    assert len([line for line in r.stderr.splitlines() if line.strip()]) == lines, r.stderr


# ---------------------------------------------------------------- submit / status / delete
class FakeApiServer:
    """Answers urllib3 requests the way the API server does for the few paths aimaster uses."""

    def __init__(self):
        self.objects = {}  # path of an object -> its JSON
        self.requests = []  # (method, path, query, body)
        self.pods = []
        self.auth = set()  # the Authorization headers seen
        self.forbidden = set()  # collection paths where a create is refused (403)

    def _response(self, status, body):
        data = json.dumps(body).encode()
        return urllib3.HTTPResponse(body=data, status=status, reason={200: "OK", 201: "Created", 403: "Forbidden",
                                                                       404: "Not Found", 409: "Conflict"}[status],
                                    headers={"Content-Type": "application/json"}, preload_content=True)

    def __call__(self, manager, method, url, body=None, fields=None, **kwargs):
        parsed = urllib.parse.urlsplit(url)
        path = parsed.path
        query = dict(urllib.parse.parse_qsl(parsed.query))
        query.update(dict(fields or []))
        sent = json.loads(body) if body else None
        self.requests.append((method, path, query, sent))
        self.auth.add({k.lower(): v for k, v in (kwargs.get("headers") or {}).items()}.get("authorization"))
        if method == "GET" and path.endswith("/pods"):
            return self._response(200, {"kind": "PodList", "apiVersion": "v1", "metadata": {}, "items": self.pods})
        if method == "POST":
            if path in self.forbidden:
                return self._response(403, {"kind": "Status", "message": f"cannot create in {path}", "code": 403})
            target = f"{path}/{sent['metadata']['name']}"
            if target in self.objects:
                return self._response(409, {"kind": "Status", "message": "already exists", "code": 409})
            self.objects[target] = sent
            return self._response(201, sent)
        if path not in self.objects:
            return self._response(404, {"kind": "Status", "message": f"{path} not found", "code": 404})
        if method == "DELETE":
            del self.objects[path]
            return self._response(200, {"kind": "Status", "apiVersion": "v1", "status": "Success", "code": 200})
        return self._response(200, self.objects[path])


@pytest.fixture
def api(monkeypatch, tmp_path):
    server = FakeApiServer()

    def request(manager, method, url, **kwargs):
        return server(manager, method, url, **kwargs)

    monkeypatch.setattr(urllib3.PoolManager, "request", request)
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "test",
        "clusters": [{"name": "c", "cluster": {"server": "https://127.0.0.1:6443", "insecure-skip-tls-verify": True}}],
        "users": [{"name": "u", "user": {"token": "t0ken"}}],
        "contexts": [{"name": "test", "context": {"cluster": "c", "user": "u"}}]}))
    server.kubeconfig = str(kubeconfig)
    return server


def _cli(capsys, *args) -> tuple:
    from aimaster.cli import main

    with pytest.raises(SystemExit) as e:
        main(list(args))
    out = capsys.readouterr()
    return e.value.code, out.out, out.err


def test_submit_creates_every_object_in_order(api, docs, tmp_path, capsys):
    manifests = tmp_path / "job.yaml"
    manifests.write_text(m.to_yaml(docs))
    code, out, err = _cli(capsys, "k8s", "submit", "-f", str(manifests), "--kubeconfig", api.kubeconfig)
    assert code == 0, err
    posts = [(p, body) for method, p, _, body in api.requests if method == "POST"]
    assert [p for p, _ in posts] == [
        "/api/v1/namespaces/ml/persistentvolumeclaims", "/api/v1/namespaces/ml/secrets",
        "/api/v1/namespaces/ml/secrets", "/api/v1/namespaces/ml/services", "/apis/batch/v1/namespaces/ml/jobs",
        "/apis/batch/v1/namespaces/ml/jobs"]
    assert [body for _, body in posts] == docs  # the bodies are the rendered objects, unchanged
    gets = [p for method, p, _, _ in api.requests if method == "GET"]
    assert gets[0] == "/api/v1/namespaces/ml/persistentvolumeclaims/aimaster-nightly-state" and len(gets) == 6
    assert out.splitlines()[-1] == "created job/aimaster-nightly-workers"
    assert api.auth == {"Bearer t0ken"}  # the kubeconfig's credentials went with every request


def test_submit_names_what_already_exists_and_creates_nothing(api, docs, tmp_path, capsys):
    api.objects["/api/v1/namespaces/ml/services/aimaster-nightly-etcd"] = docs[3]
    api.objects["/apis/batch/v1/namespaces/ml/jobs/aimaster-nightly-workers"] = docs[5]
    manifests = tmp_path / "job.yaml"
    manifests.write_text(m.to_yaml(docs))
    code, out, err = _cli(capsys, "k8s", "submit", "-f", str(manifests), "--kubeconfig", api.kubeconfig)
    assert code != 0
    assert err.strip() == ("aimaster: error: already exist in namespace ml: service/aimaster-nightly-etcd, "
                           "job/aimaster-nightly-workers; nothing was created (aimaster k8s delete removes them)")
    assert not [r for r in api.requests if r[0] == "POST"]


def test_a_refused_create_names_what_was_created_before_it(api, docs, tmp_path, capsys):
    api.forbidden.add("/apis/batch/v1/namespaces/ml/jobs")  # RBAC lets this user create no Job
    manifests = tmp_path / "job.yaml"
    manifests.write_text(m.to_yaml(docs))
    code, _, err = _cli(capsys, "k8s", "submit", "-f", str(manifests), "--kubeconfig", api.kubeconfig)
    assert code != 0
    assert err.strip() == ("aimaster: error: cannot create job/aimaster-nightly-master: 403 Forbidden: cannot create "
                           "in /apis/batch/v1/namespaces/ml/jobs (created before it: persistentvolumeclaim/aimaster-"
                           "nightly-state, secret/aimaster-nightly-master-tls, secret/aimaster-nightly-join, "
                           "service/aimaster-nightly-etcd)"), err


def test_submit_refuses_what_render_did_not_make(api, tmp_path, capsys):
    manifests = tmp_path / "job.yaml"
    manifests.write_text(yaml.safe_dump({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "x"}}))
    code, _, err = _cli(capsys, "k8s", "submit", "-f", str(manifests), "--kubeconfig", api.kubeconfig)
    assert code != 0 and "document 1 is not one of aimaster's objects" in err and not api.requests, err


def test_status_shows_the_jobs_and_pods(api, docs, capsys):
    master = json.loads(json.dumps(docs[4]))
    master["status"] = {"active": 1}
    workers = json.loads(json.dumps(docs[5]))
    workers["status"] = {"active": 3, "succeeded": 1, "failed": 2,
                         "conditions": [{"type": "FailureTarget", "status": "False"}]}
    api.objects["/apis/batch/v1/namespaces/ml/jobs/aimaster-nightly-master"] = master
    api.objects["/apis/batch/v1/namespaces/ml/jobs/aimaster-nightly-workers"] = workers
    api.pods = [
        {"metadata": {"name": "aimaster-nightly-workers-1-abcde", "labels": {m.COMPONENT_LABEL: "worker"},
                      "annotations": {"batch.kubernetes.io/job-completion-index": "1"}},
         "spec": {"containers": [{"name": "worker"}], "nodeName": "gpu-7"},
         "status": {"phase": "Running", "containerStatuses": [
             {"name": "worker", "restartCount": 0, "ready": True, "image": "i", "imageID": "x"}]}},
        {"metadata": {"name": "aimaster-nightly-master-xyz", "labels": {m.COMPONENT_LABEL: "master"}},
         "spec": {"containers": [{"name": "master"}], "nodeName": "cpu-1"}, "status": {"phase": "Running"}},
    ]
    code, out, err = _cli(capsys, "k8s", "status", "--job-id", "nightly", "--namespace", "ml",
                          "--kubeconfig", api.kubeconfig)
    assert code == 0, err
    lines = out.splitlines()
    assert lines[1] == "  master job:  Running, active 1, succeeded 0, failed 0"
    assert lines[2] == "  workers job: Running, active 3, succeeded 1, failed 2"
    assert lines[4].split() == ["aimaster-nightly-master-xyz", "master", "-", "Running", "0", "cpu-1"]
    assert lines[5].split() == ["aimaster-nightly-workers-1-abcde", "worker", "1", "Running", "0", "gpu-7"]
    (pods,) = [q for method, p, q, _ in api.requests if p == "/api/v1/namespaces/ml/pods"]
    assert pods == {"labelSelector": "aimaster.io/job=nightly"}


def test_status_of_an_unknown_job(api, capsys):
    code, out, err = _cli(capsys, "k8s", "status", "--job-id", "nope", "--kubeconfig", api.kubeconfig)
    assert code == 0, err
    assert "master job:  not found" in out and "no pods" in out


def test_delete_removes_all_but_the_state_volume(api, docs, capsys):
    for doc in docs:
        group = "/apis/batch/v1" if doc["kind"] == "Job" else "/api/v1"
        plural = {"Job": "jobs", "Secret": "secrets", "Service": "services",
                  "PersistentVolumeClaim": "persistentvolumeclaims"}[doc["kind"]]
        api.objects[f"{group}/namespaces/ml/{plural}/{doc['metadata']['name']}"] = doc
    del api.objects["/api/v1/namespaces/ml/secrets/aimaster-nightly-join"]
    code, out, err = _cli(capsys, "k8s", "delete", "--job-id", "nightly", "--namespace", "ml",
                          "--kubeconfig", api.kubeconfig)
    assert code == 0, err
    deletes = [(p, query) for method, p, query, _ in api.requests if method == "DELETE"]
    assert [p for p, _ in deletes] == [
        "/apis/batch/v1/namespaces/ml/jobs/aimaster-nightly-workers",
        "/apis/batch/v1/namespaces/ml/jobs/aimaster-nightly-master",
        "/api/v1/namespaces/ml/services/aimaster-nightly-etcd", "/api/v1/namespaces/ml/secrets/aimaster-nightly-join",
        "/api/v1/namespaces/ml/secrets/aimaster-nightly-master-tls"]
    assert deletes[0][1] == {"propagationPolicy": "Background"}  # the pods go with their Job
    assert "secret/aimaster-nightly-join was not there" in out
    assert "kept persistentvolumeclaim/aimaster-nightly-state" in out


def test_without_a_kubeconfig_it_is_one_line(tmp_path):
    r = run_aimaster("k8s", "status", "--job-id", "j", "--kubeconfig", str(tmp_path / "none"), timeout=60,
                     env={"KUBERNETES_SERVICE_HOST": ""})
    assert r.returncode != 0 and "Traceback" not in r.stderr, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and "kubeconfig" in r.stderr, r.stderr


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-q"]))


def test_status_with_a_bundle_says_when_aimaster_is_unreachable(api, docs, tmp_path, capsys, monkeypatch):
    """From outside the cluster the Service's name does not resolve: said in one line, after the
    Kubernetes view (which is still shown)."""
    monkeypatch.setenv("AIMASTER_ETCD_RETRY_SECONDS", "1")
    path = tmp_path / "join.json"
    path.write_bytes(_secret_files(docs[2])["join.json"])
    os.chmod(path, 0o600)
    code, out, err = _cli(capsys, "k8s", "status", "--job-id", "nightly", "--namespace", "ml", "--bundle", str(path),
                          "--kubeconfig", api.kubeconfig)
    assert code == 0, err
    assert "workers job: not found" in out
    (line,) = [x for x in out.splitlines() if "aimaster status:" in x]
    assert line.startswith("  aimaster status: unreachable: ") and "aimaster-nightly-etcd.ml.svc:2379" in line, line
