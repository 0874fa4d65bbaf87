"""Routing by language, metrics equal to the requests' own figures, and the
dashboards' PromQL on a real Prometheus."""

import time
from collections import defaultdict

import requests

from conftest import MODEL_NAME, parse_metrics

PROMPTS = {
    "de": "Übersetze ins Englische: Freiwillige in aller Welt entwickeln Debian gemeinsam.",
    "fr": "Traduis en anglais : Des bénévoles du monde entier développent Debian ensemble.",
    "ja": "英語に翻訳してください：世界中のボランティアが一緒にDebianを開発しています。",
}
EXPECTED_DRAFTER = {"de": "qwen-euro", "fr": "qwen-euro", "ja": "qwen-ja"}


def chat(client, text, max_tokens=24, **extra):
    return client.chat.completions.create(
        model=MODEL_NAME, messages=[{"role": "user", "content": text}],
        temperature=0, max_tokens=max_tokens, **extra)


def speculative(response):
    return response.usage.model_extra["speculative"]


def test_languages_route_to_their_drafters(client, server):
    for lang, text in PROMPTS.items():
        spec = speculative(chat(client, text))
        assert (spec["language"], spec["drafter"]) == (lang, EXPECTED_DRAFTER[lang])
        assert spec["draft_tokens"] > 0
    # An explicit language overrides detection: German text routed as Japanese.
    spec = speculative(chat(client, PROMPTS["de"], extra_body={"language": "ja"}))
    assert (spec["language"], spec["drafter"]) == ("ja", "qwen-ja")
    metrics = server.metrics()
    for lang, drafter in EXPECTED_DRAFTER.items():
        assert f'drafter="{drafter}",language="{lang}"' in metrics


SPEC_COUNTERS = {
    "drafts": "specdec_spec_decode_num_drafts_total",
    "draft_tokens": "specdec_spec_decode_num_draft_tokens_total",
    "accepted_tokens": "specdec_spec_decode_num_accepted_tokens_total",
}


def spec_counters(server):
    parsed = parse_metrics(server.metrics())
    out = defaultdict(float)
    for (name, labels), value in parsed.items():
        for field, metric in SPEC_COUNTERS.items():
            if name == metric:
                d = dict(labels)
                out[(field, d["drafter"], d["language"])] += value
        if name == "specdec_generation_tokens_total":
            out[("completion_tokens",)] += value
        if name == "specdec_prompt_tokens_total":
            out[("prompt_tokens",)] += value
    return out


def test_counters_equal_sums_of_usage(client, server):
    before = spec_counters(server)
    expected = defaultdict(float)
    requests_made = [
        (PROMPTS["de"], {}), (PROMPTS["fr"], {}), (PROMPTS["ja"], {}),
        (PROMPTS["de"], {"extra_body": {"language": "ja"}}),
        ("Please repeat exactly: alpha beta gamma alpha beta gamma alpha beta gamma", {}),
    ]
    for text, extra in requests_made:
        r = chat(client, text, **extra)
        spec = speculative(r)
        for field in SPEC_COUNTERS:
            if spec["drafter"] is not None and spec["drafts"] > 0:
                expected[(field, spec["drafter"], spec["language"])] += spec[field]
        expected[("completion_tokens",)] += r.usage.completion_tokens
        expected[("prompt_tokens",)] += r.usage.prompt_tokens
    after = spec_counters(server)
    keys = set(expected) | {k for k in after if after[k] != before.get(k, 0.0)}
    for key in keys:
        assert after.get(key, 0.0) - before.get(key, 0.0) == expected.get(key, 0.0), key


def promql(prometheus, query, at):
    r = requests.get(f"{prometheus}/api/v1/query", params={"query": query, "time": at}, timeout=10)
    r.raise_for_status()
    return {res["metric"].get("language"): float(res["value"][1]) for res in r.json()["data"]["result"]}


def test_prometheus_answers_dashboard_queries(client, server, prometheus):
    # Create the series, then let Prometheus see their starting values.
    for text in PROMPTS.values():
        chat(client, text, max_tokens=4)
    time.sleep(3)
    start = time.time()
    sums = defaultdict(lambda: defaultdict(float))
    for text in PROMPTS.values():
        for max_tokens in (16, 32):
            spec = speculative(chat(client, text, max_tokens=max_tokens))
            for field in ("drafts", "draft_tokens", "accepted_tokens"):
                sums[spec["language"]][field] += spec[field]
    time.sleep(3)
    end = time.time()
    window = f"{int(end - start) + 1}s"
    acceptance = promql(
        prometheus,
        f"sum by (language) (increase(specdec_spec_decode_num_accepted_tokens_total[{window}]))"
        f" / sum by (language) (increase(specdec_spec_decode_num_draft_tokens_total[{window}]))",
        end)
    mean_length = promql(
        prometheus,
        f"1 + sum by (language) (increase(specdec_spec_decode_num_accepted_tokens_total[{window}]))"
        f" / sum by (language) (increase(specdec_spec_decode_num_drafts_total[{window}]))",
        end)
    for lang, s in sums.items():
        assert abs(acceptance[lang] - s["accepted_tokens"] / s["draft_tokens"]) < 1e-9, lang
        assert abs(mean_length[lang] - (1 + s["accepted_tokens"] / s["drafts"])) < 1e-9, lang
