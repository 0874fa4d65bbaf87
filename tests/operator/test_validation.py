"""Must-show 3: the API server refuses invalid objects at apply time with the
rule's message; and state the schema cannot see (a missing claim) makes the
object Degraded with an Event, not a crash loop."""

from __future__ import annotations

import copy

import pytest
import yaml

from conftest import SAMPLE, condition, wait_degraded, wait_for


def sample() -> dict:
    return yaml.safe_load(SAMPLE.read_text())


def apply_sample(cluster, ns: str, name: str, replicas: int, **spec):
    """Apply the sample in `ns` as `name`, with `replicas` and the given spec
    fields."""
    obj = sample()
    obj["metadata"]["name"] = name
    obj["spec"]["replicas"] = replicas
    obj["spec"].update(spec)
    cluster("apply", "-n", ns, "-f", "-", input=yaml.safe_dump(obj))


def with_duplicate_name(obj):
    obj["spec"]["drafters"][1]["name"] = obj["spec"]["drafters"][0]["name"]


def with_language_twice(obj):
    obj["spec"]["drafters"][1]["languages"] = ["*", "de"]


def with_missing_default(obj):
    obj["spec"]["defaultDrafter"] = "nobody"


def with_bad_scheme(obj):
    obj["spec"]["target"]["model"]["uri"] = "s3://bucket/qwen.gguf"


def with_https_without_sha(obj):
    del obj["spec"]["drafters"][0]["model"]["sha256"]


def with_negative_replicas(obj):
    obj["spec"]["replicas"] = -1


def with_gpu_in_resources(obj):
    obj["spec"]["gpus"] = 0
    obj["spec"]["resources"]["limits"]["nvidia.com/gpu"] = "1"


def with_bad_service_type(obj):
    obj["spec"]["service"]["type"] = "ExternalName"


def with_bad_pull_policy(obj):
    obj["spec"]["imagePullPolicy"] = "Sometimes"


def with_size_of_a_claim_file(obj):
    obj["spec"]["target"]["model"] = {"uri": "pvc://models/target.gguf", "sizeBytes": 1000}


CASES = [
    (with_duplicate_name, "drafter names must be unique"),
    (with_language_twice, "a language may be claimed by only one drafter"),
    (with_missing_default, "defaultDrafter must name one of the drafters"),
    (with_bad_scheme, "model uri must start with https://, pvc:// or file:///"),
    (with_https_without_sha, "an https:// model source needs sha256"),
    (with_negative_replicas, "should be greater than or equal to 0"),
    (with_gpu_in_resources, "request GPUs with gpus, not resources"),
    (with_bad_service_type, 'Unsupported value: "ExternalName"'),
    (with_bad_pull_policy, 'Unsupported value: "Sometimes"'),
    (with_size_of_a_claim_file, "sizeBytes is for https:// model sources, which are downloaded"),
]


@pytest.mark.parametrize("mutate,message", CASES, ids=[c[0].__name__ for c in CASES])
def test_api_server_refuses_invalid_objects(cluster, namespace, mutate, message):
    obj = sample()
    mutate(obj)
    result = cluster.run("apply", "-n", namespace, "-f", "-", input=yaml.safe_dump(obj), check=False)
    assert result.returncode != 0, f"accepted: {result.stdout}"
    assert message in result.stderr, result.stderr
    assert not cluster.exists("specdep", obj["metadata"]["name"], "-n", namespace)


def test_the_valid_sample_is_accepted(cluster, namespace):
    result = cluster.run("apply", "--dry-run=server", "-n", namespace, "-f", str(SAMPLE), check=False)
    assert result.returncode == 0, result.stderr


