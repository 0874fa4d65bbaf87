#!/usr/bin/env python3
"""The device kit: the GPU benchmark of specdec on a machine lent for a few
minutes, with no Rust toolchain and no internet, reached by calls that each
carry at most 64 MiB of files (see bench/README.md, "On a lent GPU").

  pack      (here)   build the CUDA bundle, compress it, and cut it, the
                     benchmark and the models into parts, one folder of parts
                     per call: bench/device/stage/call-NN
  receive   (device) take one call's parts, reassemble every file whose parts
                     are all there, check its sha256, and say which call
                     comes next and which model pair the budget allows
  run       (device) serve with every layer offloaded, measure the
                     verification cost curve and run the benchmark's GPU
                     subset, writing JSON and Markdown into $OUT
  local     (here)   the same scripts end to end on this CPU: pack, every
                     call's receive, then run (no GPU: the CUDA build runs on
                     its CPU kernels)

Only the standard library: the device's Python has nothing else we need.
"""

import argparse
import hashlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tarfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
KIT_DIR = REPO / "bench" / "device"
STAGE = KIT_DIR / "stage"
MIB = 1024 * 1024
# What one call may carry in all is 64 MiB, the working tree included
# (about 3 MiB; `call_capacity` checks).
DEFAULT_PART_MIB = 60

TARGET_LARGE = "qwen2.5-coder-1.5b-instruct-q4_k_m.gguf"
QWEN_SMALL = "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf"
GENERIC_DRAFTER = "drafters/generic.gguf"

# The model pairs, largest first. `run_s` is what `run` takes on an H200
# (estimated: serving start-up and calibration, then 6 modes x 8 languages x
# 3 task settings of up to 128 tokens); the budget check adds a margin.
PAIRS = {
    "large": {
        "target": TARGET_LARGE,
        "drafter": QWEN_SMALL,
        "why": "the product's pair: the 1.5B target with the 0.5B drafter (acceptance 0.46-0.66 on CPU)",
        "run_s": 300,
    },
    "small": {
        "target": QWEN_SMALL,
        "drafter": GENERIC_DRAFTER,
        "why": "a third of the staging: the 0.5B model as target with the trained 2x256 generic drafter "
        "(distilled from the 1.5B, so its acceptance here is low; it measures the GPU's cost curve and "
        "the target-only, n-gram and adaptive modes)",
        "run_s": 200,
    },
}
MARGIN_S = 90

# Files staged before the pair is chosen (needed by both), then each pair's own.
COMMON = ["kit.tar.xz", "specdec-cuda.tar.xz", "models/" + QWEN_SMALL]
OWN = {"large": ["models/" + TARGET_LARGE], "small": ["models/" + GENERIC_DRAFTER]}


def log(*args):
    print("[kit]", *args, file=sys.stderr, flush=True)


def sha256(path):
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(8 * MIB):
            digest.update(chunk)
    return digest.hexdigest()


def sh(*cmd, capture=False, env=None):
    log("$", " ".join(str(c) for c in cmd))
    result = subprocess.run([str(c) for c in cmd], check=True, text=True,
                            stdout=subprocess.PIPE if capture else None, env=env)
    return result.stdout.strip() if capture else None


def cache_dir():
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "specdec"


# --------------------------------------------------------------------- pack

