"""The project's images on the test cluster's real node (a kubelet with
containerd and runc, tests/cluster): `kubectl apply` of a SpeculativeDeployment
in a namespace that enforces Pod Security `restricted` gives a pod whose init
container downloads the model over HTTPS from a store signed by a private CA,
whose server passes its readiness probe, whose acceptance the operator reads,
and which answers the official OpenAI client with the tokens of the host
binary. What goes wrong on the node (a model URL that 404s, a wrong checksum,
an image that does not exist) is on the object's status and in its Events,
and a failed download leaves nothing in the model cache.

The images come from `scripts/images cpu`; the test copies them into the
node's containerd (tests/cluster/import-images)."""

from __future__ import annotations

import hashlib
import os
import socket
import subprocess
import sys
import tomllib
import uuid
from pathlib import Path

import openai
import pytest
import requests
import yaml

from conftest import CLUSTER, REPO, TEST_NAMESPACE_LABEL, condition, target_dir, terminate, wait_for

sys.path.insert(0, str(REPO / "tests" / "support"))
from containers import CPU_IMAGE, VERSION, inspect_image  # noqa: E402
from https_server import make_certificates  # noqa: E402

#: The image the operator gives a CPU SpeculativeDeployment that names none
#: (its --default-image).
SERVER_IMAGE = CPU_IMAGE
#: The real node, and how a pod asks for it: the node is tainted so that the
#: other tests' pods stay on the fake nodes.
REAL_NODE_LABEL = ("specdec.io/node-kind", "real")
REAL_NODE_TAINT = "specdec.io/real-node"
#: The model the real pod serves: the smallest of the project's Qwen models.
MODEL_FILE = "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf"


def cluster_setting(name: str) -> str:
    """A setting of tests/cluster/lib.sh (a path or address of the node)."""
    out = subprocess.run(["bash", "-c", f'source "$1/lib.sh" && printf %s "${name}"', "_", str(CLUSTER)],
                         check=True, capture_output=True, text=True)
    assert out.stdout, f"tests/cluster/lib.sh sets no {name}"
    return out.stdout


def models_dir() -> Path:
    out = subprocess.run([sys.executable, str(REPO / "scripts" / "fetch-models"), "--print-dir"],
                         check=True, capture_output=True, text=True)
    return Path(out.stdout.strip())


def model_sha256() -> tuple[str, int]:
    """sha256 and size of MODEL_FILE, from the project's model list."""
    models = tomllib.loads((REPO / "models.toml").read_text())["models"]
    [model] = [m for m in models.values() if m["file"] == MODEL_FILE]
    return model["sha256"], model["size"]


@pytest.fixture(scope="module")
def real_node(cluster):
    """The real node's name and address, once it is Ready and holds the
    server image."""
    label = "=".join(REAL_NODE_LABEL)
    nodes = cluster.json("get", "nodes", "-l", label)["items"]
    assert len(nodes) == 1, f"expected one node labelled {label} (tests/cluster/up starts it)"
    node = nodes[0]
    ready = condition(node, "Ready")
    assert ready.get("status") == "True", f"node {node['metadata']['name']} is not Ready: {ready}"
    address = next(a["address"] for a in node["status"]["addresses"] if a["type"] == "InternalIP")
    inspect_image(SERVER_IMAGE, "cpu")
    imported = subprocess.run([str(CLUSTER / "import-images"), SERVER_IMAGE],
                              capture_output=True, text=True, timeout=900)
    assert imported.returncode == 0, imported.stderr[-3000:]
    return node["metadata"]["name"], address


@pytest.fixture(scope="module")
def model_store(real_node, tmp_path_factory):
    """An HTTPS model store on the node's address (where pods reach the
    host), its certificate signed by a CA of its own. Yields its URL and the
    CA's certificate."""
    _, address = real_node
    directory = tmp_path_factory.mktemp("model-store")
    root = directory / "www"
    root.mkdir()
    (root / MODEL_FILE).symlink_to(models_dir() / MODEL_FILE)
    (root / "tiny.gguf").write_bytes(os.urandom(2 * 1024 * 1024))
    ca, cert, key = make_certificates(directory / "pki", address)
    with socket.socket() as s:
        s.bind((address, 0))
        port = s.getsockname()[1]
    process = subprocess.Popen(
        [sys.executable, str(REPO / "tests" / "support" / "https_server.py"), "--root", str(root),
         "--bind", address, "--port", str(port), "--cert", str(cert), "--key", str(key)],
        stdout=open(directory / "server.log", "w"), stderr=subprocess.STDOUT,
    )
    url = f"https://{address}:{port}"
    wait_for("the model store", lambda: requests.get(f"{url}/tiny.gguf", timeout=2, verify=str(ca)).ok,
             timeout=30)
    yield url, ca
    terminate(process)


