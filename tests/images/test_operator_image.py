"""The operator image (scripts/images operator): its labels, its numeric
non-root user, and that its binary runs there (it prints the CRD)."""

from __future__ import annotations

import yaml

from conftest import CONTAINER_LIMITS, OCI_LABELS, OPERATOR_IMAGE, RUN_AS, VERSION, podman, require_image


def test_operator_image_labels_and_user():
    image = require_image(OPERATOR_IMAGE, "operator")
    labels = image["Config"]["Labels"]
    for key in OCI_LABELS:
        assert labels.get(f"org.opencontainers.image.{key}"), f"label {key} missing: {labels}"
    assert labels["org.opencontainers.image.version"] == VERSION
    assert image["Config"]["User"] == RUN_AS
    assert image["Config"]["Entrypoint"] == ["specdec-operator"]


def test_operator_binary_runs_in_the_image():
    require_image(OPERATOR_IMAGE, "operator")
    out = podman("run", "--rm", *CONTAINER_LIMITS, OPERATOR_IMAGE, "crd").stdout
    crd = yaml.safe_load(out)
    assert crd["kind"] == "CustomResourceDefinition"
    assert crd["metadata"]["name"] == "speculativedeployments.specdec.io"
    uid = podman("run", "--rm", *CONTAINER_LIMITS, "--entrypoint", "id", OPERATOR_IMAGE, "-u").stdout
    assert uid.strip() == RUN_AS.split(":")[0]