def pack(args):
    """Build, compress and cut everything the device needs into call folders."""
    work = cache_dir() / "device-kit"
    work.mkdir(parents=True, exist_ok=True)
    bundle = Path(os.environ.get("SPECDEC_CUDA_BUNDLE", cache_dir() / "cuda-bundle"))
    if not args.skip_build:
        sh(REPO / "scripts" / "build-cuda")
    if not (bundle / "specdec").is_file() or not (bundle / "libggml-cuda.so").is_file():
        sys.exit(f"no CUDA bundle in {bundle}: run scripts/build-cuda")
    # The benchmark (a plain Rust binary, no llama.cpp), its prompts and font.
    env_out = sh("bash", "-c", ". bench/setup >&2 && echo \"$SPECDEC_BENCH_BIN\" && echo \"$SPECDEC_MODEL_DIR\"",
                 capture=True).splitlines()
    bench_bin, model_dir = Path(env_out[-2]), Path(env_out[-1])
    kit = work / "kit"
    shutil.rmtree(kit, ignore_errors=True)
    kit.mkdir()
    shutil.copy2(bench_bin, kit / "specdec-bench")
    sh(bench_bin, "--export-prompts", kit / "prompts.json", "--per-language", "3")
    with open(kit / "prompts.json") as f:
        languages = sorted({p["language"] for p in json.load(f)})
    log(f"prompts: 3 paragraphs in each of {', '.join(languages)}")
    shutil.copy2("/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf", kit / "DejaVuSans.ttf")
    (kit / "commit").write_text(sh("git", "-C", REPO, "rev-parse", "--short=12", "HEAD", capture=True) + "\n")
    archives = {
        "kit.tar.xz": kit,
        "specdec-cuda.tar.xz": bundle,
    }
    sources = {}
    for name, folder in archives.items():
        archive = work / name
        log(f"compressing {folder} into {name}")
        sh("tar", "-C", folder.parent, "-cf", archive, "--use-compress-program=xz -T0 -6",
           "--transform", f"s,^{folder.name},{name.removesuffix('.tar.xz')},", folder.name)
        sources[name] = archive
    pairs = dict(PAIRS)
    for name in COMMON + OWN["large"]:
        if name.startswith("models/"):
            path = model_dir / name.removeprefix("models/")
            if not path.is_file():
                sys.exit(f"{path} is missing (scripts/fetch-models)")
            sources[name] = path
    generic = model_dir / GENERIC_DRAFTER
    if generic.is_file():
        sources["models/" + GENERIC_DRAFTER] = generic
    else:
        log(f"{generic} is missing (specdec-train's quick recipe makes it): staging the large pair only")
        del pairs["small"]

    part_bytes = call_capacity(args.part_mib)
    shutil.rmtree(STAGE, ignore_errors=True)
    STAGE.mkdir(parents=True)
    files = {name: {"size": path.stat().st_size, "sha256": sha256(path), "parts": []}
             for name, path in sources.items()}
    groups = [("common", COMMON)] + [(pair, OWN[pair]) for pair in pairs]
    calls = cut_into_calls(groups, {n: f["size"] for n, f in files.items()}, part_bytes)
    for _, pieces in calls:
        for part, name, _, _ in pieces:
            files[name]["parts"].append(part)
    manifest = {"commit": (kit / "commit").read_text().strip(), "part_bytes": part_bytes, "files": files,
                "calls": [{"name": f"call-{i + 1:02}", "group": group, "parts": [p[0] for p in pieces]}
                          for i, (group, pieces) in enumerate(calls)],
                "pairs": pairs, "common": COMMON, "own": OWN}
    for entry, (_, pieces) in zip(manifest["calls"], calls):
        folder = STAGE / entry["name"]
        folder.mkdir()
        (folder / "manifest.json").write_text(json.dumps(manifest, indent=1))
        for part, name, offset, length in pieces:
            with open(sources[name], "rb") as src, open(folder / part, "wb") as dst:
                src.seek(offset)
                dst.write(src.read(length))
    (STAGE / "manifest.json").write_text(json.dumps(manifest, indent=1))
    total = sum(f["size"] for f in files.values())
    log(f"staged {total / MIB:.0f} MiB in {len(calls)} calls of at most {part_bytes / MIB:.1f} MiB "
        f"under {STAGE.relative_to(REPO)}")
    for entry in manifest["calls"]:
        size = sum((STAGE / entry["name"] / p).stat().st_size for p in entry["parts"])
        print(f"{entry['name']}  {entry['group']:6}  {size / MIB:5.1f} MiB  {', '.join(entry['parts'])}")
    for pair in pairs:
        count = sum(1 for c in manifest["calls"] if c["group"] in ("common", pair))
        print(f"pair {pair}: {count} calls")


