"""`--engine ray` on a local 2-CPU Ray cluster started once for this module, with two replicas of
the tiny model: rows equal the local engine's, a replica killed mid-run (Ray's own API) loses and
duplicates nothing, a killed driver resumes, and the replica plan follows the cluster."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import ray
from PIL import Image

from deepfakejudge.cli import main
from deepfakejudge.engine.ray_engine import Plan, RayEngine, RayOptions, plan_replicas

SMALL = ["--max-pixels", str(16 * 28 * 28), "--device", "cpu"]
N = 48
EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


@pytest.fixture(scope="module")
def ray_address():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray.get_runtime_context().gcs_address
    ray.shutdown()


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """N rows over four small noise images, plus a missing image and an empty response (error rows)."""
    d = tmp_path_factory.mktemp("ray-data")
    rng = np.random.default_rng(1)
    for i in range(4):
        Image.fromarray(rng.integers(0, 256, (32 + 8 * i, 40, 3), dtype=np.uint8)).save(d / f"im{i}.png")
    rows = [{"id": f"r{i}", "image": f"im{i % 4}.png", "label": "fake" if i % 3 else "real",
             "response": f"<reasoning>Region {i} is smeared.</reasoning> <answer>fake</answer>"} for i in range(N)]
    rows.insert(5, {"id": "missing", "image": "absent.png", "label": "fake", "response": "x"})
    rows.insert(20, {"id": "empty", "image": "im0.png", "label": "fake", "response": "  "})
    path = d / "data.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def by_id(path: Path) -> dict[str, dict]:
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    ids = [r["id"] for r in rows]
    assert len(ids) == len(set(ids)), "an id was written twice"
    return {r["id"]: r for r in rows}


def same_rows(ray_rows: dict, local_rows: dict) -> None:
    """Identical rows, probabilities within 1e-5 (replicas run torch on one thread each)."""
    assert ray_rows.keys() == local_rows.keys()
    for key, want in local_rows.items():
        got = ray_rows[key]
        assert got.keys() == want.keys(), key
        for field, value in want.items():
            if field in ("probs", "score_only") and isinstance(value, dict):
                assert got[field].keys() == value.keys()
                for k, v in value.items():
                    assert got[field][k] == (pytest.approx(v, abs=1e-5) if isinstance(v, float) else v), (key, field, k)
            elif isinstance(value, float):
                assert got[field] == pytest.approx(value, abs=1e-5), (key, field)
            else:
                assert got[field] == value, (key, field)


def pointwise_argv(model, data, out, *extra):
    return ["judge", "pointwise", "--model", str(model), "--data", str(data), "--out", str(out), "--mode", "score-only",
            "--batch-size", "1", "--allow-errors", "--json", *SMALL, *extra]


RAY = ["--engine", "ray", "--replicas", "2", "--cpus-per-replica", "1"]


@pytest.fixture(scope="module")
def local_pointwise(tiny_model_dir, data, tmp_path_factory):
    out = tmp_path_factory.mktemp("local") / "local.jsonl"
    assert main(pointwise_argv(tiny_model_dir, data, out)) == 0
    return by_id(out)


def test_pointwise_score_only_rows_equal_local(ray_address, tiny_model_dir, data, local_pointwise, tmp_path, capsys):
    out = tmp_path / "ray.jsonl"
    assert main(pointwise_argv(tiny_model_dir, data, out, *RAY, "--ray-address", ray_address)) == 0
    summary = json.loads(capsys.readouterr().out)
    rows = by_id(out)
    same_rows(rows, local_pointwise)
    assert sum(r.get("score") is not None for r in rows.values()) == N  # every good row was scored
    assert {rows["missing"]["field"], rows["empty"]["field"]} == {"image", "response"}
    engine = summary["engine"]
    assert engine["replicas"] == 2 and engine["cpus_per_replica"] == 1.0 and engine["chunk_size"] == 4
    # Both replicas worked, and between them judged every row of this run once.
    assert sorted(engine["items_per_replica"]) == ["0", "1"] and all(v > 0 for v in engine["items_per_replica"].values())
    assert engine["restarts_seen"] == {} and engine["chunks_redelivered"] == 0
    assert sum(engine["items_per_replica"].values()) == summary["this_run"]["judged"] == N + 2
    assert summary["backend"]["backend"] == "hf"


def test_detect_generate_rows_equal_local(ray_address, tiny_model_dir, data, tmp_path, monkeypatch, capsys):
    # A relative --model means the same on the replicas as on the driver (they run in its directory).
    monkeypatch.chdir(tiny_model_dir.parent)
    argv = ["detect", "run", "--model", tiny_model_dir.name, "--data", str(data), "--max-new-tokens", "6",
            "--batch-size", "3", "--limit", "24", "--allow-errors", "--json", *SMALL]
    assert main(argv + ["--out", str(tmp_path / "local.jsonl")]) == 0
    assert main(argv + ["--out", str(tmp_path / "ray.jsonl"), *RAY]) == 0  # joins the running cluster
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    same_rows(by_id(tmp_path / "ray.jsonl"), by_id(tmp_path / "local.jsonl"))
    assert summary["engine"]["chunk_size"] == 12 and sum(summary["engine"]["items_per_replica"].values()) == 24


def replica_handle(engine: RayEngine, tag: str):
    """Ray Data's own handle (held in this driver process) of the replica the engine calls `tag`."""
    import gc

    [actor_id] = [a for a, t in engine.tags.items() if t == tag]
    return next(o for o in gc.get_objects() if isinstance(o, ray.actor.ActorHandle) and o._actor_id.hex() == actor_id)


