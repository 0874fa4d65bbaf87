"""ServiceMonitor where the cluster has the Prometheus Operator's CRD (the
real one, from the prometheus-operator Go module): created to scrape the
Service's port, removed when the spec turns monitoring off."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import yaml

from conftest import SAMPLE, wait_for

PROMETHEUS_OPERATOR = "github.com/prometheus-operator/prometheus-operator@v0.85.0"
CRD = "example/prometheus-operator-crd/monitoring.coreos.com_servicemonitors.yaml"


@pytest.fixture
def service_monitor_crd(cluster):
    out = subprocess.run(["go", "mod", "download", "-json", PROMETHEUS_OPERATOR],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    path = Path(json.loads(out.stdout)["Dir"]) / CRD
    cluster("apply", "--server-side", "-f", str(path))
    cluster("wait", "--for=condition=Established", "crd/servicemonitors.monitoring.coreos.com", "--timeout=60s")
    yield
    cluster.run("delete", "-f", str(path), "--wait=false", check=False)


def test_service_monitor_follows_the_spec(cluster, operator, namespace, service_monitor_crd):
    obj = yaml.safe_load(SAMPLE.read_text())
    obj["spec"]["replicas"] = 1
    cluster("apply", "-n", namespace, "-f", "-", input=yaml.safe_dump(obj))
    name = obj["metadata"]["name"]
    monitor = wait_for("the ServiceMonitor", lambda: cluster.exists("servicemonitor", name, "-n", namespace)
                       and cluster.json("get", "servicemonitor", name, "-n", namespace), timeout=60)
    uid = cluster.json("get", "specdep", name, "-n", namespace)["metadata"]["uid"]
    assert monitor["metadata"]["ownerReferences"][0]["uid"] == uid
    endpoint = monitor["spec"]["endpoints"][0]
    assert endpoint == {"port": "http", "path": "/metrics", "interval": "15s"}
    service = cluster.json("get", "service", name, "-n", namespace)
    labels = service["metadata"]["labels"]
    assert all(labels.get(k) == v for k, v in monitor["spec"]["selector"]["matchLabels"].items())
    assert "http" in [p["name"] for p in service["spec"]["ports"]]

    cluster("patch", "specdep", name, "-n", namespace, "--type", "merge",
            "-p", '{"spec": {"monitoring": {"serviceMonitor": false}}}')
    wait_for("the ServiceMonitor to be removed",
             lambda: not cluster.exists("servicemonitor", name, "-n", namespace), timeout=60)
