"""The CPU image (scripts/images cpu) as the operator runs it: as user 65532,
the model directory mounted read-only at /models, serving the OpenAI API on
port 8080 with its default command, and answering exactly what the host's
`specdec` answers."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import pytest
import requests
from openai import OpenAI

from conftest import (CONTAINER_LIMITS, CPU_IMAGE, OCI_LABELS, RUN_AS, VERSION, free_port,
                      podman, require_image)

TARGET = "qwen2.5-coder-1.5b-instruct-q4_k_m.gguf"
DRAFTER = "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf"
# The default registry names the model after the target file.
MODEL = TARGET.removesuffix(".gguf")
# German: routed to the 0.5B drafter of the default registry.
PROMPT = "Übersetze ins Englische: Das Wetter ist heute schön, und wir gehen im Park spazieren."
READY_SECONDS = 300


def wait_ready(url: str, alive, log) -> None:
    deadline = time.time() + READY_SECONDS
    while True:
        assert alive(), f"server exited:\n{log()[-3000:]}"
        try:
            if requests.get(f"{url}/readyz", timeout=2).status_code == 200:
                return
        except requests.ConnectionError:
            pass
        assert time.time() < deadline, f"not ready in {READY_SECONDS} s:\n{log()[-3000:]}"
        time.sleep(0.5)


def chat(url: str):
    client = OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=300)
    return client.chat.completions.create(
        model=MODEL, temperature=0, max_tokens=48,
        messages=[{"role": "user", "content": PROMPT}])


@pytest.fixture(scope="module")
def image() -> dict:
    return require_image(CPU_IMAGE, "cpu")


@pytest.fixture(scope="module")
def container(image, models: Path):
    """The image run with its own entrypoint, command and user; kept after an
    early exit (no --rm) so that its log can be shown, removed at the end."""
    for name in (TARGET, DRAFTER):
        assert (models / name).is_file(), f"{models / name} missing: run scripts/fetch-models"
    name = f"specdec-image-test-{os.getpid()}"
    port = free_port()
    podman("run", "-d", "--name", name, *CONTAINER_LIMITS,
           "-p", f"127.0.0.1:{port}:8080", "-v", f"{models}:/models:ro", CPU_IMAGE)
    try:
        url = f"http://127.0.0.1:{port}"
        wait_ready(
            url,
            alive=lambda: podman("inspect", "--format", "{{.State.Running}}", name).stdout.strip() == "true",
            log=lambda: podman("logs", name, check=False).stderr,
        )
        yield name, url
    finally:
        podman("rm", "-f", "-t", "5", name, check=False)


def test_image_carries_the_oci_labels(image):
    labels = image["Config"]["Labels"]
    for key in OCI_LABELS:
        assert labels.get(f"org.opencontainers.image.{key}"), f"label {key} missing: {labels}"
    assert labels["org.opencontainers.image.version"] == VERSION
    assert labels["org.opencontainers.image.licenses"] == "Apache-2.0"


def test_image_runs_as_numeric_non_root_user(image, container):
    assert image["Config"]["User"] == RUN_AS
    name, _ = container
    assert podman("exec", name, "id", "-u").stdout.strip() == RUN_AS.split(":")[0]
    assert podman("exec", name, "id", "-g").stdout.strip() == RUN_AS.split(":")[1]


def test_chat_completion_equals_the_host_binary(container, models, host_specdec, tmp_path):
    _, url = container
    in_image = chat(url)
    # The host's server, on the same models with the same default registry.
    port = free_port()
    log = tmp_path / "host.log"
    with open(log, "w") as out:
        process = subprocess.Popen(
            [str(host_specdec), "serve", "--host", "127.0.0.1", "--port", str(port)],
            stdout=out, stderr=subprocess.STDOUT,
            env={**os.environ, "SPECDEC_MODEL_DIR": str(models)})
    try:
        host_url = f"http://127.0.0.1:{port}"
        wait_ready(host_url, alive=lambda: process.poll() is None, log=log.read_text)
        on_host = chat(host_url)
    finally:
        process.terminate()
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
    text = in_image.choices[0].message.content
    assert text, "empty completion"
    assert text == on_host.choices[0].message.content
    assert in_image.usage.completion_tokens == on_host.usage.completion_tokens
    assert in_image.choices[0].finish_reason == on_host.choices[0].finish_reason
    # The same registry on both sides: German went to the 0.5B drafter.
    assert in_image.usage.model_extra["speculative"]["drafter"] == \
        on_host.usage.model_extra["speculative"]["drafter"] == "qwen-0.5b"