def kill_on_first_rows(monkeypatch, no_restart: bool) -> list:
    """Make the run's progress bar kill replica "0" with `ray.kill` when the first rows are written.
    Returns the list the kill is recorded in."""
    import deepfakejudge.cli.judge as cli_judge

    engines: list[RayEngine] = []
    start = RayEngine.start

    def recording_start(self):
        engines.append(self)
        start(self)

    killed = []

    class KillOnFirstRows:
        def __init__(self, total, desc):
            pass

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return None

        def update(self, n):
            if not killed:
                ray.kill(replica_handle(engines[-1], "0"), no_restart=no_restart)
                killed.append(n)

    monkeypatch.setattr(RayEngine, "start", recording_start)
    monkeypatch.setattr(cli_judge, "progress", KillOnFirstRows)
    return killed


@pytest.mark.parametrize("replicas", [1, 2])
def test_killed_replica_is_restarted_and_loses_and_duplicates_nothing(replicas, ray_address, tiny_model_dir, data,
                                                                      local_pointwise, tmp_path, monkeypatch, capsys):
    """Replica 0 killed at the first rows: Ray restarts it, nothing is lost or written twice. With
    one replica the new process does the pools the old one held and the rest, so the restart is
    seen. With two it may not be: the kill lands up to ~0.5 s after `ray.kill`, and the killed
    replica may have ended its pools by then, the other doing the rest before the restart is up."""
    killed = kill_on_first_rows(monkeypatch, no_restart=False)
    out = tmp_path / "ray.jsonl"
    assert main(pointwise_argv(tiny_model_dir, data, out, "--engine", "ray", "--replicas", str(replicas),
                               "--cpus-per-replica", "1")) == 0
    summary = json.loads(capsys.readouterr().out)
    assert killed
    # A new process answered for the same actor: Ray restarted replica 0 and re-ran what it held.
    if replicas == 1:
        assert summary["engine"]["restarts_seen"] == {"0": 1}
    else:
        assert set(summary["engine"]["restarts_seen"]) <= {"0"}
    same_rows(by_id(out), local_pointwise)
    assert sum(summary["engine"]["items_per_replica"].values()) == N + 2


