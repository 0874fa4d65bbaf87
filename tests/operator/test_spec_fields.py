"""The spec's pass-through fields reach the pods: image (defaulted by the
operator, never stored), pull secrets, environment, priority class, and
podOverrides merged over the built pod template; overrides that make no pod
template leave the object Degraded."""

from __future__ import annotations

import yaml

from conftest import SAMPLE, condition, wait_degraded, wait_for

NAME = "fields"


def sample() -> dict:
    obj = yaml.safe_load(SAMPLE.read_text())
    obj["metadata"]["name"] = NAME
    obj["spec"]["replicas"] = 1
    return obj


def template(cluster, ns) -> dict:
    return cluster.json("get", "deployment", NAME, "-n", ns)["spec"]["template"]


def test_pass_through_fields_and_pod_overrides_reach_the_pods(cluster, operator, namespace):
    obj = sample()
    del obj["spec"]["image"]
    obj["spec"]["gpus"] = 0
    obj["spec"]["imagePullPolicy"] = "Never"
    obj["spec"]["imagePullSecrets"] = [{"name": "registry-credentials"}]
    obj["spec"]["env"] = [{"name": "SPECDEC_SLOTS", "value": "4"}, {"name": "HTTPS_PROXY", "value": "http://proxy:3128"}]
    obj["spec"]["envFrom"] = [{"configMapRef": {"name": "specdec-settings", "optional": True}}]
    cluster("apply", "-f", "-", input=yaml.safe_dump({
        "apiVersion": "scheduling.k8s.io/v1", "kind": "PriorityClass",
        "metadata": {"name": f"serving-{namespace}"}, "value": 1000}))
    obj["spec"]["priorityClassName"] = f"serving-{namespace}"
    obj["spec"]["podOverrides"] = {
        "metadata": {"annotations": {"team": "nlp"}},
        "spec": {"containers": [{"name": "server", "env": [{"name": "EXTRA", "value": "1"}]}],
                 "terminationGracePeriodSeconds": 120},
    }
    try:
        cluster("apply", "-n", namespace, "-f", "-", input=yaml.safe_dump(obj))
        # Nothing defaulted into the stored object: the operator chooses the
        # image at each reconcile.
        stored = cluster.json("get", "specdep", NAME, "-n", namespace)
        assert "image" not in stored["spec"], stored["spec"]

        def applied():
            o = cluster.json("get", "specdep", NAME, "-n", namespace)
            return condition(o, "Ready").get("status") == "True" and cluster.exists(
                "deployment", NAME, "-n", namespace)
        wait_for("Ready", applied, timeout=120)
        t = template(cluster, namespace)
        server = t["spec"]["containers"][0]
        assert server["image"].startswith("ghcr.io/specdec/specdec:") and not server["image"].endswith("-cuda"), server["image"]
        assert server["imagePullPolicy"] == "Never"
        assert t["spec"]["imagePullSecrets"] == [{"name": "registry-credentials"}]
        env = {e["name"]: e.get("value") for e in server["env"]}
        assert env["SPECDEC_SLOTS"] == "4" and env["HTTPS_PROXY"] == "http://proxy:3128", env
        assert [e["name"] for e in server["env"]].count("SPECDEC_SLOTS") == 1
        assert env["EXTRA"] == "1", env
        assert server["envFrom"] == [{"configMapRef": {"name": "specdec-settings", "optional": True}}]
        assert t["spec"]["priorityClassName"] == f"serving-{namespace}"
        assert t["metadata"]["annotations"]["team"] == "nlp"
        assert t["spec"]["terminationGracePeriodSeconds"] == 120
        # The built parts the overrides do not touch stay.
        assert "specdec.io/registry-sha256" in t["metadata"]["annotations"]
        assert server["securityContext"]["allowPrivilegeEscalation"] is False

        obj["spec"]["podOverrides"] = {"spec": {"containers": "server"}}
        cluster("apply", "-n", namespace, "-f", "-", input=yaml.safe_dump(obj))

        c = wait_degraded(cluster, namespace, NAME)
        assert c["reason"] == "InvalidSpec" and c["message"].startswith("podOverrides:"), c
        # The last good Deployment keeps serving.
        assert template(cluster, namespace)["metadata"]["annotations"]["team"] == "nlp"
    finally:
        cluster.run("delete", "priorityclass", f"serving-{namespace}", "--wait=false", check=False)
