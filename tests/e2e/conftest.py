"""Fixtures of the end-to-end tests: a real `specdec serve` on loopback with
the real models, and a real Prometheus scraping it."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import requests

REPO = Path(__file__).resolve().parents[2]
MODEL_NAME = "qwen-coder-1.5b"
TARGET = "qwen2.5-coder-1.5b-instruct-q4_k_m.gguf"
DRAFTER = "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf"


def model_dir() -> Path:
    out = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "fetch-models"), "--print-dir"],
        check=True, capture_output=True, text=True,
    )
    return Path(out.stdout.strip())


def specdec_binary() -> Path:
    explicit = os.environ.get("SPECDEC_BIN")
    if explicit:
        return Path(explicit)
    target_dir = os.environ.get("CARGO_TARGET_DIR", str(REPO / "target"))
    return Path(target_dir) / "release" / "specdec"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def registry_yaml(models: Path) -> str:
    """German and French share one drafter, Japanese has its own, English and
    anything unrecognised go to prompt lookup, and Spanish has two candidates
    (the German one and lookup) that the engine chooses between round by
    round. The model drafters draft a fixed length (the routing and metrics
    tests need drafts); lookup is adaptive."""
    return f"""
target:
  model: {models / TARGET}
  context: 2048
drafters:
  - name: qwen-euro
    languages: [de, fr, es]
    model: {models / DRAFTER}
    draft: {{ max: 4, adaptive: false }}
  - name: qwen-ja
    languages: [ja]
    model: {models / DRAFTER}
    draft: {{ max: 3, adaptive: false }}
  - name: lookup
    kind: ngram
    languages: [en, es]
    draft: {{ max: 4, min: 2 }}
default: lookup
"""


class Server:
    def __init__(self, url: str, process: subprocess.Popen, registry: Path, log: Path):
        self.url = url
        self.process = process
        self.registry = registry
        self.log = log

    def metrics(self) -> str:
        r = requests.get(f"{self.url}/metrics", timeout=10)
        r.raise_for_status()
        return r.text

    def healthy(self) -> bool:
        return (
            self.process.poll() is None
            and requests.get(f"{self.url}/healthz", timeout=10).status_code == 200
            and requests.get(f"{self.url}/readyz", timeout=10).status_code == 200
        )


@pytest.fixture(scope="session")
def models() -> Path:
    path = model_dir()
    for name in (TARGET, DRAFTER):
        assert (path / name).is_file(), f"{path / name} missing: run scripts/fetch-models"
    return path


@pytest.fixture(scope="session")
def server(models: Path, tmp_path_factory) -> Server:
    binary = specdec_binary()
    assert binary.is_file(), f"{binary} missing: build with cargo build --release"
    work = tmp_path_factory.mktemp("server")
    registry = work / "registry.yaml"
    registry.write_text(registry_yaml(models))
    port = free_port()
    log = work / "server.log"
    process = subprocess.Popen(
        [str(binary), "serve", "--registry", str(registry), "--host", "127.0.0.1",
         "--port", str(port), "--model-name", MODEL_NAME, "--slots", "2",
         "--max-waiting", "2", "--request-timeout", "300"],
        stdout=open(log, "w"), stderr=subprocess.STDOUT,
        env={**os.environ, "SPECDEC_LOG": "info"},
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 180
    while True:
        assert process.poll() is None, f"server exited: {log.read_text()[-3000:]}"
        try:
            if requests.get(f"{url}/readyz", timeout=2).status_code == 200:
                break
        except requests.ConnectionError:
            pass
        assert time.time() < deadline, "server not ready in 180 s"
        time.sleep(0.5)
    yield Server(url, process, registry, log)
    process.terminate()
    try:
        process.wait(timeout=60)
    except subprocess.TimeoutExpired:
        process.kill()


@pytest.fixture(scope="session")
def client(server: Server):
    from openai import OpenAI
    return OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0, timeout=300)


def parse_metrics(text: str) -> dict[tuple[str, frozenset], float]:
    """Prometheus text format to {(name, labels): value}."""
    out = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        name_labels, value = line.rsplit(" ", 1)
        if "{" in name_labels:
            name, rest = name_labels.split("{", 1)
            labels = frozenset(
                tuple(kv.split("=", 1)) for kv in rest.rstrip("}").replace('"', "").split(",") if kv
            )
        else:
            name, labels = name_labels, frozenset()
        out[(name, labels)] = float(value)
    return out


@pytest.fixture(scope="session")
def prometheus(server: Server, tmp_path_factory):
    binary = shutil.which("prometheus")
    assert binary, "prometheus missing: scripts/test installs the Debian package"
    work = tmp_path_factory.mktemp("prometheus")
    port = free_port()
    target = server.url.removeprefix("http://")
    (work / "prometheus.yml").write_text(
        "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n"
        "scrape_configs:\n  - job_name: specdec\n    static_configs:\n"
        f"      - targets: ['{target}']\n"
    )
    process = subprocess.Popen(
        [binary, f"--config.file={work / 'prometheus.yml'}",
         f"--storage.tsdb.path={work / 'data'}", f"--web.listen-address=127.0.0.1:{port}"],
        stdout=open(work / "prometheus.log", "w"), stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 60
    while True:
        assert process.poll() is None, (work / "prometheus.log").read_text()[-3000:]
        try:
            r = requests.get(f"{url}/api/v1/targets", timeout=2)
            active = r.json()["data"]["activeTargets"]
            if active and active[0]["health"] == "up":
                break
        except (requests.ConnectionError, KeyError, ValueError):
            pass
        assert time.time() < deadline, "prometheus did not scrape the server in 60 s"
        time.sleep(0.5)
    yield url
    process.terminate()
    process.wait(timeout=30)
