"""What the image tests share: podman with the flags scripts/images uses, the
images' names, the model directory and the host's `specdec`. The tests build
nothing: scripts/images builds the images they check."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "support"))
from containers import (CONTAINER_LIMITS, CPU_IMAGE, OPERATOR_IMAGE, REPO, RUN_AS,  # noqa: E402,F401
                        VERSION, inspect_image, podman)

OCI_LABELS = ("title", "description", "licenses", "source", "version", "revision")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def require_image(name: str, which: str) -> dict:
    """The image's `podman image inspect` record; the test fails when it is missing."""
    try:
        return inspect_image(name, which)
    except AssertionError as e:
        pytest.fail(str(e))


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
