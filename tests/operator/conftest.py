"""Fixtures of the operator tests: the real test control plane
(tests/cluster), the operator binary run against it, and kubectl driven as a
user would."""

from __future__ import annotations

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
CRDS = REPO / "crds"
LEASE_NAMESPACE = "specdec-system"


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


@pytest.fixture(scope="session")
def cluster() -> Kubectl:
    up = subprocess.run([str(CLUSTER / "up")], capture_output=True, text=True, timeout=3600)
    assert up.returncode == 0, f"tests/cluster/up failed:\n{up.stderr[-4000:]}"
    export = up.stdout.strip().splitlines()[-1]
    assert export.startswith("export KUBECONFIG="), up.stdout
    kubeconfig = Path(export.split("=", 1)[1].strip("'\""))
    build = subprocess.run([str(CLUSTER / "build")], capture_output=True, text=True, check=True)
    bin_dir = Path(build.stdout.strip().splitlines()[-1])
    kubectl = Kubectl(bin_dir / "kubectl", kubeconfig)
    kubectl("apply", "--server-side", "-f", str(CRDS))
    kubectl("wait", "--for=condition=Established", "crd/speculativedeployments.specdec.io", "--timeout=60s")
    if not kubectl.exists("namespace", LEASE_NAMESPACE):
        kubectl("create", "namespace", LEASE_NAMESPACE)
    return kubectl


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Operator:
    """One `specdec-operator run` process."""

    #: Its --status-interval: how often it refreshes what the pods report.
    status_interval_s = 2

    def __init__(self, kubectl: Kubectl, identity: str, log_dir: Path,
                 lease_namespace: str = LEASE_NAMESPACE):
        self.binary = target_dir() / "release" / "specdec-operator"
        assert self.binary.is_file(), f"{self.binary} missing: build with cargo build --release"
        self.kubectl = kubectl
        self.identity = identity
        self.lease_namespace = lease_namespace
        self.port = free_port()
        self.log = log_dir / f"operator-{identity}.log"
        self.process = None
        self.start()

    def start(self):
        """Start (or start again after `stop`) the process."""
        self.process = subprocess.Popen(
            [str(self.binary), "run", "--listen", f"127.0.0.1:{self.port}",
             "--identity", self.identity, "--lease-namespace", self.lease_namespace,
             "--lease-duration", "6", "--lease-retry", "1",
             "--status-interval", str(self.status_interval_s)],
            stdout=open(self.log, "a"), stderr=subprocess.STDOUT,
            env={**self.kubectl.env, "SPECDEC_OPERATOR_LOG": "info,specdec_operator=debug"},
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
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


@pytest.fixture(scope="session")
def operator(cluster: Kubectl, tmp_path_factory):
    op = Operator(cluster, "op-a", tmp_path_factory.mktemp("operator"))
    wait_for("operator op-a to lead", op.is_leader, timeout=30)
    yield op
    op.stop()
    print(f"operator log: {op.log}", file=sys.stderr)


@pytest.fixture
def namespace(cluster: Kubectl):
    name = f"t-{uuid.uuid4().hex[:8]}"
    cluster("create", "namespace", name)
    yield name
    cluster.run("delete", "namespace", name, "--wait=false", check=False)


def condition(obj: dict, type_: str) -> dict:
    for c in obj.get("status", {}).get("conditions", []):
        if c["type"] == type_:
            return c
    return {}
