"""The Helm chart, for real: `helm lint --strict` passes and its values schema
refuses wrong values; what it renders passes the API server's validation
(and the restricted Pod Security Standard); and `helm install` gives an
operator that, run with the chart's arguments and its ServiceAccount's token,
reconciles the sample to Ready, that `helm upgrade` changes, and that `helm
uninstall` removes, all but the CRD."""

from __future__ import annotations

import json
import os
import subprocess
import uuid
from pathlib import Path

import pytest
import yaml

from conftest import (CHART, CRDS, SAMPLE, TEST_NAMESPACE_LABEL, Kubectl, Operator, cluster_bin,
                      condition, instead_of, service_account_kubectl, wait_for)

CHART_META = yaml.safe_load((CHART / "Chart.yaml").read_text())
#: The labels every object of a release named "rel" carries.
STANDARD_LABELS = {
    "app.kubernetes.io/name": "specdec-operator",
    "app.kubernetes.io/instance": "rel",
    "app.kubernetes.io/version": CHART_META["appVersion"],
    "app.kubernetes.io/managed-by": "Helm",
    "helm.sh/chart": f"specdec-operator-{CHART_META['version']}",
}
#: Pod Security admission labels: refuse pods, and warn about workloads,
#: that break the "restricted" standard.
RESTRICTED = ["pod-security.kubernetes.io/enforce=restricted", "pod-security.kubernetes.io/warn=restricted"]
SCHEMA_REFUSED = "values don't meet the specifications of the schema"


