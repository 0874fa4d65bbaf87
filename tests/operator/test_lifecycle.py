"""Must-shows 1, 2, 4 and 6 of the operator: apply, roll, scale, delete, and
the registry the operator writes is the one the backend accepts."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml

from conftest import (REPO, SAMPLE, backend_on_pod_ip, condition, registry_configmap,
                      target_dir, wait_for)

NAME = "qwen-coder"


def specdep(kubectl, ns):
    return kubectl.json("get", "specdep", NAME, "-n", ns)


def ready_with(kubectl, ns, replicas):
    def check():
        obj = specdep(kubectl, ns)
        status = obj.get("status", {})
        return (
            condition(obj, "Ready").get("status") == "True"
            and status.get("readyReplicas") == replicas
            and status.get("observedGeneration") == obj["metadata"]["generation"]
            and obj
        )
    return check


def pods(kubectl, ns):
    return kubectl.json("get", "pods", "-n", ns, "-l", f"app.kubernetes.io/instance={NAME}")["items"]


@pytest.fixture
def deployed(cluster, operator, namespace):
    cluster("apply", "-n", namespace, "-f", str(SAMPLE))
    wait_for("the sample to become Ready with 2 replicas", ready_with(cluster, namespace, 2), timeout=120)
    return namespace


def test_apply_creates_children_on_gpu_nodes_and_turns_ready(cluster, deployed):
    ns = deployed
    obj = specdep(cluster, ns)
    uid = obj["metadata"]["uid"]
    template = cluster.json("get", "deployment", NAME, "-n", ns)["spec"]["template"]["spec"]
    registry = registry_configmap(cluster, ns, template)
    # Named by its content and immutable: a restarted container reads what
    # its init containers fetched models for.
    assert registry["immutable"] is True
    assert registry["metadata"]["name"] == f"{NAME}-registry-{obj['status']['registrySha256'][:12]}"
    for kind, name in [("configmap", registry["metadata"]["name"]), ("deployment", NAME),
                       ("service", NAME), ("poddisruptionbudget", NAME)]:
        child = cluster.json("get", kind, name, "-n", ns, "--show-managed-fields")
        owners = child["metadata"]["ownerReferences"]
        assert owners[0]["uid"] == uid and owners[0]["controller"] is True, (kind, owners)
        assert "specdec-operator" in {m["manager"] for m in child["metadata"]["managedFields"]}
    # The sample asks for one GPU per pod: the scheduler puts the pods on the GPU nodes.
    placed = pods(cluster, ns)
    assert len(placed) == 2
    # GPU pods roll one at a time without surge: a full GPU pool has no
    # room for a surge pod.
    rolling = cluster.json("get", "deployment", NAME, "-n", ns)["spec"]["strategy"]
    assert rolling == {"type": "RollingUpdate",
                       "rollingUpdate": {"maxSurge": 0, "maxUnavailable": 1}}, rolling
    for pod in placed:
        assert pod["spec"]["nodeName"].startswith("gpu-"), pod["spec"].get("nodeName")
        limits = pod["spec"]["containers"][0]["resources"]["limits"]
        assert limits["nvidia.com/gpu"] == "1"
        assert [c["name"] for c in pod["spec"]["initContainers"]] == ["fetch-0", "fetch-1"]
    status = obj["status"]
    assert status["replicas"] == 2 and status["ready"] == "2/2"
    assert status["endpoint"] == f"http://{NAME}.{ns}.svc:8080/v1"
    assert condition(obj, "Degraded")["status"] == "False"
    assert condition(obj, "Progressing")["status"] == "False"
    table = cluster("get", "specdep", "-n", ns)
    header, row = table.splitlines()[:2]
    assert header.split() == ["NAME", "READY", "ACCEPTANCE", "AGE"], header
    assert row.split()[:2] == [NAME, "2/2"], row
    wide = cluster("get", "specdep", "-n", ns, "-o", "wide")
    assert f"http://{NAME}.{ns}.svc:8080/v1" in wide
    events = cluster("get", "events", "-n", ns, "--field-selector", f"involvedObject.name={NAME}")
    assert "RegistryApplied" in events


def test_editing_languages_rolls_the_pods_and_scaling_shows_in_status(cluster, deployed):
    ns = deployed
    before = specdep(cluster, ns)["status"]["registrySha256"]
    old_pods = {p["metadata"]["name"] for p in pods(cluster, ns)}
    first_registry = registry_configmap(
        cluster, ns, cluster.json("get", "deployment", NAME, "-n", ns)["spec"]["template"]["spec"])
    cluster("patch", "specdep", NAME, "-n", ns, "--type", "json", "-p",
            '[{"op": "replace", "path": "/spec/drafters/0/languages", "value": ["de", "fr"]}]')

    def registry_updated():
        template = cluster.json("get", "deployment", NAME, "-n", ns)["spec"]["template"]["spec"]
        registry = yaml.safe_load(registry_configmap(cluster, ns, template)["data"]["registry.yaml"])
        return registry["drafters"][0]["languages"] == ["de", "fr"] and registry
    wait_for("a new ConfigMap with the new languages", registry_updated, timeout=30)

    ready_seen = set()

    def rolled():
        obj = specdep(cluster, ns)
        ready_seen.add(condition(obj, "Ready").get("status"))
        sha = obj["status"].get("registrySha256")
        current = pods(cluster, ns)
        annotations = {p["metadata"]["annotations"]["specdec.io/registry-sha256"] for p in current}
        names = {p["metadata"]["name"] for p in current}
        return (sha != before and annotations == {sha} and len(current) == 2
                and not (names & old_pods) and ready_with(cluster, ns, 2)())
    wait_for("the Deployment to roll to pods with the new registry", rolled, timeout=120)
    # The previous registry stays for a rollback, unchanged.
    kept = cluster.json("get", "configmap", first_registry["metadata"]["name"], "-n", ns)
    assert kept["data"] == first_registry["data"]
    # One more change: the registry two back, which no pod mounts, is collected.
    second_registry = registry_configmap(
        cluster, ns, cluster.json("get", "deployment", NAME, "-n", ns)["spec"]["template"]["spec"])
    cluster("patch", "specdep", NAME, "-n", ns, "--type", "json", "-p",
            '[{"op": "replace", "path": "/spec/drafters/0/languages", "value": ["de"]}]')

    def collected():
        names = {c["metadata"]["name"] for c in cluster.json(
            "get", "configmap", "-n", ns, "-l", f"app.kubernetes.io/instance={NAME}")["items"]}
        return (first_registry["metadata"]["name"] not in names
                and second_registry["metadata"]["name"] in names and len(names) == 2)
    wait_for("the oldest registry to be collected", collected, timeout=120)
    wait_for("the Deployment to roll again", lambda: ready_with(cluster, ns, 2)()
             and {p["metadata"]["annotations"]["specdec.io/registry-sha256"] for p in pods(cluster, ns)}
             == {specdep(cluster, ns)["status"]["registrySha256"]}, timeout=120)
    # A healthy rolling update keeps serving (one pod at a time goes), and
    # says so: Ready never went False.
    assert ready_seen == {"True"}, ready_seen

    cluster("scale", "specdep", NAME, "-n", ns, "--replicas", "3")
    obj = wait_for("3 ready replicas in status", ready_with(cluster, ns, 3), timeout=90)
    assert obj["status"]["ready"] == "3/3"
    assert cluster.json("get", "deployment", NAME, "-n", ns)["spec"]["replicas"] == 3
    cluster("scale", "specdep", NAME, "-n", ns, "--replicas", "1")
    wait_for("1 ready replica in status", ready_with(cluster, ns, 1), timeout=90)
    # One replica: no disruption budget (it would block every drain).
    wait_for("the PodDisruptionBudget to go",
             lambda: not cluster.exists("poddisruptionbudget", NAME, "-n", ns), timeout=30)
    # The spec's own rollout strategy replaces the GPU default.
    cluster("patch", "specdep", NAME, "-n", ns, "--type", "merge", "-p",
            '{"spec": {"strategy": {"type": "Recreate"}}}')
    wait_for("the Deployment to take the spec's strategy",
             lambda: cluster.json("get", "deployment", NAME, "-n", ns)["spec"]["strategy"]
             == {"type": "Recreate"}, timeout=30)


def test_deleting_collects_everything_it_owned(cluster, deployed):
    ns = deployed
    cluster("delete", "specdep", NAME, "-n", ns, "--wait=true", "--timeout=60s")

    def all_gone():
        left = cluster("get", "configmap,deployment,replicaset,service,poddisruptionbudget,pod",
                       "-n", ns, "-l", f"app.kubernetes.io/instance={NAME}", "-o", "name")
        return not left.strip()
    wait_for("the garbage collector to delete every child", all_gone, timeout=90)


def test_backend_accepts_the_registry_the_operator_writes(cluster, deployed, tmp_path):
    """The ConfigMap's registry, checked by the backend with the real models
    (what the pod's `specdec serve` does at start-up)."""
    template = cluster.json("get", "deployment", NAME, "-n", deployed)["spec"]["template"]["spec"]
    data = registry_configmap(cluster, deployed, template)["data"]["registry.yaml"]
    registry = tmp_path / "registry.yaml"
    registry.write_text(data)
    models = subprocess.run([sys.executable, str(REPO / "scripts" / "fetch-models"), "--print-dir"],
                            check=True, capture_output=True, text=True).stdout.strip()
    specdec = target_dir() / "release" / "specdec"
    assert specdec.is_file(), f"{specdec} missing"
    check = subprocess.run([str(specdec), "check", "--registry", str(registry)],
                           capture_output=True, text=True, timeout=300,
                           env={**os.environ, "SPECDEC_MODEL_DIR": models})
    assert check.returncode == 0, check.stderr
    assert "qwen-0-5b" in check.stdout + check.stderr
    # And a broken edit is caught by the same check (it is not a rubber stamp).
    registry.write_text(data.replace("qwen2.5-coder-0.5b", "missing-0.5b"))
    bad = subprocess.run([str(specdec), "check", "--registry", str(registry)],
                         capture_output=True, text=True, timeout=300,
                         env={**os.environ, "SPECDEC_MODEL_DIR": models})
    assert bad.returncode != 0 and "does not exist" in bad.stderr


def test_status_reports_acceptance_read_from_a_real_pod(cluster, deployed, tmp_path):
    """The operator scrapes a real backend on a pod's IP."""
    ns = deployed
    with backend_on_pod_ip(cluster, ns, tmp_path) as url:
        from openai import OpenAI
        client = OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=300)
        reply = client.chat.completions.create(
            model=NAME, max_tokens=24, temperature=0,
            messages=[{"role": "user", "content": "Übersetze ins Englische: Das Debian-Projekt ist eine Gemeinschaft von Menschen, die freie Software entwickeln."}],
            # A fixed draft length: adaptive drafting (the sample's setting)
            # decodes this translation plainly on a CPU, and the test needs drafts.
            extra_body={"language": "de", "speculative": {"max": 4, "adaptive": False}},
        )
        spec = reply.usage.model_extra["speculative"]
        assert spec["drafter"] == "qwen-0-5b" and spec["draft_tokens"] > 0

        def reported():
            status = specdep(cluster, ns)["status"]
            rows = [a for a in status.get("acceptance", []) if a["language"] == "de"]
            return rows and status.get("acceptanceRate") and rows[0]
        row = wait_for("status.acceptance for de", reported, timeout=30)
        assert row["drafter"] == "qwen-0-5b"
        assert row["draftTokens"] == spec["draft_tokens"]
        assert row["acceptedTokens"] == spec["accepted_tokens"]
        assert row["acceptanceRate"] == f"{spec['accepted_tokens'] / spec['draft_tokens']:.2f}"
        table = cluster("get", "specdep", NAME, "-n", ns)
        assert row["acceptanceRate"] in table.splitlines()[1]