def test_replica_gone_for_good_stops_with_exit_3_and_a_rerun_completes(ray_address, tiny_model_dir, data,
                                                                       local_pointwise, tmp_path, monkeypatch, capsys):
    """The only replica killed for good at the first rows: nothing is left to judge the rest, so the
    run stops (exit 3, the backend is unavailable) keeping its rows, and the same command resumes.
    Killed holding pools, their task fails Ray Data's execution; killed between pools (the kill
    lands up to ~0.5 s after `ray.kill`), Ray Data's no-progress guard ends it (3 s here)."""
    from ray.data import DataContext

    monkeypatch.setattr(DataContext.get_current(), "execution_no_progress_timeout_s", 3)
    killed = kill_on_first_rows(monkeypatch, no_restart=True)
    out = tmp_path / "ray.jsonl"
    argv = pointwise_argv(tiny_model_dir, data, out, "--engine", "ray", "--replicas", "1", "--cpus-per-replica", "1")
    assert main(argv) == 3
    assert killed
    err = capsys.readouterr().err
    assert "a Ray replica died more than 4 times" in err or "no Ray replica delivered a pool for 3 s" in err
    before = by_id(out)
    assert 1 <= len(before) < N + 2
    monkeypatch.undo()
    assert main(argv) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["this_run"]["judged"] == N + 2 - len(before)
    same_rows(by_id(out), local_pointwise)


def test_unloadable_model_fails_with_the_replicas_error(ray_address, data, tmp_path, capsys):
    """A replica that cannot open its model ends the run with the replica's own error, exit 2,
    as the local engine does (not Ray's wrapper, not a retry loop)."""
    missing = tmp_path / "no-such-model"
    assert main(pointwise_argv(missing, data, tmp_path / "local.jsonl", "--limit", "2")) == 2
    local = capsys.readouterr().err.strip().splitlines()[-1]
    assert main(pointwise_argv(missing, data, tmp_path / "ray.jsonl", "--limit", "2", *RAY)) == 2
    remote = capsys.readouterr().err.strip().splitlines()[-1]
    assert remote == local and f"directory not found: '{missing}'" in remote


def test_killed_driver_resumes(ray_address, tiny_model_dir, data, local_pointwise, tmp_path):
    out = tmp_path / "ray.jsonl"
    argv = pointwise_argv(tiny_model_dir, data, out, *RAY, "--ray-address", ray_address)
    proc = subprocess.Popen([sys.executable, "-m", "deepfakejudge", *argv], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, env=dict(os.environ, PYTHONWARNINGS="ignore"))
    deadline = time.monotonic() + 120
    written = 0
    while time.monotonic() < deadline and proc.poll() is None:
        written = len(out.read_text().splitlines()) if out.exists() else 0
        if written >= 8:  # some chunks in, most not
            proc.send_signal(signal.SIGKILL)
            break
        time.sleep(0.02)
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL, proc.stderr.read().decode()[-3000:]
    before = len(by_id(out))
    assert 8 <= before < N + 2
    assert main(argv) == 0
    assert by_id(out).keys() == local_pointwise.keys()
    same_rows(by_id(out), local_pointwise)
    summary = json.loads((tmp_path / "ray.summary.json").read_text())
    assert summary["this_run"]["judged"] == N + 2 - before  # only what the killed run had not written


def test_reason_score_judge_on_ray_equals_local(ray_address, tiny_model_dir, tmp_path, capsys):
    gold_rows = [json.loads(line) for line in (EXAMPLES / "detect.jsonl").read_text().splitlines()][:6]
    (tmp_path / "images").mkdir()
    for g in gold_rows:
        shutil.copy(EXAMPLES / g["image"], tmp_path / "images" / Path(g["image"]).name)
    gold = tmp_path / "gold.jsonl"
    gold.write_text("".join(json.dumps(dict(g, image=f"images/{Path(g['image']).name}")) + "\n" for g in gold_rows))
    pred = tmp_path / "pred.jsonl"
    pred.write_text("".join(json.dumps({"id": g["id"], "response": f"<reasoning>{g.get('rationale') or 'x'}</reasoning> "
                                        "<answer>fake</answer>"}) + "\n" for g in gold_rows))
    argv = ["reason", "score", "--pred", str(pred), "--gold", str(gold), "--judge", str(tiny_model_dir),
            "--judge-mode", "score-only", "--device", "cpu", "--max-pixels", str(16 * 28 * 28), "--batch-size", "1",
            "--no-reference-check", "--allow-errors", "--json", "--details"]
    assert main(argv + [str(tmp_path / "local.jsonl")]) == 0
    local = json.loads(capsys.readouterr().out)
    assert main(argv + [str(tmp_path / "ray.jsonl"), *RAY]) == 0
    remote = json.loads(capsys.readouterr().out)
    assert local["dfj_score"]["n"] == 6 and remote["dfj_score"] == local["dfj_score"]
    per_item = [[json.loads(line)["dfj_score"] for line in (tmp_path / f).read_text().splitlines()]
                for f in ("local.jsonl", "ray.jsonl")]
    assert per_item[0] == per_item[1]  # in input order, item by item
    assert "judge_engine" not in local and sum(remote["judge_engine"]["items_per_replica"].values()) == 6