def cut_into_calls(groups, sizes, part_bytes):
    """Each group's files (in order) as one stream, cut into calls of at most
    `part_bytes`: a list of (group, pieces), a piece being (part name, file,
    offset, length), the name made of the file's and the offset."""
    calls = []
    for group, names in groups:
        current, used = [], 0
        for name in names:
            size, offset = sizes[name], 0
            while offset < size:
                length = min(part_bytes - used, size - offset)
                current.append((f"{name.replace('/', '__')}.{offset:012}", name, offset, length))
                used += length
                offset += length
                if used == part_bytes:
                    calls.append((group, current))
                    current, used = [], 0
        if current:
            calls.append((group, current))
    return calls


def call_capacity(part_mib):
    """Bytes of parts one call may carry: what is asked, within 64 MiB less
    the working tree that travels with every call (and the manifest)."""
    listed = subprocess.run(["git", "-C", REPO, "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                            capture_output=True, check=True).stdout.split(b"\0")
    tree = sum((REPO / f.decode()).stat().st_size for f in listed if f and (REPO / f.decode()).is_file())
    room = 64 * MIB - tree - MIB // 2
    if room < 8 * MIB:
        sys.exit(f"the working tree ({tree / MIB:.1f} MiB) leaves no room for parts in a 64 MiB call")
    if part_mib * MIB > room:
        log(f"parts of {room / MIB:.1f} MiB: the working tree ({tree / MIB:.1f} MiB) travels with each call")
    return min(part_mib * MIB, room)


# ------------------------------------------------------------------ receive

def store_dir(args):
    return Path(args.store) if args.store else KIT_DIR / "store"


def load_state(store):
    path = store / "state.json"
    return json.loads(path.read_text()) if path.is_file() else {"received": [], "times": [], "done": []}


def assemble(store, manifest, state):
    """Join every file whose parts are all there, check it, put it in place."""
    for name, meta in manifest["files"].items():
        if name in state["done"]:
            continue
        parts = [store / "parts" / p for p in meta["parts"]]
        if not all(p.is_file() for p in parts):
            continue
        target = store / "files" / name
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_name(target.name + ".partial")
        with open(partial, "wb") as out:
            for p in parts:
                with open(p, "rb") as f:
                    shutil.copyfileobj(f, out, 8 * MIB)
        got = sha256(partial)
        if partial.stat().st_size != meta["size"] or got != meta["sha256"]:
            partial.unlink()
            for p in parts:
                p.unlink()
            again = [c["name"] for c in manifest["calls"] if set(c["parts"]) & set(meta["parts"])]
            state["received"] = [c for c in state["received"] if c not in again]
            (store / "state.json").write_text(json.dumps(state))
            raise SystemExit(f"{name}: sha256 {got} is not {meta['sha256']}: its parts were dropped; "
                             f"send {', '.join(again)} again")
        partial.rename(target)
        for p in parts:
            p.unlink()
        if name.endswith(".tar.xz"):
            with tarfile.open(target) as archive:
                archive.extractall(store / "files", filter="tar") if sys.version_info >= (3, 12) \
                    else archive.extractall(store / "files")
        state["done"].append(name)
        log(f"{name}: {meta['size'] / MIB:.0f} MiB, sha256 verified")


def plan(manifest, state, budget_left):
    """Which pair the remaining budget allows, and the calls still to send."""
    times = state["times"]
    per_call = statistics.median([b - a for a, b in zip(times, times[1:])]) if len(times) > 1 else None
    received = set(state["received"])
    out = {"seconds_per_call": per_call, "pairs": {}}
    for pair, meta in manifest["pairs"].items():
        groups = ("common", pair)
        todo = [c["name"] for c in manifest["calls"] if c["group"] in groups and c["name"] not in received]
        need = None if per_call is None else len(todo) * per_call + meta["run_s"] + MARGIN_S
        out["pairs"][pair] = {"calls_left": todo, "seconds_needed": need,
                              "fits": None if need is None or budget_left is None else need <= budget_left}
    choice = None
    if budget_left is not None and per_call is not None:
        choice = next((p for p, v in out["pairs"].items() if v["fits"]), None)
    out["choice"] = choice
    if choice:
        out["why"] = manifest["pairs"][choice]["why"]
    return out


def receive(args):
    store = store_dir(args)
    call = STAGE / args.call if not Path(args.call).is_absolute() else Path(args.call)
    manifest = json.loads((call / "manifest.json").read_text())
    state = load_state(store)
    if state.get("commit") not in (None, manifest["commit"]):
        log(f"the store holds parts of commit {state['commit']}, this call {manifest['commit']}: starting over")
        shutil.rmtree(store)
        state = load_state(store)
    state["commit"] = manifest["commit"]
    (store / "parts").mkdir(parents=True, exist_ok=True)
    state["times"].append(time.time())
    entry = next((c for c in manifest["calls"] if c["name"] == call.name), None)
    if entry is None:
        raise SystemExit(f"{call.name} is not a call of this stage")
    for part in entry["parts"]:
        source = call / part
        if not source.is_file():
            raise SystemExit(f"{call.name} lacks {part}: was the folder carried?")
        shutil.copyfile(source, store / "parts" / part)
    if call.name not in state["received"]:
        state["received"].append(call.name)
    assemble(store, manifest, state)
    (store / "state.json").write_text(json.dumps(state))
    status = plan(manifest, state, args.budget_left)
    status.update({"received": state["received"], "files_ready": state["done"]})
    print(json.dumps(status, indent=1))
    if os.environ.get("OUT"):
        Path(os.environ["OUT"]).mkdir(parents=True, exist_ok=True)
        Path(os.environ["OUT"], "staging.json").write_text(json.dumps(status, indent=1))
    pending = [f for f in manifest["common"] if f not in state["done"]]
    if pending:
        log(f"still to stage for both pairs: {', '.join(pending)}")
    if status["choice"]:
        todo = status["pairs"][status["choice"]]["calls_left"]
        log(f"budget allows the {status['choice']} pair ({status['why']}); "
            f"next: {', '.join(todo) if todo else 'run --pair ' + status['choice']}")


# ---------------------------------------------------------------------- run

def cuda_library_dirs():
    """Folders holding libcudart.so.13, libcublas.so.13 and libcublasLt.so.13
    (the CUDA build's run-time libraries; the device's PyTorch wheels carry them)."""
    wanted = ["libcudart.so.13", "libcublas.so.13", "libcublasLt.so.13"]
    candidates = []
    if os.environ.get("SPECDEC_CUDA_LIBS"):
        candidates.append(Path(os.environ["SPECDEC_CUDA_LIBS"]))
    for python in ["python3", sys.executable]:
        try:
            paths = subprocess.run([python, "-c", "import site,sys; print('\\n'.join(site.getsitepackages() + sys.path))"],
                                   capture_output=True, text=True, check=True).stdout.split()
        except (OSError, subprocess.CalledProcessError):
            continue
        for p in paths:
            candidates += [Path(p) / "nvidia" / "cu13" / "lib"] + sorted(Path(p).glob("nvidia/*/lib"))
    # The toolkit scripts/build-cuda installed, where the kit is rehearsed.
    candidates += sorted(cache_dir().glob("cuda-13.0/lib/python3*/site-packages/nvidia/cu13/lib"))
    candidates += [Path("/usr/local/cuda/lib64"), Path("/usr/lib/x86_64-linux-gnu")]
    found = {}
    for folder in candidates:
        for lib in wanted:
            if lib not in found and (folder / lib).exists():
                found[lib] = folder
    missing = [lib for lib in wanted if lib not in found]
    if missing:
        raise SystemExit(f"CUDA 13 run-time libraries not found: {', '.join(missing)} "
                         "(set SPECDEC_CUDA_LIBS to their folder)")
    return sorted({str(p) for p in found.values()})


def measure(args, name):
    store = store_dir(args)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    files = store / "files"
    pair = PAIRS[args.pair]
    needed = COMMON + OWN[args.pair]
    state = load_state(store)
    missing = [f for f in needed if f not in state["done"]]
    if missing:
        raise SystemExit(f"not staged yet for the {args.pair} pair: {', '.join(missing)}")
    bundle, kit = files / "specdec-cuda", files / "kit"
    env = dict(os.environ)
    env["LD_LIBRARY_PATH"] = ":".join(cuda_library_dirs() + [env.get("LD_LIBRARY_PATH", "")]).rstrip(":")
    env["SPECDEC_LOG"] = env.get("SPECDEC_LOG", "warn,specdec_backend=info")
    model_dir = files / "models"
    started = time.time()
    # The verification cost curve: target passes of 1..16 (and more) tokens,
    # timed through their logits, as the engine calibrates them.
    registry = out / "registry.yaml"
    registry.write_text(
        f"target:\n  model: {model_dir / pair['target']}\n  context: 2048\n  gpu_layers: {args.gpu_layers}\n"
        f"drafters:\n  - name: drafter\n    languages: ['*']\n    model: {model_dir / pair['drafter']}\n")
    check = subprocess.run([bundle / "specdec", "check", "--registry", registry, "--json"], env=env,
                           capture_output=True, text=True)
    (out / "check.log").write_text(check.stderr)
    if check.returncode != 0:
        raise SystemExit(f"specdec check failed:\n{check.stderr[-4000:]}")
    costs = json.loads(check.stdout)
    costs["commit"] = (kit / "commit").read_text().strip()
    (out / "costs.json").write_text(json.dumps(costs, indent=1))
    runtime = costs["runtime"]
    on_gpu = runtime["has_gpu"] and costs["verification"]["target_on_gpu"]
    log(f"devices: {runtime['devices']}; target on GPU: {on_gpu}")
    if not on_gpu and not args.allow_cpu:
        raise SystemExit("llama.cpp found no GPU (see check.log): the CUDA module did not load or saw no device")
    (out / "curve.md").write_text(curve_markdown(costs, args.pair))
    print((out / "curve.md").read_text())
    command = [kit / "specdec-bench", "--specdec", bundle / "specdec", "--without-llama-server",
               "--prompts", kit / "prompts.json", "--font", kit / "DejaVuSans.ttf",
               "--model-dir", model_dir, "--target-file", pair["target"], "--drafter-file", pair["drafter"],
               "--gpu-layers", str(args.gpu_layers), "--fixed-lengths", "2,4,8", "--draft-max", "8",
               "--per-language", "1", "--max-tokens", str(args.max_tokens),
               "--concurrency", *[c for c in args.concurrency.split(",") if c], "--out", out,
               "--name", name]
    if args.languages:
        command += ["--languages", args.languages]
    sh(*command, env=env)
    log(f"done in {time.time() - started:.0f} s; reports in {out}")


def copy_back(out, name):
    """Put the reports where the device tool returns them from ($OUT): at
    most 8 files, none in a subfolder."""
    if not os.environ.get("OUT"):
        return
    keep = [out / n for n in ("costs.json", "curve.md", "check.log")] + sorted(out.glob(f"{name}.*"))
    keep += sorted((out / "tmp").glob("specdec*.log"))[:1]
    Path(os.environ["OUT"]).mkdir(parents=True, exist_ok=True)
    for path in [p for p in keep if p.is_file()][:8]:
        shutil.copy2(path, Path(os.environ["OUT"]) / path.name)


def run(args):
    # A rehearsal on a CPU is named as one.
    name = f"local-{args.pair}" if args.allow_cpu else f"gpu-{args.pair}"
    try:
        measure(args, name)
    finally:
        copy_back(Path(args.out), name)


def curve_markdown(costs, pair):
    table = costs.get("costs") or {}
    passes = table.get("target_passes", [])
    if not passes:
        return "no calibration (no drafter)\n"
    unit = passes[0][1]
    lines = [f"# Verification cost curve ({pair} pair, commit {costs.get('commit', '')})", "",
             f"devices: {', '.join(costs['runtime']['devices'])}", "",
             "| tokens in the pass | ms | relative to one token |", "| ---: | ---: | ---: |"]
    lines += [f"| {n} | {ms:.2f} | {ms / unit:.2f} |" for n, ms in passes]
    steps = ", ".join(f"{ms:.2f} ms" for ms in table.get("draft_steps", []))
    s = table.get("sampling", {})
    lines += ["", f"draft step: {steps}; sampling one position: greedy {s.get('greedy_ms', 0):.3f} ms, "
              f"temperature 1 {s.get('sampled_ms', 0):.3f} ms", ""]
    return "\n".join(lines)


# -------------------------------------------------------------------- local

def local(args):
    """Rehearse the device's side here: every call of the chosen pair in
    order, then the run, on this CPU."""
    if not args.keep_stage or not (STAGE / "manifest.json").is_file():
        pack(argparse.Namespace(part_mib=args.part_mib, skip_build=args.skip_build))
    manifest = json.loads((STAGE / "manifest.json").read_text())
    store = Path(args.store) if args.store else KIT_DIR / "store-local"
    shutil.rmtree(store, ignore_errors=True)
    for call in manifest["calls"]:
        if call["group"] in ("common", args.pair):
            receive(argparse.Namespace(call=call["name"], store=str(store), budget_left=args.budget_left))
    run(argparse.Namespace(store=str(store), out=args.out, pair=args.pair, gpu_layers=args.gpu_layers,
                           allow_cpu=True, languages=args.languages, max_tokens=args.max_tokens,
                           concurrency=args.concurrency))


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("pack", help="build and stage (here)")
    p.add_argument("--part-mib", type=int, default=DEFAULT_PART_MIB)
    p.add_argument("--skip-build", action="store_true", help="use the CUDA bundle built last")
    p.set_defaults(func=pack)
    p = sub.add_parser("receive", help="take one call's parts (device)")
    p.add_argument("call", help="the call folder, e.g. call-03")
    p.add_argument("--budget-left", type=float, help="device seconds left, from the last call's lease")
    p.add_argument("--store", help="where parts and files are kept (default bench/device/store)")
    p.set_defaults(func=receive)
    for name, func, helptext in [("run", run, "measure (device)"), ("local", local, "rehearse everything (here)")]:
        p = sub.add_parser(name, help=helptext)
        p.add_argument("--pair", choices=sorted(PAIRS), default="large" if name == "run" else "small")
        p.add_argument("--store")
        p.add_argument("--out", default="bench/results/device",
                       help="where reports go (on the device, the main ones are also copied into $OUT)")
        p.add_argument("--gpu-layers", type=int, default=999)
        p.add_argument("--languages", default="" if name == "run" else "de,ja")
        p.add_argument("--max-tokens", type=int, default=128 if name == "run" else 24)
        p.add_argument("--concurrency", default="1,8" if name == "run" else "",
                       help="load levels of the adaptive server (empty: none)")
        if name == "run":
            p.add_argument("--allow-cpu", action="store_true", help="measure even where no GPU is found")
        else:
            p.add_argument("--part-mib", type=int, default=DEFAULT_PART_MIB)
            p.add_argument("--skip-build", action="store_true")
            p.add_argument("--keep-stage", action="store_true", help="reuse bench/device/stage if packed")
            p.add_argument("--budget-left", type=float, default=900.0)
        p.set_defaults(func=func)
    args = parser.parse_args()
    os.chdir(REPO)
    args.func(args)


if __name__ == "__main__":
    main()
