"""Fixtures of the operator tests: the real test control plane
(tests/cluster), the operator binary run against it, and kubectl driven as a
user would."""

from __future__ import annotations

import base64
import contextlib
import fcntl
import json
import os
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
import requests

REPO = Path(__file__).resolve().parents[2]
CLUSTER = REPO / "tests" / "cluster"
SAMPLE = REPO / "examples" / "speculativedeployment.yaml"
#: metadata.name of SAMPLE; also the model name its backends serve under.
SAMPLE_NAME = "qwen-coder"
CRDS = REPO / "crds"
CHART = REPO / "charts" / "specdec-operator"
LEASE_NAMESPACE = "specdec-system"
#: The Prometheus Operator whose ServiceMonitor CRD the tests install.
PROMETHEUS_OPERATOR = "github.com/prometheus-operator/prometheus-operator@v0.85.0"
SERVICE_MONITOR_CRD = "example/prometheus-operator-crd/monitoring.coreos.com_servicemonitors.yaml"
#: Label of the namespaces the tests create, so a later session can find
#: what an interrupted one left behind.
TEST_NAMESPACE_LABEL = "specdec.io/test-namespace"


def target_dir() -> Path:
    return Path(os.environ.get("CARGO_TARGET_DIR", str(REPO / "target")))


def wait_for(what: str, predicate, timeout: float = 60, interval: float = 0.5):
    """Poll `predicate` until it returns something truthy; fail naming `what`."""
    deadline = time.time() + timeout
    last = None
    while time.time() < deadline:
        try:
            last = predicate()
        except (subprocess.CalledProcessError, requests.RequestException, KeyError, ValueError) as e:
            last = e
        else:
            if last:
                return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}; last: {last!r}")


class Kubectl:
    """The kubectl built from the cluster's Kubernetes version."""

    def __init__(self, binary: Path, kubeconfig: Path):
        self.binary = binary
        self.env = {**os.environ, "KUBECONFIG": str(kubeconfig)}

    def run(self, *args: str, input: str | None = None, check: bool = True) -> subprocess.CompletedProcess:
        result = subprocess.run(
            [str(self.binary), *args], input=input, capture_output=True, text=True,
            env=self.env, timeout=120,
        )
        if check and result.returncode != 0:
            raise subprocess.CalledProcessError(result.returncode, result.args, result.stdout, result.stderr)
        return result

    def __call__(self, *args: str, input: str | None = None) -> str:
        return self.run(*args, input=input).stdout

    def json(self, *args: str):
        return json.loads(self(*args, "-o", "json"))

    def exists(self, *args: str) -> bool:
        return self.run("get", *args, check=False).returncode == 0


def cluster_bin() -> Path:
    """The directory of the cluster's binaries (kubectl, helm, ...), built
    first where missing."""
    build = subprocess.run([str(CLUSTER / "build")], capture_output=True, text=True)
    assert build.returncode == 0, f"tests/cluster/build failed:\n{build.stderr[-4000:]}"
    return Path(build.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="session")
