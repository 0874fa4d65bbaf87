"""Routing by language, metrics equal to the requests' own figures, and the
dashboards' PromQL on a real Prometheus."""

import time
from collections import defaultdict

import requests

from conftest import MODEL_NAME, parse_metrics

SPANISH = "Traduce al inglés: Voluntarios de todo el mundo desarrollan Debian juntos y publican nuevas versiones con regularidad."

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


def test_a_language_with_two_candidates(client, server):
    """Spanish routes to both its drafters; the engine switches between them
    per round, the output stays the target's, the usage breaks the rounds
    down by drafter and names the one that produced most accepted tokens,
    and the bandit's view is exported."""
    plain = chat(client, SPANISH, max_tokens=32,
                 extra_body={"language": "es", "speculative": {"enabled": False}})
    r = chat(client, SPANISH, max_tokens=32, extra_body={"language": "es"})
    assert r.choices[0].message.content == plain.choices[0].message.content
    spec = speculative(r)
    assert plain.usage.model_extra["speculative"]["drafters"] == {}
    drafters = spec["drafters"]
    assert set(drafters) == {"qwen-euro", "lookup"}, drafters
    # Each candidate is tried once before the bandit compares them (no
    # request in Spanish came before).
    assert all(d["rounds"] >= 1 for d in drafters.values()), drafters
    assert sum(d["rounds"] for d in drafters.values()) == sum(spec["rounds_by_draft_length"])
    for field in ("drafts", "draft_tokens", "accepted_tokens"):
        assert sum(d[field] for d in drafters.values()) == spec[field], field
    # Reported under the drafter that produced most of the accepted tokens
    # (a tie goes to more rounds, then to registry order).
    order = ["qwen-euro", "lookup"]
    best = max(order, key=lambda n: (drafters[n]["accepted_tokens"], drafters[n]["rounds"], -order.index(n)))
    assert spec["drafter"] == best
    shares = {dict(labels)["drafter"]: v for (name, labels), v in parse_metrics(server.metrics()).items()
              if name == "specdec_bandit_choice_share" and dict(labels)["language"] == "es"}
    assert set(shares) == {"qwen-euro", "lookup"} and abs(sum(shares.values()) - 1) < 1e-9, shares
    speeds = [v for (name, labels), v in parse_metrics(server.metrics()).items()
              if name == "specdec_bandit_tokens_per_second" and dict(labels)["language"] == "es"]
    assert len(speeds) == 2 and all(v > 0 for v in speeds), speeds


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
        # Spanish has two candidates: each round counts under the drafter it used.
        (SPANISH, {"extra_body": {"language": "es"}}),
    ]
    for text, extra in requests_made:
        r = chat(client, text, **extra)
        spec = speculative(r)
        for drafter, used in spec["drafters"].items():
            for field in SPEC_COUNTERS:
                if used["drafts"] > 0:
                    expected[(field, drafter, spec["language"])] += used[field]
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