@pytest.fixture
def restricted_namespace(cluster):
    name = f"t-real-{uuid.uuid4().hex[:6]}"
    cluster("create", "namespace", name)
    cluster("label", "namespace", name, f"{TEST_NAMESPACE_LABEL}=true",
            "pod-security.kubernetes.io/enforce=restricted",
            "pod-security.kubernetes.io/enforce-version=latest")
    yield name
    cluster.run("delete", "namespace", name, "--wait=false", check=False)


def on_real_node(spec: dict) -> dict:
    """`spec` with the placement that puts its pods on the real node."""
    spec["nodeSelector"] = {REAL_NODE_LABEL[0]: REAL_NODE_LABEL[1]}
    spec["tolerations"] = [{"key": REAL_NODE_TAINT, "operator": "Exists", "effect": "NoSchedule"}]
    return spec


def apply_ca(cluster, ns: str, ca: Path):
    cluster("create", "configmap", "model-store-ca", "-n", ns, f"--from-file=ca.crt={ca}")


def specdep(name: str, model: dict, **extra) -> dict:
    spec = on_real_node({
        "target": {"model": model, "context": 2048},
        "drafters": [{"name": "lookup", "kind": "ngram", "languages": ["*"]}],
        "replicas": 1,
        "modelCA": {"configMapName": "model-store-ca"},
        "modelCache": {"emptyDir": {}},
        "resources": {"requests": {"cpu": "250m", "memory": "512Mi"}, "limits": {"memory": "3Gi"}},
        **extra,
    })
    return {"apiVersion": "specdec.io/v1alpha1", "kind": "SpeculativeDeployment",
            "metadata": {"name": name}, "spec": spec}


def warning_events(cluster, ns: str, name: str) -> list[dict]:
    return cluster.json("get", "events", "-n", ns, "--field-selector",
                        f"involvedObject.kind=SpeculativeDeployment,involvedObject.name={name},type=Warning")["items"]


def pods_of(cluster, ns: str, name: str) -> list[dict]:
    return cluster.json("get", "pods", "-n", ns, "-l", f"app.kubernetes.io/instance={name}")["items"]


def test_a_restricted_namespace_runs_the_image_and_answers_like_the_host_binary(
        cluster, operator, real_node, model_store, restricted_namespace, tmp_path):
    ns, (node_name, _) = restricted_namespace, real_node
    url, ca = model_store
    sha256, size = model_sha256()
    apply_ca(cluster, ns, ca)
    # No `image`: the operator's default, which must be the image built here.
    obj = specdep("real", {"uri": f"{url}/{MODEL_FILE}", "sha256": sha256, "sizeBytes": size})
    cluster("apply", "-n", ns, "-f", "-", input=yaml.safe_dump(obj))

    def ready():
        o = cluster.json("get", "specdep", "real", "-n", ns)
        degraded = condition(o, "Degraded")
        assert degraded.get("status") != "True", degraded
        return condition(o, "Ready").get("status") == "True" and o
    wait_for("the SpeculativeDeployment Ready on the real node", ready, timeout=600, interval=2)

    [pod] = pods_of(cluster, ns, "real")
    assert pod["spec"]["nodeName"] == node_name
    [fetch] = pod["status"]["initContainerStatuses"]
    assert fetch["state"]["terminated"]["exitCode"] == 0, fetch
    [server] = pod["status"]["containerStatuses"]
    assert server["ready"] and server["image"].endswith(SERVER_IMAGE), server
    # The kubelet ran it as the pod asks (Pod Security admitted it).
    assert pod["spec"]["securityContext"]["runAsUser"] == 65532
    assert "downloaded" in cluster("logs", "-n", ns, pod["metadata"]["name"], "-c", fetch["name"])

    # The same request to the pod and to the host binary serving the same
    # registry: the same tokens.
    registry_name = next(v["configMap"]["name"] for v in pod["spec"]["volumes"] if v["name"] == "registry")
    registry = tmp_path / "registry.yaml"
    registry.write_text(cluster.json("get", "configmap", registry_name, "-n", ns)["data"]["registry.yaml"])
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    host = subprocess.Popen(
        [str(target_dir() / "release" / "specdec"), "serve", "--registry", str(registry),
         "--host", "127.0.0.1", "--port", str(port), "--model-name", "real"],
        stdout=open(tmp_path / "host.log", "w"), stderr=subprocess.STDOUT,
        env={**os.environ, "SPECDEC_MODEL_DIR": str(models_dir())},
    )
    try:
        wait_for("the host server", lambda: host.poll() is None
                 and requests.get(f"http://127.0.0.1:{port}/readyz", timeout=2).status_code == 200,
                 timeout=300)
        messages = [{"role": "user", "content": "Write a Python function that adds two numbers."}]
        answers = []
        for base in (f"http://{pod['status']['podIP']}:8080/v1", f"http://127.0.0.1:{port}/v1"):
            client = openai.OpenAI(base_url=base, api_key="unused", timeout=300)
            answers.append(client.chat.completions.create(
                model="real", messages=messages, temperature=0, max_tokens=48))
        in_pod, on_host = answers
        assert in_pod.choices[0].message.content == on_host.choices[0].message.content
        assert in_pod.usage.completion_tokens == on_host.usage.completion_tokens == 48
        assert in_pod.usage.model_extra["speculative"]["drafter"] == "lookup"
    finally:
        terminate(host)

    # The operator reads acceptance from the pod's /metrics.
    def acceptance():
        return cluster.json("get", "specdep", "real", "-n", ns).get("status", {}).get("acceptance")
    reported = wait_for("acceptance in the status", acceptance, timeout=60)
    assert reported[0]["drafter"] == "lookup", reported


