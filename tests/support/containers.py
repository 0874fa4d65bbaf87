"""What the tests that run the project's images share: the images' names (as
scripts/images tags them) and podman with the flags scripts/images uses."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
VERSION = tomllib.loads((REPO / "Cargo.toml").read_text())["workspace"]["package"]["version"]
#: The CPU model server: also the operator's default image.
CPU_IMAGE = f"ghcr.io/specdec/specdec:{VERSION}"
OPERATOR_IMAGE = f"ghcr.io/specdec/specdec-operator:{VERSION}"
#: The user the images run as (and the operator's pods).
RUN_AS = "65532:65532"

# As in scripts/images: runc and cgroupfs work wherever podman does; explicit
# limits, since inherited ones above the host's make a container fail to start.
PODMAN = ["podman", *shlex.split(os.environ.get(
    "SPECDEC_PODMAN_FLAGS", "--runtime runc --cgroup-manager cgroupfs"))]
CONTAINER_LIMITS = ["--ulimit", "nofile=16384:16384", "--ulimit", "nproc=16384:16384"]


def podman(*args: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([*PODMAN, *args], capture_output=True, text=True,
                          check=check, timeout=timeout)


def inspect_image(name: str, which: str) -> dict:
    """The image's `podman image inspect` record; an AssertionError naming
    what builds it when podman does not have it."""
    found = podman("image", "exists", name, check=False)
    assert found.returncode == 0, f"image {name} missing: run scripts/images {which} first"
    return json.loads(podman("image", "inspect", name).stdout)[0]
