"""The chart's RBAC is enough: the operator, run with its ServiceAccount's
token instead of the admin's certificate, reconciles the sample to Ready."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import yaml

from conftest import REPO, SAMPLE, Kubectl, Operator, condition, wait_for

RBAC = REPO / "charts" / "specdec-operator" / "templates" / "rbac.yaml"


def render(template: str, release: str, namespace: str) -> str:
    """The RBAC template uses only the release's name and namespace."""
    out = template.replace("{{ .Release.Name }}", release).replace("{{ .Release.Namespace }}", namespace)
    assert "{{" not in out, "rbac.yaml gained templating this test does not render"
    return out


def test_operator_reconciles_with_the_charts_rbac_only(cluster, operator, namespace, tmp_path):
    release = f"specdec-{namespace}"
    cluster("apply", "-f", "-", input=render(RBAC.read_text(), release, namespace))
    token = cluster("create", "token", release, "-n", namespace, "--duration", "1h").strip()
    admin = json.loads(cluster("config", "view", "--raw", "--minify", "-o", "json"))
    server = admin["clusters"][0]["cluster"]
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config",
        "clusters": [{"name": "c", "cluster": server}],
        "users": [{"name": "sa", "user": {"token": token}}],
        "contexts": [{"name": "sa", "context": {"cluster": "c", "user": "sa"}}],
        "current-context": "sa",
    }))
    as_operator = Kubectl(cluster.binary, kubeconfig)
    assert as_operator.run("get", "secrets", "-n", namespace, check=False).returncode != 0, \
        "the ServiceAccount can read Secrets: RBAC is broader than the chart says"
    # Only one operator may reconcile: the admin-run one steps aside.
    operator.stop()
    restricted = Operator(as_operator, "rbac", tmp_path, lease_namespace=namespace)
    try:
        wait_for("the restricted operator to lead", restricted.is_leader, timeout=30)
        cluster("apply", "-n", namespace, "-f", str(SAMPLE))

        def ready():
            o = cluster.json("get", "specdep", "qwen-coder", "-n", namespace)
            return condition(o, "Ready").get("status") == "True" and o["status"]["readyReplicas"] == 2
        wait_for("Ready under the chart's RBAC", ready, timeout=120)
        assert restricted.metric("specdec_operator_reconcile_errors_total") == 0, restricted.log.read_text()[-3000:]
        events = cluster("get", "events", "-n", namespace, "--field-selector", "involvedObject.name=qwen-coder")
        assert "RegistryApplied" in events
    finally:
        restricted.stop()
        operator.start()
        wait_for("op-a to lead again", operator.is_leader, timeout=30)