# -- the replica plan and option checks (no cluster needed) ---------------------------------------------------


def test_plan_defaults_follow_the_cluster():
    gpu_nodes = [{"CPU": 16.0, "GPU": 4.0}, {"CPU": 16.0, "GPU": 4.0}]
    assert plan_replicas(RayOptions(), gpu_nodes) == Plan(8, 1.0, 1.0)
    assert plan_replicas(RayOptions(gpus_per_replica=2), gpu_nodes) == Plan(4, 2.0, 1.0)
    assert plan_replicas(RayOptions(gpus_per_replica=0.5), gpu_nodes) == Plan(16, 0.5, 1.0)
    # A remote model (or --device cpu) wants no GPU: one replica with a node's CPUs.
    assert plan_replicas(RayOptions(wants_gpu=False), gpu_nodes) == Plan(1, 0.0, 16.0)
    cpu = [{"CPU": 2.0}]
    assert plan_replicas(RayOptions(), cpu) == Plan(1, 0.0, 2.0)
    assert plan_replicas(RayOptions(cpus_per_replica=1), cpu) == Plan(2, 0.0, 1.0)
    assert plan_replicas(RayOptions(replicas=2), cpu) == Plan(2, 0.0, 1.0)


def test_plan_refuses_what_does_not_fit():
    # 3 GPUs per replica: one fits per 4-GPU node, so two in all, not three.
    with pytest.raises(ValueError, match=r"--replicas 3 .* do not fit .* 2 such replica\(s\) fit"):
        plan_replicas(RayOptions(replicas=3, gpus_per_replica=3), [{"CPU": 16.0, "GPU": 4.0}] * 2)
    with pytest.raises(ValueError, match="--replicas must be >= 1"):
        plan_replicas(RayOptions(replicas=0), [{"CPU": 2.0}])
    with pytest.raises(ValueError, match="--cpus-per-replica must be >= 0"):
        plan_replicas(RayOptions(cpus_per_replica=-1), [{"CPU": 2.0}])


def test_ray_options_need_engine_ray(tiny_model_dir, data, tmp_path, capsys):
    code = main(pointwise_argv(tiny_model_dir, data, tmp_path / "o.jsonl", "--replicas", "2"))
    assert code == 2 and "--replicas: only used with --engine ray" in capsys.readouterr().err
    assert not (tmp_path / "o.jsonl").exists()


def test_scale_out_benchmark_runs(tmp_path):
    """benchmarks/scale_out.py --quick end to end (timings are not asserted: the fields are, and
    that each path's rows equal the local engine's)."""
    script = Path(__file__).resolve().parents[1] / "benchmarks" / "scale_out.py"
    proc = subprocess.run([sys.executable, str(script), "--quick", "--paths", "local,ray-2", "--out", str(tmp_path),
                           "--workdir", str(tmp_path / "work")], capture_output=True, text=True, timeout=600,
                          env=dict(os.environ, PYTHONWARNINGS="ignore"))
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    [path] = tmp_path.glob("scale_out_quick_*.json")
    result = json.loads(path.read_text())
    assert [r["path"] for r in result["runs"]] == ["local", "ray-2"] and result["cluster_start_s"] > 0
    local, two = result["runs"]
    assert local["records"] == two["records"] == 48 and two["rows_equal_local"] is True
    assert sorted(two["items_per_replica"]) == ["0", "1"] and sum(two["items_per_replica"].values()) == 48
    for key in ("wall_s", "startup_s", "steady_items_per_s", "overhead_vs_local", "steady_speedup_vs_local"):
        assert isinstance(two[key], (int, float)), key


