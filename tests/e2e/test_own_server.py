"""Behaviours that need a server of their own (target only, one slot), so the
shared one stays up: SIGTERM drains in-flight requests; the per-request
timeout answers 504 and frees the slot."""

import concurrent.futures
import signal
import subprocess
import time

import requests

from conftest import TARGET, free_port, specdec_binary

BODY = {"model": "m", "messages": [{"role": "user", "content": "Count from 1 to 30."}],
        "temperature": 0, "max_tokens": 60}


def start(models, tmp_path, *extra):
    registry = tmp_path / "registry.yaml"
    registry.write_text(f"target: {{ model: {models / TARGET}, context: 1024 }}\n")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    process = subprocess.Popen(
        [str(specdec_binary()), "serve", "--registry", str(registry), "--port", str(port),
         "--model-name", "m", "--slots", "1", *extra],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while True:
        try:
            if requests.get(f"{url}/readyz", timeout=2).status_code == 200:
                return url, process
        except requests.ConnectionError:
            pass
        assert process.poll() is None and time.time() < deadline
        time.sleep(0.3)


def stop_and_read_log(process: subprocess.Popen) -> str:
    """SIGTERM `process` (SIGKILL after 30 s); what it logged."""
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()
    return process.stderr.read()


def test_sigterm_finishes_in_flight_requests(models, tmp_path):
    url, process = start(models, tmp_path)
    try:
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            in_flight = pool.submit(requests.post, f"{url}/v1/chat/completions", json=BODY, timeout=120)
            time.sleep(1.5)
            process.send_signal(signal.SIGTERM)
            response = in_flight.result()
        assert response.status_code == 200
        assert response.json()["usage"]["completion_tokens"] > 10
        assert process.wait(timeout=60) == 0
        assert "shutting down" in process.stderr.read()
    finally:
        if process.poll() is None:
            process.kill()


def test_request_timeout_answers_504_and_frees_the_slot(models, tmp_path):
    url, process = start(models, tmp_path, "--request-timeout", "2")
    try:
        slow = requests.post(f"{url}/v1/chat/completions", json={**BODY, "max_tokens": 500}, timeout=60)
        assert slow.status_code == 504, slow.text
        assert slow.json()["error"]["code"] == "timeout"
        quick = requests.post(f"{url}/v1/chat/completions", json={**BODY, "max_tokens": 2}, timeout=60)
        assert quick.status_code == 200, quick.text
        metrics = requests.get(f"{url}/metrics", timeout=10).text
        assert 'specdec_requests_total{status="504"} 1' in metrics
        assert "specdec_num_requests_running 0" in metrics
    finally:
        process.kill()