class Helm:
    """The helm built beside the cluster's binaries, with its own cache,
    config and data directories."""

    def __init__(self, home: Path, kubectl: Kubectl | None = None):
        self.binary = cluster_bin() / "helm"
        env = kubectl.env if kubectl else {k: v for k, v in os.environ.items() if k != "KUBECONFIG"}
        self.env = {**env, **{f"HELM_{d}_HOME": str(home / d.lower()) for d in ("CACHE", "CONFIG", "DATA")}}

    def run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        result = subprocess.run([str(self.binary), *args], capture_output=True, text=True,
                                env=self.env, timeout=300)
        if check and result.returncode != 0:
            raise AssertionError(f"helm {' '.join(args)} failed ({result.returncode}):\n"
                                 f"{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
        return result

    def __call__(self, *args: str) -> str:
        return self.run(*args).stdout

    def template(self, *args: str) -> list[dict]:
        return [d for d in yaml.safe_load_all(self("template", "rel", str(CHART), *args)) if d]


@pytest.fixture
def offline_helm(tmp_path) -> Helm:
    return Helm(tmp_path / "helm")


@pytest.fixture
def helm(cluster, tmp_path) -> Helm:
    return Helm(tmp_path / "helm", cluster)


@pytest.fixture
def workloads(cluster):
    """A second test namespace: where SpeculativeDeployments go."""
    name = f"t-{uuid.uuid4().hex[:8]}"
    cluster("create", "namespace", name)
    cluster("label", "namespace", name, f"{TEST_NAMESPACE_LABEL}=true")
    yield name
    cluster.run("delete", "namespace", name, "--wait=false", check=False)


# --- without a cluster -----------------------------------------------------

def test_the_charts_crd_is_the_generated_one():
    chart_crds = sorted(p.name for p in (CHART / "crds").iterdir())
    assert chart_crds == sorted(p.name for p in CRDS.glob("*.yaml"))
    for name in chart_crds:
        assert (CHART / "crds" / name).read_bytes() == (CRDS / name).read_bytes(), \
            f"charts/specdec-operator/crds/{name} differs from crds/{name}: copy it over"


#: Values that turn every optional part on, so that lint and the API server
#: see all of the templates.
EVERYTHING = ["--set", "watchNamespace=work", "--set", "serviceMonitor.enabled=true",
              "--set", "serviceMonitor.labels.release=kube-prometheus-stack",
              "--set", "imagePullSecrets[0].name=regcred"]


@pytest.mark.parametrize("values", [[], EVERYTHING], ids=["default", "everything"])
def test_lint_is_clean_in_strict_mode(offline_helm, values):
    out = offline_helm.run("lint", "--strict", str(CHART), *values, check=False)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "[WARNING]" not in out.stdout and "[ERROR]" not in out.stdout, out.stdout
    assert "1 chart(s) linted, 0 chart(s) failed" in out.stdout


@pytest.mark.parametrize("values, message", [
    ({"replicas": "two"}, "at '/replicas': got string, want integer"),
    ({"statusInterval": 0}, "at '/statusInterval': minimum: got 0, want 1"),
    ({"serviceMonitor": {"enabled": "yes"}}, "at '/serviceMonitor/enabled': got string, want boolean"),
    ({"image": {"pullPolicy": "Sometimes"}}, "at '/image/pullPolicy': value must be one of"),
    ({"imagePullSecrets": ["regcred"]}, "at '/imagePullSecrets/0': got string, want object"),
    ({"watchNamespace": "Team_A"}, "at '/watchNamespace': 'Team_A' does not match pattern"),
    ({"replica": 2}, "additional properties 'replica' not allowed"),
    ({"serverImages": {"gpu": "x"}}, "additional properties 'gpu' not allowed"),
], ids=["string-for-integer", "below-minimum", "string-for-boolean", "not-in-enum",
        "string-for-object", "not-a-namespace", "misspelt-key", "misspelt-image-kind"])
def test_the_schema_refuses_wrong_values(offline_helm, tmp_path, values, message):
    bad = tmp_path / "values.yaml"
    bad.write_text(yaml.safe_dump(values))
    for command in (["lint", "--strict", str(CHART)], ["template", "rel", str(CHART)]):
        out = offline_helm.run(*command, "-f", str(bad), check=False)
        assert out.returncode != 0, f"helm {command[0]} accepted {values}"
        text = out.stdout + out.stderr
        assert SCHEMA_REFUSED in text and message in text, text


def test_every_object_has_the_standard_labels(offline_helm):
    for values in ([], EVERYTHING):
        objects = offline_helm.template(*values)
        assert objects
        for o in objects:
            labels = o["metadata"].get("labels", {})
            assert labels.items() >= STANDARD_LABELS.items(), (o["kind"], o["metadata"]["name"], labels)
        pod = next(o for o in objects if o["kind"] == "Deployment")["spec"]["template"]
        assert pod["metadata"]["labels"].items() >= STANDARD_LABELS.items()


def test_replicas_prefer_different_nodes_unless_affinity_is_given(offline_helm):
    def pod_spec(*values):
        return next(o for o in offline_helm.template(*values) if o["kind"] == "Deployment")["spec"]["template"]

    default = pod_spec()
    terms = default["spec"]["affinity"]["podAntiAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"]
    assert [t["podAffinityTerm"]["topologyKey"] for t in terms] == ["kubernetes.io/hostname"]
    selector = terms[0]["podAffinityTerm"]["labelSelector"]["matchLabels"]
    assert default["metadata"]["labels"].items() >= selector.items(), "the anti-affinity misses the replicas"
    given = pod_spec("--set", "affinity.nodeAffinity.requiredDuringSchedulingIgnoredDuringExecution"
                     ".nodeSelectorTerms[0].matchExpressions[0].key=pool",
                     "--set", "affinity.nodeAffinity.requiredDuringSchedulingIgnoredDuringExecution"
                     ".nodeSelectorTerms[0].matchExpressions[0].operator=Exists")
    assert list(given["spec"]["affinity"]) == ["nodeAffinity"]


def test_server_images_reach_the_operators_arguments_only_when_set(offline_helm):
    def args(*values):
        deployment = next(o for o in offline_helm.template(*values) if o["kind"] == "Deployment")
        return deployment["spec"]["template"]["spec"]["containers"][0]["args"]

    # Unset: the operator's own defaults, which match its version.
    assert not [a for a in args() if a.startswith("--default-")]
    given = args("--set", "serverImages.cpu=registry.example/specdec:1.2",
                 "--set", "serverImages.cuda=registry.example/specdec:1.2-cuda")
    assert "--default-image=registry.example/specdec:1.2" in given
    assert "--default-cuda-image=registry.example/specdec:1.2-cuda" in given


# --- against the test control plane ----------------------------------------

@pytest.mark.parametrize("mode", ["all-namespaces", "watch-namespace", "service-monitor"])
def test_rendered_chart_passes_server_side_dry_run(cluster, helm, namespace, workloads, mode, request):
    cluster("label", "namespace", namespace, *RESTRICTED)
    values = []
    if mode == "watch-namespace":
        values = ["--set", f"watchNamespace={workloads}"]
    elif mode == "service-monitor":
        request.getfixturevalue("service_monitor_crd")
        values = ["--set", "serviceMonitor.enabled=true", "--set", "serviceMonitor.labels.release=kps"]
    manifest = helm("template", "rel", str(CHART), "-n", namespace, *values)
    objects = [o for o in yaml.safe_load_all(manifest) if o]
    out = cluster.run("apply", "--dry-run=server", "-f", "-", input=manifest, check=False)
    assert out.returncode == 0, out.stderr
    assert "PodSecurity" not in out.stderr, out.stderr
    assert out.stdout.count("(server dry run)") == len(objects), out.stdout

    kinds = {(o["kind"], o["metadata"].get("namespace")) for o in objects}
    if mode == "watch-namespace":
        assert ("Role", workloads) in kinds and ("RoleBinding", workloads) in kinds
        assert not {k for k, _ in kinds} & {"ClusterRole", "ClusterRoleBinding"}
        deployment = next(o for o in objects if o["kind"] == "Deployment")
        assert f"--namespace={workloads}" in container_args(deployment)
    else:
        assert ("ClusterRole", None) in kinds and ("ClusterRoleBinding", None) in kinds
    assert (("ServiceMonitor", namespace) in kinds) == (mode == "service-monitor")


def container_args(deployment: dict) -> list[str]:
    [container] = deployment["spec"]["template"]["spec"]["containers"]
    return container["args"]


def operator_command(deployment: dict, namespace: str, identity: str) -> tuple[list[str], dict[str, str]]:
    """`run`'s arguments less --listen (the test picks the address) and the
    environment of the Deployment's container, with the downward API
    resolved as the kubelet would for a pod named `identity`."""
    [container] = deployment["spec"]["template"]["spec"]["containers"]
    assert "command" not in container, "the test runs the binary with the container's args only"
    assert container["args"][0] == "run", container["args"]
    args = [a for a in container["args"][1:] if not a.startswith("--listen=")]
    assert len(args) == len(container["args"]) - 2, f"expected one --listen=ADDRESS: {container['args']}"
    fields = {"metadata.name": identity, "metadata.namespace": namespace}
    env = {}
    for var in container.get("env", []):
        env[var["name"]] = var["value"] if "value" in var else fields[var["valueFrom"]["fieldRef"]["fieldPath"]]
    return args, env


def owned_configmap(owner: dict) -> str:
    """A ConfigMap whose owner reference blocks `owner`'s deletion, as a
    controller's children do."""
    return json.dumps({
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": "owned", "ownerReferences": [{
            "apiVersion": owner["apiVersion"], "kind": owner["kind"], "name": owner["metadata"]["name"],
            "uid": owner["metadata"]["uid"], "controller": True, "blockOwnerDeletion": True}]},
    })


