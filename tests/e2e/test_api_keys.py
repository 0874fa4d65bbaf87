"""API keys: `/v1/*` answers only requests with a configured key, the
official OpenAI client's `api_key=` included; probes and Prometheus stay
open; keys never reach the log."""

from __future__ import annotations

import subprocess

import pytest
import requests

from conftest import TARGET, specdec_binary
from test_own_server import start, stop_and_read_log

KEYS = "# the team's keys\nsk-alpha-0123456789\nsk-beta-9876543210\n"
BODY = {"model": "m", "messages": [{"role": "user", "content": "Say hi."}], "max_tokens": 3, "temperature": 0}


def unauthorized(response):
    assert response.status_code == 401, (response.status_code, response.text)
    assert response.headers["www-authenticate"] == "Bearer"
    error = response.json()["error"]
    assert error["code"] == "invalid_api_key" and error["type"] == "invalid_request_error", error
    assert "sk-" not in error["message"]
    return error


def test_requests_need_a_configured_key_and_probes_stay_open(models, tmp_path):
    keys = tmp_path / "keys"
    keys.write_text(KEYS)
    url, process = start(models, tmp_path, "--api-key-file", str(keys))
    try:
        chat = f"{url}/v1/chat/completions"
        missing = unauthorized(requests.post(chat, json=BODY, timeout=60))
        assert "Authorization: Bearer" in missing["message"]
        unauthorized(requests.post(chat, json=BODY, headers={"authorization": "Bearer sk-wrong"}, timeout=60))
        unauthorized(requests.post(chat, json=BODY, headers={"authorization": "sk-alpha-0123456789"}, timeout=60))
        unauthorized(requests.get(f"{url}/v1/models", timeout=60))
        for path in ("/healthz", "/readyz", "/metrics"):
            assert requests.get(f"{url}{path}", timeout=10).status_code == 200, path

        from openai import AuthenticationError, OpenAI
        for key in ("sk-alpha-0123456789", "sk-beta-9876543210"):
            client = OpenAI(base_url=f"{url}/v1", api_key=key, max_retries=0, timeout=120)
            reply = client.chat.completions.create(**BODY)
            assert reply.usage.completion_tokens >= 1
            assert [m.id for m in client.models.list().data] == ["m"]
        wrong = OpenAI(base_url=f"{url}/v1", api_key="sk-gamma", max_retries=0, timeout=120)
        with pytest.raises(AuthenticationError):
            wrong.chat.completions.create(**BODY)
    finally:
        log = stop_and_read_log(process)
    assert "sk-alpha" not in log and "sk-beta" not in log and "sk-wrong" not in log


def test_keys_from_the_environment(models, tmp_path, monkeypatch):
    monkeypatch.setenv("SPECDEC_API_KEYS", "sk-env-one,sk-env-two")
    url, process = start(models, tmp_path)
    try:
        chat = f"{url}/v1/chat/completions"
        unauthorized(requests.post(chat, json=BODY, timeout=60))
        ok = requests.post(chat, json=BODY, headers={"authorization": "Bearer sk-env-two"}, timeout=120)
        assert ok.status_code == 200, ok.text
    finally:
        stop_and_read_log(process)


@pytest.mark.parametrize("content, message", [
    ("# no key here\n\n", "holds no key"),
    (None, "cannot read the API key file"),
])
def test_a_key_file_without_keys_stops_the_server_with_the_reason(models, tmp_path, content, message):
    """Asked for keys and finding none, the server must not open unprotected."""
    keys = tmp_path / "keys"
    if content is not None:
        keys.write_text(content)
    registry = tmp_path / "registry.yaml"
    registry.write_text(f"target: {{ model: {models / TARGET}, context: 1024 }}\n")
    result = subprocess.run([str(specdec_binary()), "serve", "--registry", str(registry), "--port", "1",
                             "--api-key-file", str(keys)], capture_output=True, text=True, timeout=60)
    assert result.returncode != 0
    assert message in result.stderr, result.stderr