def cluster():
    up = subprocess.run([str(CLUSTER / "up")], capture_output=True, text=True, timeout=3600)
    assert up.returncode == 0, f"tests/cluster/up failed:\n{up.stderr[-4000:]}"
    export = up.stdout.strip().splitlines()[-1]
    assert export.startswith("export KUBECONFIG="), up.stdout
    kubeconfig = Path(export.split("=", 1)[1].strip("'\""))
    # One session at a time on the cluster: sessions share the leader Lease
    # and the fake GPUs, and each clears what earlier ones left (below).
    lock = open(kubeconfig.parent / "operator-tests.lock", "w")
    fcntl.flock(lock, fcntl.LOCK_EX)
    kubectl = Kubectl(cluster_bin() / "kubectl", kubeconfig)
    kubectl("apply", "--server-side", "-f", str(CRDS))
    kubectl("wait", "--for=condition=Established", "crd/speculativedeployments.specdec.io", "--timeout=60s")
    if not kubectl.exists("namespace", LEASE_NAMESPACE):
        kubectl("create", "namespace", LEASE_NAMESPACE)
    # The cluster's state outlives a session: namespaces that an interrupted
    # session left (or whose deletion `down` cut short) would hold the fake
    # GPUs that these tests schedule on.
    kubectl("delete", "namespace", "-l", TEST_NAMESPACE_LABEL, "--wait=true", "--timeout=180s")
    try:
        yield kubectl
    finally:
        lock.close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Operator:
    """One `specdec-operator run` process."""

    #: Its --status-interval: how often it refreshes what the pods report.
    status_interval_s = 2

    def __init__(self, kubectl: Kubectl, identity: str, log_dir: Path,
                 lease_namespace: str = LEASE_NAMESPACE, watch_namespace: str | None = None,
                 args: list[str] | None = None, env: dict[str, str] | None = None):
        """`args`, when given, replace all of `run`'s arguments but --listen
        (which is the test's), `env` adds to the environment: to run the
        operator as a manifest does."""
        self.binary = target_dir() / "release" / "specdec-operator"
        assert self.binary.is_file(), f"{self.binary} missing: build with cargo build --release"
        self.kubectl = kubectl
        self.identity = identity
        if args is None:
            args = ["--identity", identity, "--lease-namespace", lease_namespace,
                    "--lease-duration", "6", "--lease-retry", "1",
                    "--status-interval", str(self.status_interval_s)]
            if watch_namespace:
                args += ["--namespace", watch_namespace]
        self.args = args
        self.extra_env = env or {}
        self.port = free_port()
        self.log = log_dir / f"operator-{identity}.log"
        self.process = None
        self.start()

    def start(self):
        """Start (or start again after `stop`) the process."""
        self.process = subprocess.Popen(
            [str(self.binary), "run", "--listen", f"127.0.0.1:{self.port}", *self.args],
            stdout=open(self.log, "a"), stderr=subprocess.STDOUT,
            env={**self.kubectl.env, "SPECDEC_OPERATOR_LOG": "info,specdec_operator=debug",
                 **self.extra_env},
        )
        wait_for(f"operator {self.identity} /healthz", self.healthy, timeout=30)

    def healthy(self) -> bool:
        assert self.process.poll() is None, self.log.read_text()[-3000:]
        return requests.get(f"http://127.0.0.1:{self.port}/healthz", timeout=2).status_code == 200

    def metric(self, name: str, labels: str = "") -> float:
        text = requests.get(f"http://127.0.0.1:{self.port}/metrics", timeout=5).text
        total = 0.0
        for line in text.splitlines():
            if line.startswith(name + ("{" if labels else "")) or line.startswith(name + " "):
                if labels and labels not in line:
                    continue
                total += float(line.rsplit(" ", 1)[1])
        return total

    def is_leader(self) -> bool:
        return self.metric("specdec_operator_leader") == 1.0

    def stop(self):
        terminate(self.process)


@pytest.fixture(scope="session")
def operator(cluster: Kubectl, tmp_path_factory):
    op = Operator(cluster, "op-a", tmp_path_factory.mktemp("operator"))
    wait_for("operator op-a to lead", op.is_leader, timeout=30)
    yield op
    op.stop()
    print(f"operator log: {op.log}", file=sys.stderr)


@contextlib.contextmanager
def instead_of(session_operator: Operator, start):
    """Runs the operator that `start()` starts, stopped at the end, in place
    of the session's: two would reconcile the same objects (each leads its
    own Lease), so the session's is stopped meanwhile and then leads again."""
    session_operator.stop()
    other = None
    try:
        other = start()
        wait_for(f"operator {other.identity} to lead", other.is_leader, timeout=30)
        yield other
    finally:
        if other is not None:
            other.stop()
        session_operator.start()
        wait_for(f"operator {session_operator.identity} to lead again", session_operator.is_leader,
                 timeout=30)


def service_account_kubectl(cluster: Kubectl, namespace: str, name: str, directory: Path) -> Kubectl:
    """kubectl, and an operator run with it, authenticated as ServiceAccount
    `namespace/name` (a token, as in a pod) instead of the admin certificate."""
    token = cluster("create", "token", name, "-n", namespace, "--duration", "1h").strip()
    admin = json.loads(cluster("config", "view", "--raw", "--minify", "-o", "json"))
    kubeconfig = directory / f"kubeconfig-{namespace}-{name}"
    # JSON is YAML, which kubeconfig files are.
    kubeconfig.write_text(json.dumps({
        "apiVersion": "v1", "kind": "Config",
        "clusters": [{"name": "c", "cluster": admin["clusters"][0]["cluster"]}],
        "users": [{"name": "sa", "user": {"token": token}}],
        "contexts": [{"name": "sa", "context": {"cluster": "c", "user": "sa"}}],
        "current-context": "sa",
    }))
    return Kubectl(cluster.binary, kubeconfig)


@pytest.fixture
def namespace(cluster: Kubectl):
    name = f"t-{uuid.uuid4().hex[:8]}"
    cluster("create", "namespace", name)
    cluster("label", "namespace", name, f"{TEST_NAMESPACE_LABEL}=true")
    yield name
    cluster.run("delete", "namespace", name, "--wait=false", check=False)