def can_i(cluster: Kubectl, account: str, verb: str, resource: str, *args: str) -> bool:
    out = cluster.run("auth", "can-i", verb, resource, f"--as={account}", *args, check=False)
    assert out.stdout.strip() in ("yes", "no"), out.stdout + out.stderr
    return out.stdout.strip() == "yes"


def test_install_reconcile_upgrade_uninstall(cluster, operator, helm, namespace, workloads, tmp_path):
    release = f"specdec-{namespace}"
    cluster("label", "namespace", namespace, *RESTRICTED)
    bad = tmp_path / "bad.yaml"
    bad.write_text("replicas: two\n")
    refused = helm.run("install", release, str(CHART), "-n", namespace, "-f", str(bad), check=False)
    assert refused.returncode != 0 and SCHEMA_REFUSED in refused.stderr, refused.stderr
    assert json.loads(helm("list", "-n", namespace, "-a", "-o", "json")) == []

    try:
        installed = helm("install", release, str(CHART), "-n", namespace, "--wait", "--timeout", "120s")
        assert "STATUS: deployed" in installed and "NOTES:" in installed, installed
        assert "kubectl get specdep -n NAMESPACE" in installed, installed
        # Its pods passed the namespace's restricted Pod Security admission.
        deployment = cluster.json("get", "deployment", release, "-n", namespace)
        assert deployment["status"].get("readyReplicas") == 2, deployment["status"]

        account = f"system:serviceaccount:{namespace}:{release}"
        assert not can_i(cluster, account, "get", "secrets", "-n", workloads)
        assert not can_i(cluster, account, "list", "secrets", "--all-namespaces")
        assert not can_i(cluster, account, "delete", "speculativedeployments.specdec.io", "-n", workloads)
        assert not can_i(cluster, account, "create", "leases.coordination.k8s.io", "-n", workloads)
        assert can_i(cluster, account, "update", "speculativedeployments.specdec.io",
                     "--subresource=finalizers", "-n", workloads)
        assert can_i(cluster, account, "patch", "speculativedeployments.specdec.io",
                     "--subresource=status", "-n", workloads)
        assert can_i(cluster, account, "create", "deployments.apps", "-n", workloads)
        assert can_i(cluster, account, "update", "leases.coordination.k8s.io", "-n", namespace)

        # The chart's pods run no binary under kwok: the operator runs here,
        # as the chart's pod would, with its arguments and its token.
        as_operator = service_account_kubectl(cluster, namespace, release, tmp_path)
        args, env = operator_command(deployment, namespace, "chart-0")

        def start():
            return Operator(as_operator, "chart-0", tmp_path, args=args, env=env)
        with instead_of(operator, start) as charted:
            cluster("apply", "-n", workloads, "-f", str(SAMPLE))

            def ready():
                o = cluster.json("get", "specdep", "qwen-coder", "-n", workloads)
                return condition(o, "Ready").get("status") == "True" and o["status"]["readyReplicas"] == 2
            wait_for("the sample Ready under the installed chart", ready, timeout=120)
            assert charted.metric("specdec_operator_reconcile_errors_total") == 0, charted.log.read_text()[-3000:]
            lease = cluster.json("get", "lease", "specdec-operator", "-n", namespace)
            assert lease["spec"]["holderIdentity"] == "chart-0"

        # An owner reference that blocks its owner's deletion needs `update`
        # on the owner's finalizers (OwnerReferencesPermissionEnforcement):
        # the chart's account may set one, an account without it may not.
        owned = owned_configmap(cluster.json("get", "specdep", "qwen-coder", "-n", workloads))
        as_operator("create", "--dry-run=server", "-n", workloads, "-f", "-", input=owned)
        cluster("create", "role", "configmap-writer", "--verb=create", "--resource=configmaps", "-n", workloads)
        cluster("create", "rolebinding", "configmap-writer", "--role=configmap-writer",
                "--user=no-finalizers", "-n", workloads)
        refused = cluster.run("create", "--dry-run=server", "--as=no-finalizers", "-n", workloads,
                              "-f", "-", input=owned, check=False)
        assert refused.returncode != 0 and "cannot set blockOwnerDeletion" in refused.stderr, refused.stderr

        helm("upgrade", release, str(CHART), "-n", namespace, "--reuse-values",
             "--set", "statusInterval=7", "--wait", "--timeout", "120s")
        status = json.loads(helm("status", release, "-n", namespace, "-o", "json"))
        assert status["version"] == 2 and status["info"]["status"] == "deployed"
        args = container_args(cluster.json("get", "deployment", release, "-n", namespace))
        assert "--status-interval=7" in args and "--status-interval=30" not in args, args
    finally:
        uninstalled = helm.run("uninstall", release, "-n", namespace, "--wait", "--timeout", "120s", check=False)
    assert uninstalled.returncode == 0, uninstalled.stderr

    assert not cluster.exists("clusterrole", release) and not cluster.exists("clusterrolebinding", release)
    left = cluster("get", "clusterroles,clusterrolebindings", "-l", f"app.kubernetes.io/instance={release}",
                   "-o", "name")
    assert left.strip() == "", left
    # All that stays in the release's namespace is what Kubernetes put there
    # (Helm's record of the release, Secrets, goes too).
    left = set(cluster("get", "deployments,services,serviceaccounts,configmaps,roles,rolebindings,secrets,leases",
                       "-n", namespace, "-o", "name").split())
    assert left <= {"serviceaccount/default", "configmap/kube-root-ca.crt",
                    "lease.coordination.k8s.io/specdec-operator"}, left
    # The CRD stays, and with it the SpeculativeDeployments.
    assert cluster.exists("crd", "speculativedeployments.specdec.io")
    assert cluster.exists("specdep", "qwen-coder", "-n", workloads)
