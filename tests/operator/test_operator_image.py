"""The operator image (scripts/images operator) doing its job: run by podman
as the image's own user, it takes the Lease and reconciles the sample to
Ready on the test cluster, as the chart's pod would run it. (The cluster's API
server listens on loopback, which pods cannot reach, so the container shares
the host's network instead of running in a pod.)"""

from __future__ import annotations

import shutil
import subprocess
import sys

import yaml

from conftest import LEASE_NAMESPACE, REPO, SAMPLE, Operator, condition, instead_of, wait_for

sys.path.insert(0, str(REPO / "tests" / "support"))
from containers import CONTAINER_LIMITS, OPERATOR_IMAGE, PODMAN, RUN_AS, inspect_image, podman  # noqa: E402

KUBECONFIG_IN_CONTAINER = "/etc/specdec/kubeconfig"


class ImageOperator(Operator):
    """`specdec-operator run` in its image instead of the host's binary."""

    def start(self):
        self.container = f"specdec-operator-{self.identity}"
        # The image's user must read it (the admin kubeconfig is the owner's only).
        kubeconfig = self.log.parent / f"kubeconfig-{self.identity}"
        shutil.copyfile(self.kubectl.env["KUBECONFIG"], kubeconfig)
        kubeconfig.chmod(0o644)
        podman("rm", "-f", "--ignore", self.container, check=False)
        self.process = subprocess.Popen(
            [*PODMAN, "run", "--rm", "--name", self.container, "--network", "host", *CONTAINER_LIMITS,
             "-v", f"{kubeconfig}:{KUBECONFIG_IN_CONTAINER}:ro",
             "-e", f"KUBECONFIG={KUBECONFIG_IN_CONTAINER}",
             "-e", "SPECDEC_OPERATOR_LOG=info,specdec_operator=debug",
             OPERATOR_IMAGE, "run", "--listen", f"127.0.0.1:{self.port}", *self.args],
            stdout=open(self.log, "a"), stderr=subprocess.STDOUT,
        )
        wait_for(f"operator {self.identity} /healthz in its image", self.healthy, timeout=60)

    def stop(self):
        super().stop()
        podman("rm", "-f", "--ignore", self.container, check=False)


def test_the_operator_image_reconciles_the_sample_to_ready(cluster, operator, namespace, tmp_path):
    inspect_image(OPERATOR_IMAGE, "operator")

    def start():
        return ImageOperator(cluster, "image-0", tmp_path)
    with instead_of(operator, start) as imaged:
        # It runs as the image's user, not root.
        uid = podman("exec", imaged.container, "id", "-u").stdout.strip()
        assert uid == RUN_AS.split(":")[0], uid
        obj = yaml.safe_load(SAMPLE.read_text())
        cluster("apply", "-n", namespace, "-f", "-", input=yaml.safe_dump(obj))

        def ready():
            o = cluster.json("get", "specdep", obj["metadata"]["name"], "-n", namespace)
            return condition(o, "Ready").get("status") == "True" and o["status"].get("readyReplicas") == 2
        wait_for("the sample Ready under the operator's image", ready, timeout=120)
        assert imaged.metric("specdec_operator_reconcile_errors_total") == 0, imaged.log.read_text()[-3000:]
        lease = cluster.json("get", "lease", "specdec-operator", "-n", LEASE_NAMESPACE)
        assert lease["spec"]["holderIdentity"] == "image-0"
