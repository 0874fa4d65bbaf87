"""What goes wrong after validation reaches the object's status and Events:
a child the API server refuses, and pods that cannot run (reported by the
kubelet in their status; kwok's fake kubelet leaves a Running pod's status as
it is, so the test writes what a real one would)."""

from __future__ import annotations

import json

import yaml

from conftest import SAMPLE, condition, wait_degraded, wait_for

NAME = "failing"


def sample(replicas: int) -> dict:
    obj = yaml.safe_load(SAMPLE.read_text())
    obj["metadata"]["name"] = NAME
    obj["spec"]["replicas"] = replicas
    return obj


def specdep(cluster, ns) -> dict:
    return cluster.json("get", "specdep", NAME, "-n", ns)


def warning_events(cluster, ns) -> str:
    return cluster("get", "events", "-n", ns, "--field-selector",
                   f"involvedObject.name={NAME},type=Warning")


def test_a_child_the_api_server_refuses_is_degraded_with_an_event(cluster, operator, namespace):
    obj = sample(1)
    # Valid to the CRD's schema; the Deployment's own validation refuses it.
    obj["spec"]["resources"] = {"requests": {"cpu": "2"}, "limits": {"cpu": "1"}}
    cluster("apply", "-n", namespace, "-f", "-", input=yaml.safe_dump(obj))

    c = wait_degraded(cluster, namespace, NAME)
    assert c["reason"] == "ApplyRejected", c
    assert "Deployment/failing" in c["message"] and "must be less than or equal to cpu limit" in c["message"], c
    assert condition(specdep(cluster, namespace), "Ready")["status"] == "False"
    assert "ApplyRejected" in warning_events(cluster, namespace)
    # A refusal is the object's state, not an operator failure retried with backoff.
    assert operator.metric("specdec_operator_reconcile_errors_total", 'kind="rejected"') == 0

    obj["spec"]["resources"] = {"requests": {"cpu": "1"}, "limits": {"cpu": "1"}}
    cluster("apply", "-n", namespace, "-f", "-", input=yaml.safe_dump(obj))

    def recovered():
        o = specdep(cluster, namespace)
        return (condition(o, "Degraded").get("status") == "False"
                and condition(o, "Ready").get("status") == "True")
    wait_for("recovery once the spec is valid", recovered, timeout=60)


def test_a_crash_looping_pod_is_degraded_with_an_event_and_recovers(cluster, operator, namespace):
    cluster("apply", "-n", namespace, "-f", "-", input=yaml.safe_dump(sample(2)))

    def ready():
        o = specdep(cluster, namespace)
        return (condition(o, "Ready").get("status") == "True"
                and o["status"].get("readyReplicas") == 2 and o)
    wait_for("Ready with 2 replicas", ready, timeout=120)
    pods = cluster.json("get", "pods", "-n", namespace, "-l", f"app.kubernetes.io/instance={NAME}")["items"]
    pod = pods[0]["metadata"]["name"]
    container = pods[0]["spec"]["containers"][0]["name"]

    def set_status(ready: bool, state: dict):
        status = {"status": {
            "phase": "Running",
            "conditions": [{"type": "Ready", "status": str(ready)},
                           {"type": "ContainersReady", "status": str(ready)}],
            "containerStatuses": [{"name": container, "ready": ready, "restartCount": 4,
                                   "image": "specdec", "imageID": "", "state": state}],
        }}
        cluster("patch", "pod", pod, "-n", namespace, "--subresource=status", "--type=strategic",
                "-p", json.dumps(status))

    set_status(False, {"waiting": {"reason": "CrashLoopBackOff",
                                   "message": "back-off 40s restarting failed container"}})

    c = wait_degraded(cluster, namespace, NAME)
    o = specdep(cluster, namespace)
    assert c["reason"] == "CrashLoopBackOff", c
    assert pod in c["message"] and "back-off 40s" in c["message"], c
    # One pod of two still serves: Available, but not Ready.
    assert condition(o, "Available")["status"] == "True"
    assert condition(o, "Ready")["status"] == "False"
    wait_for("a Warning Event", lambda: "CrashLoopBackOff" in warning_events(cluster, namespace), timeout=30)

    set_status(True, {"running": {"startedAt": "2026-01-01T00:00:00Z"}})
    wait_for("recovery once the pod runs again",
             lambda: condition(specdep(cluster, namespace), "Degraded").get("status") == "False"
             and condition(specdep(cluster, namespace), "Ready").get("status") == "True", timeout=30)


def test_pods_are_admitted_by_pod_security_restricted_and_host_paths_are_degraded(
        cluster, operator, namespace):
    """A namespace enforcing Pod Security `restricted` (the API server's
    admission, as on managed clusters) admits the pods the operator builds;
    a `file://` source needs a hostPath volume, which it refuses, and the
    object says so."""
    cluster("label", "namespace", namespace, "pod-security.kubernetes.io/enforce=restricted")
    obj = sample(1)
    cluster("apply", "-n", namespace, "-f", "-", input=yaml.safe_dump(obj))

    def ready():
        o = specdep(cluster, namespace)
        return condition(o, "Ready").get("status") == "True" and o["status"].get("readyReplicas") == 1
    wait_for("Ready under restricted", ready, timeout=120)

    obj["spec"]["target"]["model"] = {"uri": "file:///var/lib/models/qwen.gguf"}
    cluster("apply", "-n", namespace, "-f", "-", input=yaml.safe_dump(obj))

    c = wait_degraded(cluster, namespace, NAME, timeout=60)
    assert c["reason"] == "FailedCreate", c
    assert "violates PodSecurity" in c["message"] and "hostPath" in c["message"], c
