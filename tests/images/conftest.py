"""What the image tests share: podman with the flags scripts/images uses, the
images' names, the model directory and the host's `specdec`. The tests build
nothing: scripts/images builds the images they check."""

from __future__ import annotations

import json
import os
import shlex
import socket
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
VERSION = tomllib.loads((REPO / "Cargo.toml").read_text())["workspace"]["package"]["version"]
CPU_IMAGE = f"ghcr.io/specdec/specdec:{VERSION}"
OPERATOR_IMAGE = f"ghcr.io/specdec/specdec-operator:{VERSION}"
# The user the images run as (and the operator's pods).
RUN_AS = "65532:65532"
OCI_LABELS = ("title", "description", "licenses", "source", "version", "revision")

# As in scripts/images: runc and cgroupfs work wherever podman does; explicit
# limits, since inherited ones above the host's make a container fail to start.
PODMAN = ["podman", *shlex.split(os.environ.get(
    "SPECDEC_PODMAN_FLAGS", "--runtime runc --cgroup-manager cgroupfs"))]
CONTAINER_LIMITS = ["--ulimit", "nofile=16384:16384", "--ulimit", "nproc=16384:16384"]


def podman(*args: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([*PODMAN, *args], capture_output=True, text=True,
                          check=check, timeout=timeout)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def require_image(name: str, which: str) -> dict:
    """The image's `podman image inspect` record; the test fails when it is missing."""
    found = podman("image", "exists", name, check=False)
    if found.returncode != 0:
        pytest.fail(f"image {name} missing: run scripts/images {which} first")
    return json.loads(podman("image", "inspect", name).stdout)[0]


@pytest.fixture(scope="session")
def models() -> Path:
    out = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "fetch-models"), "--print-dir"],
        check=True, capture_output=True, text=True,
    )
    return Path(out.stdout.strip())


@pytest.fixture(scope="session")
def host_specdec() -> Path:
    explicit = os.environ.get("SPECDEC_BIN")
    if explicit:
        return Path(explicit)
    target_dir = os.environ.get("CARGO_TARGET_DIR", str(REPO / "target"))
    binary = Path(target_dir) / "release" / "specdec"
    assert binary.is_file(), f"{binary} missing: build with cargo build --release"
    return binary