def test_scale_out_doc_commands_parse():
    """Every `dfj` command line of docs/scale-out.md parses with the CLI's own parser."""
    from deepfakejudge.cli import build_parser

    text = (Path(__file__).resolve().parents[1] / "docs" / "scale-out.md").read_text()
    blocks = [b.split("```", 1)[0] for b in text.split("```bash")[1:]]
    commands = []
    for block in blocks:
        joined = block.replace("\\\n", " ")
        commands += [line.split("#", 1)[0].split() for line in joined.splitlines() if line.startswith("dfj ")]
    parser = build_parser()
    parsed = [parser.parse_args(argv[1:]) for argv in commands]
    assert sum(getattr(args, "engine", None) == "ray" for args in parsed) == 4  # the Ray section's four


def test_replicas_hold_the_openai_client(ray_address, tiny_model_dir, data, tmp_path, capsys):
    """--backend openai: each replica is a client of the same server; rows equal the local client's."""
    from serving import NAME, Server, free_port

    server = Server(tiny_model_dir, free_port(), tmp_path / "server.log", "--insecure-no-key")
    try:
        argv = ["judge", "pointwise", "--model", NAME, "--backend", "openai", "--base-url", server.url + "/v1",
                "--no-cache", "--data", str(data), "--mode", "score-only", "--batch-size", "2", "--limit", "16",
                "--image-workers", "0", "--max-pixels", str(16 * 28 * 28), "--allow-errors", "--json"]
        assert main(argv + ["--out", str(tmp_path / "local.jsonl")]) == 0
        before = server.health()["requests"].get("chat", 0)
        assert main(argv + ["--out", str(tmp_path / "ray.jsonl"), *RAY]) == 0
        served = server.health()["requests"].get("chat", 0) - before
    finally:
        server.stop()
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    same_rows(by_id(tmp_path / "ray.jsonl"), by_id(tmp_path / "local.jsonl"))
    assert summary["backend"]["backend"] == "openai" and summary["engine"]["gpus_per_replica"] == 0.0
    assert all(v > 0 for v in summary["engine"]["items_per_replica"].values())
    assert served >= 15  # the 15 good rows of the first 16 went to the server from the replicas


def test_unreachable_ray_address_is_refused_at_once():
    """Ray would retry an address nothing answers on for minutes; the engine says so at once."""
    import socket

    from deepfakejudge.engine.ray_engine import _check_reachable
    from deepfakejudge.errors import UsageError

    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    started = time.monotonic()
    with pytest.raises(UsageError, match=rf"--ray-address \(or RAY_ADDRESS\) 127.0.0.1:{port}: no Ray cluster answers"):
        _check_reachable(f"127.0.0.1:{port}")
    assert time.monotonic() - started < 5
    _check_reachable("ray://head:10001")  # Ray Client addresses are left to Ray


def _no_backend():
    return None


def _stuck_batches(backend, samples):
    time.sleep(120)  # a replica that never returns its pool (dead for good, or hung)
    yield [None] * len(samples)


def test_no_progress_stops_with_exit_3_rather_than_waiting_forever(ray_address, monkeypatch):
    """Ray Data's no-progress guard firing (no pool back for its timeout: the only replica dead for
    good between pools, or hung) stops the run as BackendUnavailable (exit 3, resumable)."""
    from ray import cloudpickle
    from ray.data import DataContext

    from deepfakejudge.backends.base import BackendUnavailable
    from deepfakejudge.engine import Work
    from deepfakejudge.records import Sample

    monkeypatch.setattr(DataContext.get_current(), "execution_no_progress_timeout_s", 3)
    cloudpickle.register_pickle_by_value(sys.modules[__name__])  # the replica cannot import this test module
    engine = RayEngine(Work(_no_backend, _stuck_batches), RayOptions(replicas=1, cpus_per_replica=1, batch_size=1))
    try:
        with pytest.raises(BackendUnavailable, match="no Ray replica delivered a pool for 3 s"):  # the CLI: exit 3
            list(engine.chunks([Sample(id="a", image=Path("a.png"), label="fake", response="x")]))
    finally:
        cloudpickle.unregister_pickle_by_value(sys.modules[__name__])
        engine.close()
