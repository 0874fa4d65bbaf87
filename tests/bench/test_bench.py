"""The benchmark end to end on a small scale: specdec-bench against the real
llama-server (from bench/setup) with the real models and corpus. Checks the
report, not speed: figures on a shared CI machine are not asserted."""

import json
import os
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    for var in ("SPECDEC_BENCH_BIN", "SPECDEC_BIN", "LLAMA_SERVER_BIN", "SPECDEC_MODEL_DIR"):
        assert os.environ.get(var), f"{var} is unset: run through scripts/test (it sources bench/setup)"
    out = tmp_path_factory.mktemp("bench")
    result = subprocess.run(
        [os.environ["SPECDEC_BENCH_BIN"], "--languages", "de,ja", "--per-language", "1",
         "--max-tokens", "12", "--fixed-lengths", "2", "--temperatures", "0,0.7",
         "--concurrency", "1,2", "--out", str(out), "--name", "smoke"],
        cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-4000:]
    return json.loads((out / "smoke.json").read_text()), out


def test_every_mode_language_and_temperature_is_summarised(report):
    data, _ = report
    modes = [m["name"] for m in data["modes"]]
    assert modes == ["target", "k=2", "ngram k=2", "adaptive", "llama-server", "llama-server -md k=2"]
    assert data["languages"] == ["de", "ja"]
    plan = [("translate", 0.0), ("translate", 0.7), ("proofread", 0.0)]
    assert [tuple(p) for p in data["settings"]["plan"]] == plan
    keys = {(s["task"], s["temperature"], s["language"], s["mode"]) for s in data["summaries"]}
    assert keys == {(task, t, l, m) for task, t in plan for l in ("de", "ja") for m in modes}
    assert len(data["runs"]) == len(plan) * 2 * len(modes)
    assert data["settings"]["repeat"] == 1 and all(r["repeat"] == 0 for r in data["runs"])
    assert all([r["repeat"] for r in s["per_repeat"]] == [0] for s in data["summaries"])
    for s in data["summaries"]:
        assert s["decode_tokens_per_second"] > 0 and s["e2e_ms"] > 0, s


def test_specdec_greedy_outputs_equal_its_target(report):
    data, _ = report
    for s in data["summaries"]:
        if s["temperature"] == 0 and not s["mode"].startswith("llama-server") and s["mode"] != "target":
            assert s["exact"] == [1, 1], s


def test_speculation_figures_come_from_both_servers(report):
    data, _ = report
    by_mode = {(s["language"], s["temperature"], s["mode"]): s
               for s in data["summaries"] if s["task"] == "translate"}
    assert by_mode[("de", 0.0, "k=2")]["acceptance"] is not None
    assert by_mode[("de", 0.0, "k=2")]["tau"] >= 1.0
    assert by_mode[("de", 0.0, "llama-server -md k=2")]["acceptance"] is not None
    assert by_mode[("de", 0.0, "target")]["speedup"] == pytest.approx(1.0)
    adaptive = by_mode[("de", 0.0, "adaptive")]["draft_length_share"]
    assert adaptive and sum(adaptive) == pytest.approx(1.0)


def test_load_results_markdown_and_chart(report):
    data, out = report
    load = {(l["server"], l["concurrency"]) for l in data["load"]}
    assert load == {(s, c) for s in ("specdec (adaptive)", "llama-server") for c in (1, 2)}
    assert all(l["tokens"] > 0 and l["p95_ms"] >= l["p50_ms"] > 0 for l in data["load"])
    md = (out / "smoke.md").read_text()
    assert "| de |" in md and "Adaptive drafting: checks" in md and "## Load" in md
    assert "## proofread: decode tokens/s" in md
    assert (out / "smoke.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert data["machine"]["commit"] and data["machine"]["cores"] >= 1