def reconciles_of(operator, ns) -> tuple[int, int, int]:
    """(reconciles, status writes, children written) of the sample in `ns`
    so far, from the operator's own log."""
    done = [line for line in operator.log.read_text().splitlines()
            if "reconcile done" in line and f"object={ns}/{NAME}" in line]
    children = sum(int(re.search(r"children_written=(\d+)", line).group(1)) for line in done)
    return len(done), sum("status_written=true" in line for line in done), children


def test_traffic_does_not_drive_reconciles_past_the_status_timer(cluster, operator, deployed, tmp_path):
    """Requests finishing on the pods move the acceptance counters the status
    shows: the status is refreshed on the status timer, and its writes do not
    wake the operator up again (under steady traffic they would all the time)."""
    ns = deployed
    interval = operator.status_interval_s
    window = 30.0
    with backend_on_pod_ip(cluster, ns, tmp_path) as url:
        import requests
        stop = threading.Event()
        served = []

        def client(n):
            # Fixed drafts, so that every request moves the counters.
            body = {"model": NAME, "max_tokens": 6, "temperature": 0, "language": "de",
                    "speculative": {"max": 4, "adaptive": False},
                    "messages": [{"role": "user", "content": f"Übersetze: Guten Morgen, Nummer {n}."}]}
            while not stop.is_set():
                reply = requests.post(f"{url}/v1/chat/completions", json=body, timeout=120)
                assert reply.status_code == 200, reply.text
                served.append(reply.json()["usage"]["completion_tokens"])

        clients = [threading.Thread(target=client, args=(n,)) for n in range(3)]
        for c in clients:
            c.start()
        try:
            time.sleep(5)  # the traffic under way
            before = reconciles_of(operator, ns)
            time.sleep(window)
            after = reconciles_of(operator, ns)
        finally:
            stop.set()
            for c in clients:
                c.join(timeout=180)
        # The status catches up with what the pod counted, within a few ticks.
        exposition = requests.get(f"{url}/metrics", timeout=10).text
        counted = sum(float(line.rsplit(" ", 1)[1]) for line in exposition.splitlines()
                      if line.startswith("specdec_spec_decode_num_accepted_tokens_total{")
                      and 'language="de"' in line)

        def status_caught_up():
            acceptance = specdep(cluster, ns)["status"].get("acceptance", [])
            shown = sum(a["acceptedTokens"] for a in acceptance if a["language"] == "de")
            return shown == counted
        wait_for("the status to show the pod's accepted tokens", status_caught_up,
                 timeout=6 * interval)
    reconciles, writes = after[0] - before[0], after[1] - before[1]
    children = after[2] - before[2]
    ticks = window / interval
    print(f"{len(served)} requests; in {window:.0f} s: {reconciles} reconciles, {writes} status "
          f"writes, {children} children written; status timer {interval} s ({ticks:.0f} ticks)",
          file=sys.stderr)
    assert len(served) >= 5 and counted > 0, (served, counted)
    # Nothing in the spec or the children changed: no child is applied again.
    assert children == 0, children
    # The timer keeps refreshing (a write only when something changed)...
    assert reconciles >= ticks / 2 and 0 < writes <= reconciles, (reconciles, writes)
    # ...at the timer's rate: a write that woke the next reconcile would
    # double the reconciles at least.
    assert reconciles <= ticks * 1.25 + 2, (reconciles, writes, ticks)


