"""The device kit's receiving side (bench/device/kit.py receive), as the GPU
machine runs it: parts of files arriving over several calls, reassembled,
checked against their sha256, archives unpacked, and the model pair chosen
by the budget left. The stage here is small and synthetic; `kit.py local`
rehearses the whole kit with the real CUDA build and models."""

import hashlib
import importlib.util
import io
import json
import subprocess
import sys
import tarfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
KIT = ROOT / "bench" / "device" / "kit.py"
PART = 1000

_spec = importlib.util.spec_from_file_location("kit", KIT)
kit = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(kit)


def make_stage(tmp_path):
    """Three files in four calls: an archive and a model both pairs need,
    then one model per pair."""
    archive = io.BytesIO()
    with tarfile.open(fileobj=archive, mode="w:xz") as tar:
        data = b"#!/bin/sh\necho bench\n"
        info = tarfile.TarInfo("kit/specdec-bench")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    contents = {
        "kit.tar.xz": archive.getvalue(),
        "models/common.gguf": bytes(range(256)) * 7,  # 1792 bytes: two parts
        "models/large.gguf": b"L" * 2500,
        "models/small.gguf": b"S" * 300,
    }
    groups = [("common", ["kit.tar.xz", "models/common.gguf"]),
              ("large", ["models/large.gguf"]), ("small", ["models/small.gguf"])]
    calls = kit.cut_into_calls(groups, {n: len(d) for n, d in contents.items()}, PART)
    files = {n: {"size": len(d), "sha256": hashlib.sha256(d).hexdigest(),
                 "parts": [p for _, pieces in calls for p, name, _, _ in pieces if name == n]}
             for n, d in contents.items()}
    manifest = {
        "commit": "test", "part_bytes": PART, "files": files,
        "calls": [{"name": f"call-{i + 1:02}", "group": g, "parts": [p[0] for p in pieces]}
                  for i, (g, pieces) in enumerate(calls)],
        "pairs": {"large": {"why": "large", "run_s": 100}, "small": {"why": "small", "run_s": 50}},
        "common": groups[0][1], "own": {"large": groups[1][1], "small": groups[2][1]},
    }
    stage = tmp_path / "stage"
    for entry, (_, pieces) in zip(manifest["calls"], calls):
        folder = stage / entry["name"]
        folder.mkdir(parents=True)
        (folder / "manifest.json").write_text(json.dumps(manifest))
        for part, name, offset, length in pieces:
            (folder / part).write_bytes(contents[name][offset:offset + length])
    return stage, manifest, contents


def receive(stage, store, call, budget=None):
    command = [sys.executable, str(KIT), "receive", str(stage / call), "--store", str(store)]
    if budget is not None:
        command += ["--budget-left", str(budget)]
    return subprocess.run(command, capture_output=True, text=True, timeout=60)


def test_calls_are_cut_from_each_group_as_one_stream():
    calls = kit.cut_into_calls([("common", ["a", "b"]), ("large", ["c"])], {"a": 700, "b": 700, "c": 50}, 1000)
    assert [(g, [(n, o, l) for _, n, o, l in pieces]) for g, pieces in calls] == [
        ("common", [("a", 0, 700), ("b", 0, 300)]),
        ("common", [("b", 300, 400)]),
        ("large", [("c", 0, 50)]),
    ]


def test_files_are_reassembled_checked_and_unpacked(tmp_path):
    stage, manifest, contents = make_stage(tmp_path)
    store = tmp_path / "store"
    common = [c["name"] for c in manifest["calls"] if c["group"] == "common"]
    large = [c["name"] for c in manifest["calls"] if c["group"] == "large"]
    for call in common:
        result = receive(stage, store, call, budget=10_000)
        assert result.returncode == 0, result.stderr
    status = json.loads(result.stdout)
    assert set(status["files_ready"]) == {"kit.tar.xz", "models/common.gguf"}
    assert (store / "files" / "models" / "common.gguf").read_bytes() == contents["models/common.gguf"]
    assert (store / "files" / "kit" / "specdec-bench").read_text().startswith("#!/bin/sh")
    # Both pairs fit a large budget: the larger is chosen, its calls named.
    assert status["choice"] == "large"
    assert status["pairs"]["large"]["calls_left"] == large
    for call in large:
        assert receive(stage, store, call).returncode == 0
    assert (store / "files" / "models" / "large.gguf").read_bytes() == contents["models/large.gguf"]
    assert not any((store / "parts").iterdir()), "parts are removed once joined"


def test_the_budget_chooses_the_smaller_pair_or_none(tmp_path):
    stage, manifest, _ = make_stage(tmp_path)
    store = tmp_path / "store"
    first, second = [c["name"] for c in manifest["calls"]][:2]
    assert receive(stage, store, first).returncode == 0
    status = json.loads(receive(stage, store, second, budget=145).stdout)
    # Calls take next to nothing here: what decides is each pair's run
    # time plus the 90 s margin against the budget.
    assert status["seconds_per_call"] is not None
    assert status["pairs"]["large"]["fits"] is False
    assert status["choice"] == "small"
    state = json.loads((store / "state.json").read_text())
    state["received"] = [first]
    (store / "state.json").write_text(json.dumps(state))
    status = json.loads(receive(stage, store, second, budget=60).stdout)
    assert status["choice"] is None


def test_a_corrupt_part_is_dropped_and_its_calls_named(tmp_path):
    stage, manifest, _ = make_stage(tmp_path)
    store = tmp_path / "store"
    small = [c for c in manifest["calls"] if c["group"] == "small"][0]
    part = stage / small["name"] / small["parts"][0]
    part.write_bytes(b"X" + part.read_bytes()[1:])
    result = receive(stage, store, small["name"])
    assert result.returncode != 0
    assert "sha256" in result.stderr and f"send {small['name']} again" in result.stderr
    state = json.loads((store / "state.json").read_text())
    assert small["name"] not in state["received"]
    assert "models/small.gguf" not in state["done"]
    assert not (store / "files" / "models" / "small.gguf").exists()


def test_a_call_from_another_build_starts_the_store_over(tmp_path):
    stage, manifest, _ = make_stage(tmp_path)
    store = tmp_path / "store"
    first = manifest["calls"][0]["name"]
    assert receive(stage, store, first).returncode == 0
    other = json.loads((stage / first / "manifest.json").read_text())
    other["commit"] = "another"
    (stage / first / "manifest.json").write_text(json.dumps(other))
    result = receive(stage, store, first)
    assert result.returncode == 0, result.stderr
    assert "starting over" in result.stderr
    assert json.loads((store / "state.json").read_text())["received"] == [first]