def wait_degraded(cluster: Kubectl, ns: str, name: str, timeout: float = 30) -> dict:
    """Wait until SpeculativeDeployment `name` is Degraded; its condition."""
    def degraded():
        c = condition(cluster.json("get", "specdep", name, "-n", ns), "Degraded")
        return c.get("status") == "True" and c
    return wait_for(f"{name} Degraded=True", degraded, timeout=timeout)


def terminate(process: subprocess.Popen):
    """Stop `process`: SIGTERM, then SIGKILL after 30 s."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def condition(obj: dict, type_: str) -> dict:
    for c in obj.get("status", {}).get("conditions", []):
        if c["type"] == type_:
            return c
    return {}


def registry_configmap(cluster: Kubectl, ns: str, pod_spec: dict) -> dict:
    """The registry ConfigMap that a pod spec (a pod's, or a Deployment's
    template's) mounts: the operator names each by its content."""
    names = [v["configMap"]["name"] for v in pod_spec["volumes"] if v["name"] == "registry"]
    assert len(names) == 1, pod_spec["volumes"]
    return cluster.json("get", "configmap", names[0], "-n", ns)


@contextlib.contextmanager
def backend_on_pod_ip(cluster, ns, tmp_path):
    """kwok's pods get loopback IPs: a real `specdec serve` bound to the IP of
    one pod of SAMPLE in `ns`, with the registry from the ConfigMap, is what
    the operator scrapes. Yields the server's base URL once it is ready.
    `specdec serve` reads its other flags from SPECDEC_* variables, which it
    inherits."""
    pod = cluster.json("get", "pods", "-n", ns, "-l", f"app.kubernetes.io/instance={SAMPLE_NAME}")["items"][0]
    ip = pod["status"]["podIP"]
    assert ip.startswith("127."), ip
    data = registry_configmap(cluster, ns, pod["spec"])["data"]["registry.yaml"]
    registry = tmp_path / "registry.yaml"
    registry.write_text(data)
    models = subprocess.run([sys.executable, str(REPO / "scripts" / "fetch-models"), "--print-dir"],
                            check=True, capture_output=True, text=True).stdout.strip()
    log = tmp_path / "server.log"
    env = {**os.environ, "SPECDEC_MODEL_DIR": models}
    # The API keys the pod would read from its Secret volume, from the Secret.
    server = next(c for c in pod["spec"]["containers"] if c["name"] == "server")
    key_file = next((e["value"] for e in server.get("env", []) if e["name"] == "SPECDEC_API_KEY_FILE"), None)
    if key_file:
        mount = max((m for m in server["volumeMounts"] if key_file.startswith(m["mountPath"] + "/")),
                    key=lambda m: len(m["mountPath"]))
        volume = next(v for v in pod["spec"]["volumes"] if v["name"] == mount["name"])["secret"]
        secret = cluster.json("get", "secret", volume["secretName"], "-n", ns)
        item = volume["items"][0]
        assert key_file == f"{mount['mountPath']}/{item['path']}", (key_file, volume)
        keys = tmp_path / "api-keys"
        keys.write_bytes(base64.b64decode(secret["data"][item["key"]]))
        env["SPECDEC_API_KEY_FILE"] = str(keys)
    server = subprocess.Popen(
        [str(target_dir() / "release" / "specdec"), "serve", "--registry", str(registry),
         "--host", ip, "--port", "8080", "--model-name", SAMPLE_NAME],
        stdout=open(log, "w"), stderr=subprocess.STDOUT, env=env,
    )
    try:
        url = f"http://{ip}:8080"
        wait_for("the backend on the pod IP", lambda: server.poll() is None
                 and requests.get(f"{url}/readyz", timeout=2).status_code == 200, timeout=180)
        yield url
    finally:
        server.terminate()
        server.wait(timeout=60)


@pytest.fixture
def service_monitor_crd(cluster):
    """The Prometheus Operator's ServiceMonitor CRD (the real one, from its Go
    module), for the duration of a test."""
    out = subprocess.run(["go", "mod", "download", "-json", PROMETHEUS_OPERATOR],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    path = Path(json.loads(out.stdout)["Dir"]) / SERVICE_MONITOR_CRD
    cluster("apply", "--server-side", "-f", str(path))
    cluster("wait", "--for=condition=Established", "crd/servicemonitors.monitoring.coreos.com", "--timeout=60s")
    yield
    cluster.run("delete", "-f", str(path), "--wait=false", check=False)