def test_children_changed_by_others_are_set_back_and_unchanged_ones_left_alone(cluster, operator, deployed):
    """The operator writes a child only when it differs from what the spec
    asks for: a scaled Deployment and a deleted Service are set back at
    once, by a write each, while the ticks in between write nothing."""
    ns = deployed
    interval = operator.status_interval_s
    before = reconciles_of(operator, ns)
    time.sleep(2 * interval + 1)
    idle = reconciles_of(operator, ns)
    assert idle[0] - before[0] >= 1 and idle[2] == before[2], (before, idle)
    # `kubectl scale` takes the replicas from the operator...
    cluster("scale", "deployment", NAME, "-n", ns, "--replicas=1")
    wait_for("the operator to set the replicas back",
             lambda: cluster.json("get", "deployment", NAME, "-n", ns)["spec"]["replicas"] == 2,
             timeout=30)
    # ...and a deleted Service comes back.
    uid = cluster.json("get", "service", NAME, "-n", ns)["metadata"]["uid"]
    cluster("delete", "service", NAME, "-n", ns, "--wait=true")
    wait_for("the operator to create the Service again",
             lambda: cluster.exists("service", NAME, "-n", ns)
             and cluster.json("get", "service", NAME, "-n", ns)["metadata"]["uid"] != uid,
             timeout=30)
    restored = reconciles_of(operator, ns)
    # The Deployment and the Service, each written once or twice (a
    # reconcile may run before the watch shows the other's write).
    assert 2 <= restored[2] - idle[2] <= 4, (idle, restored)
    time.sleep(2 * interval + 1)
    after = reconciles_of(operator, ns)
    assert after[0] > restored[0] and after[2] == restored[2], (restored, after)


