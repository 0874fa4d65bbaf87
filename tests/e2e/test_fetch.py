"""`specdec fetch` (what the operator's init containers run) against a real
HTTP server on loopback: verified downloads, idempotence, refusals."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

from conftest import REPO, free_port, specdec_binary

sys.path.insert(0, str(REPO / "tests" / "support"))
from https_server import make_certificates  # noqa: E402


def wait_until_serving(url: str, **get_options):
    """Wait (up to 10 s) until the server at `url` accepts connections."""
    for _ in range(100):
        try:
            requests.get(url, timeout=1, **get_options)
            return
        except requests.ConnectionError:
            time.sleep(0.1)


@pytest.fixture
def http_server(tmp_path):
    root = tmp_path / "www"
    (root / "models").mkdir(parents=True)
    payload = os.urandom(3 * 1024 * 1024 + 17)
    (root / "models" / "tiny.gguf").write_bytes(payload)
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1", "--directory", str(root)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    wait_until_serving(url)
    yield url, payload
    process.terminate()
    process.wait(timeout=10)


@pytest.fixture
def https_server(tmp_path):
    """A model store whose certificate a private CA signed; yields its URL,
    the file it serves and the CA's certificate."""
    root = tmp_path / "www-tls"
    (root / "models").mkdir(parents=True)
    payload = os.urandom(1024 * 1024 + 5)
    (root / "models" / "tiny.gguf").write_bytes(payload)
    ca, cert, key = make_certificates(tmp_path / "pki", "127.0.0.1")
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, str(REPO / "tests" / "support" / "https_server.py"), "--root", str(root),
         "--bind", "127.0.0.1", "--port", str(port), "--cert", str(cert), "--key", str(key)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    url = f"https://127.0.0.1:{port}"
    wait_until_serving(url, verify=str(ca))
    yield url, payload, ca
    process.terminate()
    process.wait(timeout=10)


def fetch(url: str, sha256: str, dest: Path, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(specdec_binary()), "fetch", "--url", url, "--sha256", sha256, "--dir", str(dest), *extra],
        capture_output=True, text=True, timeout=120,
    )


def test_downloads_verifies_and_is_idempotent(http_server, tmp_path):
    url, payload = http_server
    sha = hashlib.sha256(payload).hexdigest()
    dest = tmp_path / "cache"
    first = fetch(f"{url}/models/tiny.gguf", sha, dest)
    assert first.returncode == 0, first.stderr
    assert "downloaded" in first.stdout
    assert (dest / "tiny.gguf").read_bytes() == payload
    second = fetch(f"{url}/models/tiny.gguf", sha, dest)
    assert second.returncode == 0 and "already present" in second.stdout
    # A corrupted cached file is replaced by a verified download.
    (dest / "tiny.gguf").write_bytes(b"corrupt")
    third = fetch(f"{url}/models/tiny.gguf", sha, dest)
    assert third.returncode == 0 and "downloaded" in third.stdout
    assert (dest / "tiny.gguf").read_bytes() == payload


def test_checksum_mismatch_keeps_nothing(http_server, tmp_path):
    url, _ = http_server
    dest = tmp_path / "cache"
    result = fetch(f"{url}/models/tiny.gguf", "0" * 64, dest)
    assert result.returncode != 0
    assert "checksum mismatch" in result.stderr
    # Only the (empty) lock file stays: removing it could let two fetches
    # hold "the" lock at once.
    assert [p.name for p in dest.iterdir()] == [".tiny.gguf.lock"]
    assert (dest / ".tiny.gguf.lock").stat().st_size == 0


def test_a_declared_size_bounds_the_download(http_server, tmp_path):
    """The operator sizes an emptyDir cache from the declared sizes: a file
    larger than declared is stopped before it fills the disk, a smaller one
    fails like a checksum mismatch, and neither leaves anything behind."""
    url, payload = http_server
    sha = hashlib.sha256(payload).hexdigest()
    dest = tmp_path / "cache"
    model = f"{url}/models/tiny.gguf"
    too_small = fetch(model, sha, dest, "--size-bytes", str(len(payload) - 1))
    assert too_small.returncode != 0
    assert f"larger than its declared size of {len(payload) - 1} bytes" in too_small.stderr
    too_large = fetch(model, sha, dest, "--size-bytes", str(len(payload) + 1))
    assert too_large.returncode != 0
    assert f"got {len(payload)} bytes, but the file was declared to have {len(payload) + 1}" in too_large.stderr
    assert [p.name for p in dest.iterdir()] == [".tiny.gguf.lock"]
    exact = fetch(model, sha, dest, "--size-bytes", str(len(payload)))
    assert exact.returncode == 0 and "downloaded" in exact.stdout, exact.stderr
    assert (dest / "tiny.gguf").read_bytes() == payload


