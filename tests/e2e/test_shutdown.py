"""SIGTERM: the server stops taking requests, finishes the ones in flight, and
exits cleanly. Uses a server of its own (target only) so the shared one stays up."""

import concurrent.futures
import os
import signal
import subprocess
import time

import requests

from conftest import TARGET, free_port, specdec_binary


def test_sigterm_finishes_in_flight_requests(models, tmp_path):
    registry = tmp_path / "registry.yaml"
    registry.write_text(f"target: {{ model: {models / TARGET}, context: 1024 }}\n")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    process = subprocess.Popen(
        [str(specdec_binary()), "serve", "--registry", str(registry), "--port", str(port),
         "--model-name", "m", "--slots", "1"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 120
        while True:
            try:
                if requests.get(f"{url}/readyz", timeout=2).status_code == 200:
                    break
            except requests.ConnectionError:
                pass
            assert process.poll() is None and time.time() < deadline
            time.sleep(0.3)
        body = {"model": "m", "messages": [{"role": "user", "content": "Count from 1 to 30."}],
                "temperature": 0, "max_tokens": 60}
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            in_flight = pool.submit(requests.post, f"{url}/v1/chat/completions", json=body, timeout=120)
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