def test_missing_claim_is_degraded_with_an_event_then_recovers(cluster, operator, namespace):
    apply_sample(cluster, namespace, "cached", 1,
                 modelCache={"persistentVolumeClaim": {"claimName": "model-cache"}})

    c = wait_degraded(cluster, namespace, "cached")
    assert c["reason"] == "MissingPersistentVolumeClaim"
    assert "model-cache" in c["message"]
    assert not cluster.exists("deployment", "cached", "-n", namespace)
    events = cluster("get", "events", "-n", namespace, "--field-selector", "involvedObject.name=cached")
    assert "MissingPersistentVolumeClaim" in events and "Warning" in events
    assert operator.process.poll() is None

    # A claim the volume binder can bind (the test cluster has no
    # provisioner): until it binds, the pod cannot be scheduled, which is
    # Degraded too.
    volume = {
        "apiVersion": "v1", "kind": "PersistentVolume",
        "metadata": {"name": f"model-cache-{namespace}"},
        "spec": {"accessModes": ["ReadWriteOnce"], "capacity": {"storage": "4Gi"},
                 "storageClassName": "", "hostPath": {"path": "/var/tmp/model-cache"},
                 "claimRef": {"namespace": namespace, "name": "model-cache"}},
    }
    claim = {
        "apiVersion": "v1", "kind": "PersistentVolumeClaim",
        "metadata": {"name": "model-cache"},
        "spec": {"accessModes": ["ReadWriteOnce"], "storageClassName": "",
                 "resources": {"requests": {"storage": "4Gi"}}},
    }
    cluster("apply", "-f", "-", input=yaml.safe_dump(volume))
    try:
        cluster("apply", "-n", namespace, "-f", "-", input=yaml.safe_dump(claim))

        def recovered():
            o = cluster.json("get", "specdep", "cached", "-n", namespace)
            return (condition(o, "Degraded").get("status") == "False"
                    and condition(o, "Ready").get("status") == "True")
        wait_for("Degraded=False and Ready once the claim exists", recovered, timeout=90)
    finally:
        cluster.run("delete", "persistentvolume", volume["metadata"]["name"], "--wait=false", check=False)
    volumes = cluster.json("get", "deployment", "cached", "-n", namespace)["spec"]["template"]["spec"]["volumes"]
    claims = [v["persistentVolumeClaim"]["claimName"] for v in volumes if "persistentVolumeClaim" in v]
    assert claims == ["model-cache"]


def test_a_read_write_once_cache_for_several_replicas_is_degraded(cluster, operator, namespace):
    claim = {
        "apiVersion": "v1", "kind": "PersistentVolumeClaim",
        "metadata": {"name": "model-cache"},
        "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "4Gi"}}},
    }
    cluster("apply", "-n", namespace, "-f", "-", input=yaml.safe_dump(claim))
    apply_sample(cluster, namespace, "shared", 2,
                 modelCache={"persistentVolumeClaim": {"claimName": "model-cache"}})

    c = wait_degraded(cluster, namespace, "shared")
    assert c["reason"] == "ModelCacheNotShared", c
    assert "ReadWriteMany" in c["message"] and "[ReadWriteOnce]" in c["message"], c
    assert not cluster.exists("deployment", "shared", "-n", namespace)
    # One replica may use it.
    cluster("patch", "specdep", "shared", "-n", namespace, "--type", "merge", "-p", '{"spec": {"replicas": 1}}')
    wait_for("Degraded to clear with one replica",
             lambda: condition(cluster.json("get", "specdep", "shared", "-n", namespace), "Degraded")
             .get("reason") != "ModelCacheNotShared", timeout=30)


def test_an_empty_dir_cache_is_sized_from_the_models_or_refused_when_too_small(
        cluster, operator, namespace):
    """The sample declares its models' sizes: the emptyDir cache is limited
    to fit them, that is requested as node disk, and each download is
    bounded by its size; a given limit below the models' total is Degraded."""
    apply_sample(cluster, namespace, "sized", 1)
    wait_for("the Deployment", lambda: cluster.exists("deployment", "sized", "-n", namespace), timeout=30)
    pod = cluster.json("get", "deployment", "sized", "-n", namespace)["spec"]["template"]["spec"]
    cache = next(v for v in pod["volumes"] if "emptyDir" in v)
    assert cache["emptyDir"]["sizeLimit"] == "1629Mi", cache
    assert pod["containers"][0]["resources"]["requests"]["ephemeral-storage"] == "1629Mi"
    sizes = [c["args"][c["args"].index("--size-bytes") + 1] for c in pod["initContainers"]]
    assert sorted(sizes) == ["1117320768", "491400064"], sizes

    cluster("patch", "specdep", "sized", "-n", namespace, "--type", "merge", "-p",
            '{"spec": {"modelCache": {"emptyDir": {"sizeLimit": "1Gi"}}}}')
    c = wait_degraded(cluster, namespace, "sized")
    assert c["reason"] == "InvalidSpec", c
    assert "sizeLimit 1Gi cannot hold the 1608720832 bytes (1.50 GiB)" in c["message"], c
    # The last valid Deployment is left as it was.
    cache = next(v for v in cluster.json("get", "deployment", "sized", "-n", namespace)
                 ["spec"]["template"]["spec"]["volumes"] if "emptyDir" in v)
    assert cache["emptyDir"]["sizeLimit"] == "1629Mi"
