"""The official OpenAI Python SDK against specdec, and greedy output over HTTP
equal to the engine's own greedy output."""

import json
import subprocess

from conftest import DRAFTER, MODEL_NAME, TARGET, specdec_binary

GERMAN = ("Übersetze ins Englische: Das Debian-Projekt pflegt ein freies Betriebssystem. "
          "Freiwillige veröffentlichen etwa alle zwei Jahre eine neue stabile Version.")


def test_models_lists_the_served_model(client):
    assert [m.id for m in client.models.list().data] == [MODEL_NAME]


def test_chat_and_streamed_chat_agree(client):
    messages = [{"role": "user", "content": GERMAN}]
    whole = client.chat.completions.create(
        model=MODEL_NAME, messages=messages, temperature=0, max_tokens=40)
    text = whole.choices[0].message.content
    assert "Debian" in text
    assert whole.choices[0].finish_reason in ("stop", "length")
    assert whole.usage.completion_tokens > 0

    pieces, usage, finish = [], None, None
    for chunk in client.chat.completions.create(
            model=MODEL_NAME, messages=messages, temperature=0, max_tokens=40,
            stream=True, stream_options={"include_usage": True}):
        if chunk.choices:
            delta = chunk.choices[0].delta
            if delta.content:
                pieces.append(delta.content)
            finish = chunk.choices[0].finish_reason or finish
        if chunk.usage is not None:
            usage = chunk.usage
    assert "".join(pieces) == text
    assert finish == whole.choices[0].finish_reason
    assert usage is not None and usage.completion_tokens == whole.usage.completion_tokens
    spec = usage.model_extra["speculative"]
    assert spec["drafter"] == "qwen-euro" and spec["language"] == "de"
    assert spec == whole.usage.model_extra["speculative"]


def test_sampled_requests_are_reproducible_by_seed(client):
    messages = [{"role": "user", "content": GERMAN}]
    runs = [client.chat.completions.create(
        model=MODEL_NAME, messages=messages, temperature=0.8, top_p=0.95, seed=7,
        max_tokens=24).choices[0].message.content for _ in range(2)]
    assert runs[0] == runs[1]


def test_completions_endpoint(client):
    c = client.completions.create(model=MODEL_NAME, prompt="def fibonacci(n):",
                                  temperature=0, max_tokens=24, stop=["\n\n"])
    assert c.choices[0].text
    assert "\n\n" not in c.choices[0].text
    streamed = "".join(
        ch.choices[0].text for ch in client.completions.create(
            model=MODEL_NAME, prompt="def fibonacci(n):", temperature=0, max_tokens=24,
            stop=["\n\n"], stream=True) if ch.choices)
    assert streamed == c.choices[0].text


def test_greedy_over_http_equals_engine(client, models):
    prompt = "Traduis en anglais : Le système est libre et des bénévoles le maintiennent."
    http = client.chat.completions.create(
        model=MODEL_NAME, messages=[{"role": "user", "content": prompt}],
        temperature=0, max_tokens=40)
    engine = json.loads(subprocess.run(
        [str(specdec_binary()), "generate", "--json", "--context", "2048",
         "--target", str(models / TARGET), "--drafter", str(models / DRAFTER),
         "--draft-max", "4", "--chat", prompt, "--max-tokens", "40"],
        check=True, capture_output=True, text=True).stdout)
    assert http.choices[0].message.content == engine["text"]
    assert http.usage.completion_tokens == len(engine["token_ids"])
    plain = client.chat.completions.create(
        model=MODEL_NAME, messages=[{"role": "user", "content": prompt}],
        temperature=0, max_tokens=40, extra_body={"speculative": {"enabled": False}})
    assert plain.choices[0].message.content == engine["text"]
    assert plain.usage.model_extra["speculative"]["drafter"] is None
