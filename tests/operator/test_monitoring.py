"""ServiceMonitor where the cluster has the Prometheus Operator's CRD (the
real one, from the prometheus-operator Go module): created to scrape the
Service's port, removed when the spec turns monitoring off."""

from __future__ import annotations

import yaml

from conftest import SAMPLE, wait_for


def test_service_monitor_follows_the_spec(cluster, operator, namespace, service_monitor_crd):
    obj = yaml.safe_load(SAMPLE.read_text())
    obj["spec"]["replicas"] = 1
    # kube-prometheus-stack's Prometheus selects ServiceMonitors by `release`.
    obj["spec"]["monitoring"]["labels"] = {"release": "kube-prometheus-stack"}
    cluster("apply", "-n", namespace, "-f", "-", input=yaml.safe_dump(obj))
    name = obj["metadata"]["name"]
    monitor = wait_for("the ServiceMonitor", lambda: cluster.exists("servicemonitor", name, "-n", namespace)
                       and cluster.json("get", "servicemonitor", name, "-n", namespace), timeout=60)
    uid = cluster.json("get", "specdep", name, "-n", namespace)["metadata"]["uid"]
    assert monitor["metadata"]["ownerReferences"][0]["uid"] == uid
    assert monitor["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    assert monitor["metadata"]["labels"]["app.kubernetes.io/instance"] == name
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
