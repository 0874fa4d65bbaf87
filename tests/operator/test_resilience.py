"""Must-show 5: the operator survives an API-server restart and converges
afterwards; two replicas never both reconcile (one Lease holder)."""

from __future__ import annotations

import subprocess

import yaml

from conftest import CLUSTER, LEASE_NAMESPACE, SAMPLE, Operator, condition, wait_for


def small_sample(name: str) -> str:
    obj = yaml.safe_load(SAMPLE.read_text())
    obj["metadata"]["name"] = name
    obj["spec"]["replicas"] = 1
    return yaml.safe_dump(obj)


def ready(cluster, ns, name, replicas):
    def check():
        o = cluster.json("get", "specdep", name, "-n", ns)
        return (condition(o, "Ready").get("status") == "True"
                and o["status"].get("readyReplicas") == replicas
                and o["status"].get("observedGeneration") == o["metadata"]["generation"])
    return check


def lease_holder(cluster) -> str:
    lease = cluster.json("get", "lease", "specdec-operator", "-n", LEASE_NAMESPACE)
    return lease["spec"].get("holderIdentity") or ""


def test_survives_an_api_server_restart_and_converges(cluster, operator, namespace):
    cluster("apply", "-n", namespace, "-f", "-", input=small_sample("restart"))
    wait_for("Ready before the restart", ready(cluster, namespace, "restart", 1), timeout=90)
    subprocess.run([str(CLUSTER / "restart-apiserver"), "8"], check=True, timeout=300)
    assert operator.process.poll() is None, "the operator exited during the API-server restart"
    # A change made after the restart is reconciled.
    cluster("scale", "specdep", "restart", "-n", namespace, "--replicas", "2")
    wait_for("convergence after the restart", ready(cluster, namespace, "restart", 2), timeout=120)
    assert operator.process.poll() is None
    wait_for("op-a leading again", operator.is_leader, timeout=30)


def test_two_replicas_never_both_reconcile(cluster, operator, namespace, tmp_path):
    wait_for("op-a to lead", operator.is_leader, timeout=30)
    second = Operator(cluster, "op-b", tmp_path)
    try:
        cluster("apply", "-n", namespace, "-f", "-", input=small_sample("pair"))
        wait_for("Ready", ready(cluster, namespace, "pair", 1), timeout=90)
        for _ in range(5):
            assert lease_holder(cluster) == "op-a"
            assert operator.is_leader() and not second.is_leader()
            assert second.metric("specdec_operator_reconciliations_total") == 0
        assert operator.metric("specdec_operator_reconciliations_total") > 0
        # The leader stops: it releases the Lease and the other takes over.
        operator.stop()
        wait_for("op-b to hold the Lease", lambda: lease_holder(cluster) == "op-b", timeout=30)
        wait_for("op-b to lead", second.is_leader, timeout=30)
        cluster("scale", "specdep", "pair", "-n", namespace, "--replicas", "2")
        wait_for("op-b to reconcile the change", ready(cluster, namespace, "pair", 2), timeout=90)
        assert second.metric("specdec_operator_reconciliations_total") > 0
    finally:
        second.stop()
        if operator.process.poll() is not None:
            operator.start()
        wait_for("op-a to lead again", operator.is_leader, timeout=30)