def cache_dir_of(pod: dict) -> Path:
    """The pod's emptyDir model cache on the node's disk."""
    root = Path(cluster_setting("KUBELET_ROOT"))
    return root / "pods" / pod["metadata"]["uid"] / "volumes" / "kubernetes.io~empty-dir" / "model-cache"


def test_download_failures_and_a_missing_image_are_on_the_status_and_in_events(
        cluster, operator, real_node, model_store, restricted_namespace):
    ns = restricted_namespace
    url, ca = model_store
    apply_ca(cluster, ns, ca)
    tiny_bytes = requests.get(f"{url}/tiny.gguf", timeout=10, verify=str(ca)).content
    cases = {
        "missing-model": (specdep("missing-model", {"uri": f"{url}/absent.gguf", "sha256": "0" * 64}),
                          "InitContainerFailed", "the server answered HTTP 404"),
        "wrong-checksum": (specdep("wrong-checksum", {"uri": f"{url}/tiny.gguf", "sha256": "1" * 64,
                                                      "sizeBytes": len(tiny_bytes)}),
                           "InitContainerFailed", "checksum mismatch"),
        "no-image": (specdep("no-image", {"uri": f"{url}/tiny.gguf",
                                          "sha256": hashlib.sha256(tiny_bytes).hexdigest()},
                             image=f"ghcr.io/specdec/specdec:{VERSION}-absent"),
                     "ImagePull", f"ghcr.io/specdec/specdec:{VERSION}-absent"),
    }
    for obj, _, _ in cases.values():
        cluster("apply", "-n", ns, "-f", "-", input=yaml.safe_dump(obj))

    for name, (_, reason, detail) in cases.items():
        def degraded():
            c = condition(cluster.json("get", "specdep", name, "-n", ns), "Degraded")
            return c.get("status") == "True" and c.get("reason", "").startswith(("InitContainer", "ErrImage", "ImagePull")) and c
        c = wait_for(f"{name} Degraded by its pod", degraded, timeout=180, interval=2)
        if reason == "ImagePull":
            assert c["reason"] in ("ErrImagePull", "ImagePullBackOff"), c
        else:
            assert c["reason"] == reason, c
        assert detail in c["message"], c
        o = cluster.json("get", "specdep", name, "-n", ns)
        assert condition(o, "Ready").get("status") == "False", o["status"]
        wait_for(f"a Warning Event for {name}",
                 lambda: any(e["reason"] == c["reason"] and detail in e["message"]
                             for e in warning_events(cluster, ns, name)), timeout=60)

    # A failed download leaves nothing but its lock in the pod's cache.
    for name in ("missing-model", "wrong-checksum"):
        [pod] = pods_of(cluster, ns, name)
        left = sorted(p.name for p in cache_dir_of(pod).iterdir())
        assert all(n.endswith(".lock") for n in left), (name, left)
