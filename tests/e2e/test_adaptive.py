"""Adaptive drafting and per-request drafter choice over HTTP: the output
equals plain decoding, the usage counts every round at the length it used,
and the metrics carry the same figures."""

from collections import defaultdict

import openai
import pytest

from conftest import MODEL_NAME, parse_metrics

GERMAN = "Übersetze ins Englische: Freiwillige in aller Welt entwickeln Debian gemeinsam und veröffentlichen regelmäßig neue Versionen."


def chat(client, speculative, max_tokens=32):
    return client.chat.completions.create(
        model=MODEL_NAME, messages=[{"role": "user", "content": GERMAN}],
        temperature=0, max_tokens=max_tokens,
        extra_body={"language": "de", "speculative": speculative})


def rounds_by_length(server, drafter, language):
    out = defaultdict(float)
    for (name, labels), value in parse_metrics(server.metrics()).items():
        d = dict(labels)
        if name == "specdec_draft_length_rounds_total" and d["drafter"] == drafter and d["language"] == language:
            out[int(d["length"])] += value
    return out


def test_adaptive_output_equals_plain_and_usage_matches_metrics(client, server):
    plain = chat(client, {"enabled": False})
    before = rounds_by_length(server, "qwen-euro", "de")
    r = chat(client, {"adaptive": True})
    assert r.choices[0].message.content == plain.choices[0].message.content
    spec = r.usage.model_extra["speculative"]
    assert spec["drafter"] == "qwen-euro"
    by_length = spec["rounds_by_draft_length"]
    assert 1 <= len(by_length) <= 5, by_length  # lengths 0..draft.max (4)
    assert sum(by_length) >= r.usage.completion_tokens / 5
    after = rounds_by_length(server, "qwen-euro", "de")
    for length, rounds in enumerate(by_length):
        assert after[length] - before[length] == rounds, (length, by_length)
    # The chosen length is exported for the drafter and language.
    chosen = [v for (name, labels), v in parse_metrics(server.metrics()).items()
              if name == "specdec_draft_length"
              and dict(labels) == {"drafter": "qwen-euro", "language": "de", "sampling": "greedy"}]
    assert len(chosen) == 1 and 0 <= chosen[0] <= 4


def test_fixed_length_drafts_every_round(client):
    r = chat(client, {"max": 2})
    spec = r.usage.model_extra["speculative"]
    assert spec["draft_tokens"] > 0
    by_length = spec["rounds_by_draft_length"]
    assert by_length[0] <= 1 and sum(by_length[1:]) >= 1, by_length


def test_a_request_may_name_its_drafter(client):
    plain = chat(client, {"enabled": False})
    r = chat(client, {"drafter": "lookup", "max": 4, "adaptive": False})
    assert r.usage.model_extra["speculative"]["drafter"] == "lookup"
    assert r.choices[0].message.content == plain.choices[0].message.content


def test_an_unknown_drafter_is_refused(client):
    with pytest.raises(openai.BadRequestError) as refused:
        chat(client, {"drafter": "nope"})
    assert refused.value.body["param"] == "speculative.drafter"
    assert "qwen-euro" in refused.value.body["message"]