def test_a_private_ca_is_trusted_only_when_given(https_server, tmp_path):
    """An https:// model store signed by a private CA: refused with the
    public roots, downloaded with its CA bundle; a bundle without a
    certificate is refused before anything is downloaded."""
    url, payload, ca = https_server
    sha = hashlib.sha256(payload).hexdigest()
    dest = tmp_path / "cache"
    model = f"{url}/models/tiny.gguf"
    untrusted = fetch(model, sha, dest)
    assert untrusted.returncode != 0
    assert "certificate" in untrusted.stderr.lower() or "UnknownIssuer" in untrusted.stderr, untrusted.stderr
    assert not (dest / "tiny.gguf").exists()
    not_a_bundle = tmp_path / "empty.pem"
    not_a_bundle.write_text("no certificates here\n")
    refused = fetch(model, sha, dest, "--ca-file", str(not_a_bundle))
    assert refused.returncode != 0
    assert f"CA bundle {not_a_bundle}: holds no PEM certificate" in refused.stderr
    trusted = subprocess.run(
        [str(specdec_binary()), "fetch", "--url", model, "--sha256", sha, "--dir", str(dest)],
        capture_output=True, text=True, timeout=120, env={**os.environ, "SPECDEC_FETCH_CA_FILE": str(ca)},
    )
    assert trusted.returncode == 0 and "downloaded" in trusted.stdout, trusted.stderr
    assert (dest / "tiny.gguf").read_bytes() == payload


def test_refuses_bad_arguments_and_missing_files(http_server, tmp_path):
    url, payload = http_server
    sha = hashlib.sha256(payload).hexdigest()
    dest = tmp_path / "cache"
    bad_sha = fetch(f"{url}/models/tiny.gguf", "abc", dest)
    assert bad_sha.returncode != 0 and "64 hexadecimal digits" in bad_sha.stderr
    missing = fetch(f"{url}/models/absent.gguf", sha, dest)
    assert missing.returncode != 0 and "404" in missing.stderr
    assert not (dest / "absent.gguf").exists()
    scheme = fetch("ftp://127.0.0.1/x.gguf", sha, dest)
    assert scheme.returncode != 0 and "http:// and https://" in scheme.stderr


def test_concurrent_fetches_of_one_file_download_it_once(http_server, tmp_path):
    """Pods starting together on a shared cache: each fetch writes a
    temporary file of its own under a lock, so one downloads and the others
    find its verified file; the next start trusts the recorded checksum."""
    url, payload = http_server
    sha = hashlib.sha256(payload).hexdigest()
    dest = tmp_path / "shared"
    command = [str(specdec_binary()), "fetch", "--url", f"{url}/models/tiny.gguf",
               "--sha256", sha, "--dir", str(dest)]
    processes = [subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                 for _ in range(4)]
    outputs = [p.communicate(timeout=120) for p in processes]
    assert all(p.returncode == 0 for p in processes), outputs
    downloaded = sum("downloaded" in out for out, _ in outputs)
    present = sum("already present" in out for out, _ in outputs)
    assert (downloaded, present) == (1, 3), outputs
    assert (dest / "tiny.gguf").read_bytes() == payload
    assert not list(dest.glob("*.partial")), list(dest.iterdir())
    record = (dest / ".tiny.gguf.sha256").read_text().split()
    assert record[0] == sha
    # A file changed behind the record's back is hashed again, and replaced.
    (dest / "tiny.gguf").write_bytes(payload[:-1] + b"x")
    again = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert again.returncode == 0 and "downloaded" in again.stdout, again.stdout + again.stderr
    assert (dest / "tiny.gguf").read_bytes() == payload
