"""Must-show 5: the operator survives an API-server restart and converges
afterwards; two replicas never both reconcile (one Lease holder)."""

from __future__ import annotations

import datetime
import subprocess
import threading
import time

import requests
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


def test_lease_expiry_is_judged_on_the_local_clock_and_a_demoted_leader_forgets(
        cluster, operator, namespace, tmp_path):
    """Another holder whose clock is an hour behind renews the Lease: its
    `renewTime` looks long expired here, but it is renewing, so the operator
    waits. Once the renewals stop, it takes over after the Lease's duration.
    When it loses the Lease it drops the gauges it published; when it stops
    it stops reconciling before it releases the Lease."""
    lease = "specdec-operator"
    cluster("apply", "-n", namespace, "-f", "-", input=small_sample("skew"))
    wait_for("Ready", ready(cluster, namespace, "skew", 1), timeout=90)
    duration = 6

    def write_lease(holder: str, renewed: datetime.datetime, seconds: int):
        body = {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                "metadata": {"name": lease, "namespace": namespace},
                "spec": {"holderIdentity": holder, "leaseDurationSeconds": seconds,
                         "renewTime": renewed.strftime("%Y-%m-%dT%H:%M:%S.%fZ")}}
        cluster("apply", "--server-side", "--force-conflicts", "--field-manager=test-ghost",
                "-f", "-", input=yaml.safe_dump(body))

    stop_renewing = threading.Event()

    def skewed_holder():
        while not stop_renewing.is_set():
            write_lease("ghost", datetime.datetime.now(datetime.timezone.utc)
                        - datetime.timedelta(hours=1), duration)
            time.sleep(1)

    write_lease("ghost", datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(hours=1),
                duration)
    ghost = threading.Thread(target=skewed_holder)
    ghost.start()
    operator.stop()
    candidate = None
    try:
        candidate = Operator(cluster, "skew", tmp_path, lease_namespace=namespace)
        # Three Lease durations of renewals from the skewed holder: never taken.
        deadline = time.time() + 3 * duration
        while time.time() < deadline:
            assert not candidate.is_leader(), "took a Lease its holder kept renewing"
            time.sleep(0.5)
        stop_renewing.set()
        ghost.join()
        stopped_at = time.time()
        wait_for("the candidate to lead once renewals stop", candidate.is_leader, timeout=30)
        assert time.time() - stopped_at >= duration - 1, "took the Lease before its duration"

        def published():
            return candidate.metric("specdec_operator_ready_replicas",
                                    f'specdeployment_namespace="{namespace}"') == 1
        wait_for("the leader's gauges", published, timeout=30)
        # Demoted: another holder takes the Lease (a fresh renewal).
        write_lease("ghost", datetime.datetime.now(datetime.timezone.utc), 30)
        wait_for("the candidate to step down", lambda: not candidate.is_leader(), timeout=30)
        text = requests.get(f"http://127.0.0.1:{candidate.port}/metrics", timeout=5).text
        assert f'specdeployment_namespace="{namespace}"' not in text, text
        # Leading again, then stopping: the controller stops first, then the
        # Lease is given up.
        write_lease("", datetime.datetime.now(datetime.timezone.utc), 1)
        wait_for("the candidate to lead again", candidate.is_leader, timeout=30)
        candidate.stop()
        log = candidate.log.read_text()
        shutdown = log[log.rindex("shutting down"):]
        assert shutdown.index("controller stopped") < shutdown.index("released the Lease"), shutdown
        assert cluster.json("get", "lease", lease, "-n", namespace)["spec"].get("holderIdentity") is None
    finally:
        stop_renewing.set()
        ghost.join()
        if candidate is not None:
            candidate.stop()
        operator.start()
        wait_for("op-a to lead again", operator.is_leader, timeout=30)
