"""What `--engine ray` costs and gives on this machine: `dfj judge pointwise --mode score-only` on
the tiny model over `--records` records (default 1,000), with the local engine and with Ray.

Two profiles of work per record (`--profile`):
- `toy`: 48x48-64 px noise PNGs at a 16-visual-token budget (`--max-pixels 12544`; 4 visual
  tokens an image): ~8 ms of model work a record, so a run is mostly its fixed start.
- `dfj`: DFJ-like photos, 448-576 px a side (JPEG), at the judges' default pixel budget (no
  `--max-pixels`: 3136..1003520 px, 272-399 visual tokens an image): a run whose model work
  outweighs its start, as any real run's does (a real judge's far more so).

Paths, each a fresh driver process running the real CLI (same data, same flags, batch size 8):
- `local`: the local engine, torch on one thread (what one Ray replica with one CPU gets).
- `ray-1`: `--engine ray --replicas 1 --cpus-per-replica 1` (the records a Ray Dataset, the
  replica a Ray Data actor), joining a running 2-CPU cluster with `--ray-address`. The cluster is
  started once by this script, as `ray start` has it up before a run, and has run one Ray Data job
  before the first path, as a cluster in use has: the first Ray Data job on a cluster starts Ray
  Data's stats actor (a process of its own, kept for the cluster's life), which would otherwise
  fall on whichever path runs first. Both are reported apart (`cluster_start_s`,
  `cluster_first_job_s`).
- `ray-2`: the same with `--replicas 2`.
- `ray-1-own`: `ray-1` without `--ray-address`: the driver starts (and stops) its own local
  cluster, as on a laptop; the difference to `ray-1` is the cluster's start.

Reported per path: wall seconds of the whole command (imports, cluster, model load, judging,
summary), startup seconds (to the first rows written), steady items/s (rows after the first
chunk over the time from the first chunk to the last), and the Ray paths' overhead against
`local`, end to end and steady. Rows of every path are checked to equal the local ones
(scores identical, probabilities within 1e-5).

    python benchmarks/scale_out.py                # toy, ~1.5 min on 2 cores
    python benchmarks/scale_out.py --profile dfj  # ~3 min on 2 cores
    python benchmarks/scale_out.py --quick        # a smoke run: 48 records (tests use it)
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))  # benchmarks/common.py, imported where used
RESULTS_DIR = HERE / "results"
PATHS = ("local", "ray-1", "ray-2", "ray-1-own")


@dataclass(frozen=True)
class Profile:
    """The images judged (sizes cycled over them) and the pixel-budget flags they are judged at."""

    name: str
    sizes: tuple[tuple[int, int], ...]  # (height, width)
    photo: bool  # smooth JPEG content, as photos; else noise PNGs
    flags: tuple[str, ...]


PROFILES = {
    "toy": Profile("toy", tuple((48, 48 + 4 * k) for k in range(5)), False, ("--max-pixels", str(16 * 28 * 28))),
    "dfj": Profile("dfj", tuple((448 + 32 * (k % 5), 480 + 32 * (k % 3)) for k in range(15)), True, ()),
}


def build(workdir: Path, records: int, images: int, profile: Profile) -> tuple[Path, Path]:
    import numpy as np
    from PIL import Image

    from deepfakejudge.backends.tiny import build_tiny_qwen25vl

    model = workdir / "tiny"
    if not (model / "config.json").exists():
        build_tiny_qwen25vl(model, seed=0)
    rng = np.random.default_rng(0)
    names = []
    for i in range(images):
        h, w = profile.sizes[i % len(profile.sizes)]
        if profile.photo:
            # Noise at 1/8 scale, enlarged: smooth regions and edges that compress as a photo does.
            small = rng.integers(0, 256, (h // 8, w // 8, 3), dtype=np.uint8)
            names.append(f"{profile.name}{i}.jpg")
            Image.fromarray(small).resize((w, h), Image.BICUBIC).save(workdir / names[-1], quality=90)
        else:
            names.append(f"im{i}.png")
            Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(workdir / names[-1])
    data = workdir / f"data_{profile.name}_{records}.jsonl"
    with data.open("w") as f:
        for i in range(records):
            f.write(json.dumps({"id": f"r{i}", "image": names[i % images], "label": "fake",
                                "response": f"<reasoning>Region {i} is smeared.</reasoning> <answer>fake</answer>"}) + "\n")
    return model, data


def visual_tokens(profile: Profile, sizes: list[tuple[int, int]]) -> list[int]:
    """Visual tokens of these image sizes at the profile's budget (one per 28x28 px after the resize)."""
    from deepfakejudge.backends.base import PixelBudget
    from deepfakejudge.backends.resize import smart_resize

    flags = dict(zip(profile.flags[::2], profile.flags[1::2]))
    budget = PixelBudget(max_pixels=int(flags["--max-pixels"])) if "--max-pixels" in flags else PixelBudget()
    return sorted({h * w // (28 * 28) for h, w in (smart_resize(h, w, budget) for h, w in sizes)})


def warm_cluster() -> bool:
    """One Ray Data job, as a cluster in use has run: it starts Ray Data's stats actor (kept for the
    cluster's life), waited for here so that its start falls on no path. False: the actor's name
    (Ray Data's internals, as of Ray 2.60) is not where it was, so it was not waited for."""
    import ray
    import ray.data

    ray.data.DataContext.get_current().enable_progress_bars = False
    ray.data.from_items([{"x": 1}]).map_batches(lambda batch: batch).materialize()
    try:
        from ray.data._internal.stats import STATS_ACTOR_NAME, STATS_ACTOR_NAMESPACE
    except ImportError:
        return False
    ray.get(ray.get_actor(STATS_ACTOR_NAME, namespace=STATS_ACTOR_NAMESPACE).__ray_ready__.remote())
    return True


def client(argv: list[str]) -> dict[str, Any]:
    """Run the CLI in this process, timing when rows are written (the progress bar's updates)."""
    import deepfakejudge.cli.judge as cli_judge
    from deepfakejudge.cli import main as dfj

    updates: list[tuple[float, int]] = []

    class Timed:
        def __init__(self, total, desc):
            pass

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return None

        def update(self, n):
            updates.append((time.perf_counter(), n))

    cli_judge.progress = Timed
    code = dfj(argv)
    end = time.perf_counter()
    first_t, first_n = updates[0]
    items = sum(n for _, n in updates)
    steady = (items - first_n) / (updates[-1][0] - first_t) if len(updates) > 1 else None
    return {"exit": code, "first_rows_at": first_t, "end_at": end, "items": items, "updates": len(updates),
            "steady_items_per_s": steady}


def run_path(name: str, model: Path, data: Path, workdir: Path, address: str | None, profile: Profile) -> dict[str, Any]:
    out = workdir / f"{profile.name}_{name}.jsonl"
    argv = ["judge", "pointwise", "--model", str(model), "--data", str(data), "--out", str(out), "--overwrite",
            "--mode", "score-only", "--batch-size", "8", "--allow-errors", "--json", "--device", "cpu", *profile.flags]
    if name.startswith("ray"):
        argv += ["--engine", "ray", "--replicas", name.split("-")[1], "--cpus-per-replica", "1"]
        if name != "ray-1-own":
            argv += ["--ray-address", address]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    env.pop("RAY_ADDRESS", None)
    load = os.getloadavg()[0]
    started = time.perf_counter()
    proc = subprocess.run([sys.executable, __file__, "--client", json.dumps(argv)], capture_output=True, text=True,
                          env=env, timeout=1800)
    wall = time.perf_counter() - started
    if proc.returncode != 0:
        return {"path": name, "error": proc.stderr[-2000:]}
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    summary = json.loads(out.with_name(out.stem + ".summary.json").read_text())
    engine = summary.get("engine") or {}
    # The client's clock is not ours: startup is measured from its own process start (perf_counter
    # origins differ), so take the wall from here and the phases from the client's differences.
    tail = got["end_at"] - got["first_rows_at"]
    return {"path": name, "records": got["items"], "wall_s": round(wall, 2),
            "startup_s": round(wall - tail, 2), "steady_items_per_s": round(got["steady_items_per_s"], 2),
            "items_per_s": round(got["items"] / wall, 2), "load_1min_before": round(load, 2),
            "items_per_replica": engine.get("items_per_replica"), "out": str(out)}


def same_rows(a: Path, b: Path) -> bool:
    ra = {r["id"]: r for r in map(json.loads, a.read_text().splitlines())}
    rb = {r["id"]: r for r in map(json.loads, b.read_text().splitlines())}
    if ra.keys() != rb.keys() or len(rb) != len(b.read_text().splitlines()):
        return False
    for k, x in ra.items():
        y = rb[k]
        if x.get("score") != y.get("score"):
            return False
        if x.get("probs") and any(abs(x["probs"][d] - y["probs"][d]) > 1e-5 for d in x["probs"]):
            return False
    return True


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--profile", choices=sorted(PROFILES), default="toy",
                   help="work per record: toy (4 visual tokens an image) or dfj (DFJ-like images at the default "
                        "budget: 272-399)")
    p.add_argument("--records", type=int, default=1000, help="records judged per path (default 1000)")
    p.add_argument("--images", type=int, default=100, help="distinct images (default 100)")
    p.add_argument("--paths", default=",".join(PATHS), help=f"comma-separated, of {', '.join(PATHS)}")
    p.add_argument("--quick", action="store_true", help="a smoke run: 48 records over 8 images")
    p.add_argument("--workdir", default="/tmp/dfj-scale-out-bench", help="model, images and results files are kept here")
    p.add_argument("--out", default=str(RESULTS_DIR), help="folder for the JSON result")
    p.add_argument("--client", default=None, help=argparse.SUPPRESS)  # internal: one driver process
    args = p.parse_args(argv)

    if args.client:
        print(json.dumps(client(json.loads(args.client))))
        return 0
    if args.quick:
        args.records, args.images = 48, 8
    paths = [x for x in args.paths.split(",") if x]
    if not set(paths) <= set(PATHS) or "local" not in paths:
        p.error(f"--paths: choose from {', '.join(PATHS)}, local included (the baseline)")
    workdir = Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    profile = PROFILES[args.profile]
    model, data = build(workdir, args.records, args.images, profile)
    sizes = sorted({profile.sizes[i % len(profile.sizes)] for i in range(args.images)})
    tokens = visual_tokens(profile, sizes)

    import ray

    started = time.perf_counter()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    cluster_start = time.perf_counter() - started
    started = time.perf_counter()
    stats_actor_waited = warm_cluster()
    first_job = time.perf_counter() - started
    address = ray.get_runtime_context().gcs_address
    from common import cpu_header

    result: dict[str, Any] = {
        **cpu_header("scale_out"),
        "ray": ray.__version__,
        "settings": {"profile": profile.name, "records": args.records, "images": args.images,
                     "image_sizes": sizes, "visual_tokens": tokens,
                     "budget_flags": list(profile.flags), "mode": "score-only", "batch_size": 8, "model": "tiny",
                     "paths": paths},
        "cluster_start_s": round(cluster_start, 2),
        "cluster_first_job_s": round(first_job, 2),
        "stats_actor_waited": stats_actor_waited,
        "runs": [],
    }
    try:
        for name in paths:
            print(f"{name} ...", file=sys.stderr, flush=True)
            result["runs"].append(run_path(name, model, data, workdir, address, profile))
    finally:
        ray.shutdown()
    base = next(r for r in result["runs"] if r["path"] == "local")
    for r in result["runs"]:
        if "error" in r or "error" in base:
            continue
        r["rows_equal_local"] = same_rows(Path(base["out"]), Path(r["out"]))
        r["overhead_vs_local"] = round(r["wall_s"] / base["wall_s"] - 1, 3)
        r["steady_overhead_vs_local"] = round(base["steady_items_per_s"] / r["steady_items_per_s"] - 1, 3)
        r["steady_speedup_vs_local"] = round(r["steady_items_per_s"] / base["steady_items_per_s"], 2)
    result["load_1min_at_end"] = round(os.getloadavg()[0], 2)
    from common import print_table, save_result

    # The toy profile keeps the name it always had: results and the test suite's smoke run find it.
    path = save_result(result, args.out, "scale_out" if profile.name == "toy" else f"scale_out_{profile.name}", args.quick)

    print(f"scale-out, profile {profile.name} ({tokens[0]}-{tokens[-1]} visual tokens an image), on "
          f"{result['machine']}, {result['date']}, load {result['load_1min_at_start']} -> {result['load_1min_at_end']}; "
          f"Ray {result['ray']}, cluster start {result['cluster_start_s']} s, its first Ray Data job "
          f"{result['cluster_first_job_s']} s")
    print_table(result["runs"], [("path", "path", ""), ("records", "records", ""), ("wall_s", "wall s", ".1f"),
                                 ("startup_s", "startup s", ".1f"), ("steady_items_per_s", "steady items/s", ".1f"),
                                 ("steady_speedup_vs_local", "x local", ".2f"),
                                 ("steady_overhead_vs_local", "steady overhead", ".1%"),
                                 ("overhead_vs_local", "end-to-end overhead", ".1%"),
                                 ("rows_equal_local", "rows = local", ""), ("load_1min_before", "load", ".2f")])
    print(f"saved {path}")
    failed = [r for r in result["runs"] if "error" in r or r.get("rows_equal_local") is False]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