def test_api_keys_from_a_secret_are_required_by_the_pods_and_metrics_stay_open(
        cluster, operator, namespace, tmp_path):
    """spec.apiKeys: the pods get the Secret's keys (mounted for the server
    only) and require one on /v1/*; the operator still scrapes /metrics."""
    ns = namespace
    cluster("create", "secret", "generic", "llm-keys", "-n", ns,
            "--from-literal=api-keys=sk-team-0123456789")
    obj = yaml.safe_load(SAMPLE.read_text())
    obj["spec"]["replicas"] = 1
    obj["spec"]["apiKeys"] = {"secretName": "llm-keys"}
    cluster("apply", "-n", ns, "-f", "-", input=yaml.safe_dump(obj))
    wait_for("the sample to become Ready", ready_with(cluster, ns, 1), timeout=120)
    pod = pods(cluster, ns)[0]["spec"]
    volume = next(v for v in pod["volumes"] if "secret" in v)
    assert volume["secret"]["secretName"] == "llm-keys"
    assert all(volume["name"] not in [m["name"] for m in c.get("volumeMounts", [])]
               for c in pod["initContainers"])
    with backend_on_pod_ip(cluster, ns, tmp_path) as url:
        import requests
        from openai import AuthenticationError, OpenAI
        body = {"model": NAME, "max_tokens": 8, "temperature": 0, "language": "de",
                "speculative": {"max": 4, "adaptive": False},
                "messages": [{"role": "user", "content": "Übersetze: Guten Morgen, wie geht es dir?"}]}
        refused = requests.post(f"{url}/v1/chat/completions", json=body, timeout=60)
        assert refused.status_code == 401 and refused.json()["error"]["code"] == "invalid_api_key"
        plain = {k: v for k, v in body.items() if k not in ("language", "speculative")}
        extra = {"language": "de", "speculative": body["speculative"]}
        with pytest.raises(AuthenticationError):
            OpenAI(base_url=f"{url}/v1", api_key="sk-other", max_retries=0).chat.completions.create(
                **plain, extra_body=extra)
        client = OpenAI(base_url=f"{url}/v1", api_key="sk-team-0123456789", max_retries=0, timeout=300)
        reply = client.chat.completions.create(**plain, extra_body=extra)
        drafted = reply.usage.model_extra["speculative"]["draft_tokens"]
        assert drafted > 0
        # /metrics is open: the operator reads the acceptance without a key.
        wait_for("status.acceptance from the keyed pod",
                 lambda: any(a["language"] == "de" and a["draftTokens"] == drafted
                             for a in specdep(cluster, ns)["status"].get("acceptance", [])),
                 timeout=30)
