"""The chart's RBAC where it is narrowest: with `watchNamespace`, the
operator run with its ServiceAccount's token (not the admin's certificate)
and the chart's Role in that one namespace reconciles the sample to Ready
there, and may touch nothing elsewhere. (test_helm.py installs the chart
with its ClusterRole and does the same.)"""

from __future__ import annotations

import functools
import subprocess

from conftest import (CHART, SAMPLE, Operator, cluster_bin, condition, instead_of,
                      service_account_kubectl, wait_for)


def test_operator_reconciles_with_the_charts_namespaced_rbac_only(cluster, operator, namespace, tmp_path):
    release = f"specdec-{namespace}"
    rbac = subprocess.run(
        [str(cluster_bin() / "helm"), "template", release, str(CHART), "-n", namespace,
         "--set", f"watchNamespace={namespace}", "--show-only", "templates/rbac.yaml"],
        capture_output=True, text=True, check=True).stdout
    cluster("apply", "-f", "-", input=rbac)
    as_operator = service_account_kubectl(cluster, namespace, release, tmp_path)
    assert as_operator.run("get", "secrets", "-n", namespace, check=False).returncode != 0, \
        "the ServiceAccount can read Secrets: RBAC is broader than the chart says"
    assert as_operator.run("get", "deployments", "-n", "default", check=False).returncode != 0, \
        "the ServiceAccount can read another namespace's Deployments under watchNamespace"
    # What OwnerReferencesPermissionEnforcement asks of an owner reference
    # that blocks its owner's deletion.
    assert as_operator("auth", "can-i", "update", "speculativedeployments.specdec.io",
                       "--subresource=finalizers", "-n", namespace).strip() == "yes"

    start = functools.partial(Operator, as_operator, "rbac", tmp_path, lease_namespace=namespace,
                              watch_namespace=namespace)
    with instead_of(operator, start) as restricted:
        cluster("apply", "-n", namespace, "-f", str(SAMPLE))

        def ready():
            o = cluster.json("get", "specdep", "qwen-coder", "-n", namespace)
            return condition(o, "Ready").get("status") == "True" and o["status"]["readyReplicas"] == 2
        wait_for("Ready under the chart's RBAC", ready, timeout=120)
        assert restricted.metric("specdec_operator_reconcile_errors_total") == 0, restricted.log.read_text()[-3000:]
        events = cluster("get", "events", "-n", namespace, "--field-selector", "involvedObject.name=qwen-coder")
        assert "RegistryApplied" in events
