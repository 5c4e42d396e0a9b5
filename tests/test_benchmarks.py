"""The benchmark scripts run end to end with --tiny (CPU, seconds), so they never rot.

Timings are not asserted (benchmarks, not timed tests); what is: every path of the table ran and
was timed, the JSON carries the table's fields and provenance, the fast paths agree with a plain
forward within the stated tolerance, and the training variants do what they claim (the baseline
differentiates through the vision tower, the cached ones never run it).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))

import judge_throughput
import train_throughput


def run_tiny(script: str, out: Path) -> tuple[dict, str]:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    proc = subprocess.run(
        [sys.executable, str(BENCHMARKS / script), "--tiny", "--out", str(out)],
        check=False, capture_output=True, text=True, timeout=600, env=env,
    )
    assert proc.returncode == 0, f"{script} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
    files = sorted(out.glob("*.json"))
    assert len(files) == 1, files
    assert files[0].name.startswith(script.removesuffix(".py") + "_tiny_CPU")
    result = json.loads(files[0].read_text())
    assert files[0].name.endswith(f"_{result['date'][:10]}.json")
    return result, proc.stdout


@pytest.fixture(scope="module")
def judge_run(tmp_path_factory):
    return run_tiny("judge_throughput.py", tmp_path_factory.mktemp("judge"))


@pytest.fixture(scope="module")
def train_run(tmp_path_factory):
    return run_tiny("train_throughput.py", tmp_path_factory.mktemp("train"))


def check_header(result: dict, name: str) -> None:
    assert result["benchmark"] == name
    assert result["card"].startswith("CPU") and result["device"] == "cpu" and result["dtype"] == "float32"
    assert {"torch", "transformers", "peft", "python", "deepfakejudge"} <= set(result["versions"])
    assert result["ceilings"]["matmul_tflops"] > 0 and result["ceilings"]["copy_gbps"] > 0
    assert result["errors"] == 0
    assert result["parity_all_ok"] is True


def test_judge_table_has_every_path_and_field(judge_run):
    result, stdout = judge_run
    check_header(result, "judge_throughput")
    rows = result["runs"]
    for workload in ("A", "B"):
        mine = {r["path"]: r for r in rows if r["workload"] == workload}
        assert set(mine) == set(judge_throughput.PATHS)
        for path, row in mine.items():
            assert row["size"] == "tiny" and "error" not in row
            assert row["samples_per_s"] > 0 and row["seconds_median"] > 0 and len(row["seconds_all"]) >= 1
            assert "peak_mem_gib" in row  # None on CPU
            if path != "preprocess_only":
                assert row["floor_samples_per_s"] > 0 and row["pct_of_floor"] > 0
            if row["unit"] != "images":
                assert row["ratio_to_naive"] > 0
        assert mine["naive_generate_bs1"]["ratio_to_naive"] == 1.0
        assert mine["ours_pairwise_both"]["unit"] == "pairs"
        # The warm path really ran from the cache: every image of the batch is in it.
        assert mine["ours_score_warm"]["cache"]["entries"] == mine["ours_score_warm"]["batch"]
        # Generate paths wrote exactly the tokens asked for (the floor assumes so).
        new = result["settings"]["new_tokens"]
        assert mine["hf_generate"]["new_tokens_each"] == new
        assert mine["ours_generate"]["new_tokens_each"] == new
        assert mine["ours_generate"]["finished_by_length"] == mine["ours_generate"]["batch"]
    # Prompts have the workload's length (within a few tokens of jitter).
    for row in rows:
        target = result["workloads"][row["workload"]]["prompt_tokens"]
        assert abs(row["prompt_tokens"] - target) <= 12, row
    assert "ours_score_warm" in stdout and "x naive" in stdout


def test_judge_fast_paths_match_a_plain_forward(judge_run):
    result, _ = judge_run
    tol = result["tolerance"]
    assert tol == judge_throughput.TOLERANCE["float32"]
    # The grouped vision attention gives transformers' embeddings (vision_only's) within rounding.
    grouped = [r for r in result["runs"] if r["path"] == "vision_grouped"]
    assert len(grouped) == 2 and all(r["parity_ok"] and r["parity_max_abs_embed_rel"] <= tol["embed_rel"] for r in grouped)
    checked = [r for r in result["runs"] if "parity_ok" in r and r["path"] != "vision_grouped"]
    paths = {r["path"] for r in checked}
    assert paths == {"hf_score_forward", "ours_score_cold", "ours_score_warm", "ours_pointwise_x5", "ours_pairwise_both"}
    for row in checked:
        assert row["parity_ok"] is True and row["parity_checked"] >= 2
        assert 0 <= row["parity_max_abs_prob"] <= tol["prob"]
        if row["parity_max_abs_logprob"] is not None:
            assert row["parity_max_abs_logprob"] <= tol["logprob"]


def test_train_table_has_every_variant_and_field(train_run):
    result, stdout = train_run
    check_header(result, "train_throughput")
    rows = [r for r in result["runs"] if r["variant"] != "vision_encode_once"]
    grid = {(r["variant"], r["checkpointing"], r["batch"]) for r in rows}
    sizes = result["settings"]["batch_sizes"]
    assert grid == {(v, c, n) for v in train_throughput.VARIANTS for c in (True, False) for n in sizes}
    for row in rows:
        assert "error" not in row and row["samples_per_s"] > 0 and row["ratio_to_baseline"] > 0
        assert row["floor_samples_per_s"] > 0 and row["hours_2_epochs_dfj_meta"] > 0
        assert "peak_mem_gib" in row and row["loss"] > 0
        # Only the TRL-style baseline (input grads hooked, checkpointing) differentiates the vision tower.
        assert row["vision_backward"] is (row["variant"] == "pixels" and row["checkpointing"])
    vision = [r for r in result["runs"] if r["variant"] == "vision_encode_once"]
    assert len(vision) == 1 and vision[0]["samples_per_s"] > 0
    assert result["adapter_parameters"]["tiny"] > 0
    assert "cached_answer_logits" in stdout


def test_train_variants_give_the_plain_step_loss_and_gradients(train_run):
    result, _ = train_run
    tol = result["tolerance"]
    assert tol == train_throughput.TOLERANCE["float32"]
    parity = result["parity"]
    assert {(p["variant"], p["checkpointing"]) for p in parity} == {
        (v, c) for v in train_throughput.VARIANTS for c in (True, False)
    }
    for p in parity:
        assert p["ok"] is True
        assert p["loss_diff"] <= tol["loss"] and p["grad_rel_diff"] <= tol["grad_rel"]


# -- the in-memory constructor the judge benchmark uses --------------------------------------------


def test_hf_backend_from_loaded_matches_loading_by_path(tiny_backend, tiny_model_dir, test_images):
    from transformers import Qwen2_5_VLForConditionalGeneration

    from deepfakejudge.backends.base import ChatRequest, GenerationConfig, LoadOptions, PixelBudget
    from deepfakejudge.backends.hf import HFBackend
    from deepfakejudge.backends.processor import ImageTextProcessor

    budget = tiny_backend.options.budget
    model = Qwen2_5_VLForConditionalGeneration.from_pretrained(tiny_model_dir)
    processor = ImageTextProcessor.from_pretrained(str(tiny_model_dir), budget.min_pixels, budget.max_pixels)
    wrapped = HFBackend.from_loaded(model, processor, LoadOptions(model="in-memory", budget=budget))
    assert wrapped.stop_ids == tiny_backend.stop_ids and wrapped.special_ids == tiny_backend.special_ids
    assert wrapped.describe()["model"] == "in-memory" and wrapped.describe()["device"] == "cpu"

    requests = [ChatRequest("Rate it.", test_images["square"], prefix="<score>", image_key="sq"),
                ChatRequest("Rate this one.", test_images["wide"], prefix="<score>", image_key="wd")]
    scores = ["1", "2", "3", "4", "5"]
    for got, want in zip(wrapped.choice_probs(requests, scores), tiny_backend.choice_probs(requests, scores)):
        assert got == pytest.approx(want, rel=1e-5, abs=1e-9)
    assert wrapped.vision_cache.stats()["entries"] == 2  # the cache works on the wrapped model too
    config = GenerationConfig(max_new_tokens=6)
    assert [g.text for g in wrapped.generate(requests, config)] == [g.text for g in tiny_backend.generate(requests, config)]

    with pytest.raises(ValueError, match="pixel budget"):
        HFBackend.from_loaded(model, processor, LoadOptions(model="x", budget=PixelBudget(3136, 2 * budget.max_pixels)))


# -- generate-mode throughput (issue 17) -----------------------------------------------------------


def test_generate_throughput_runs_every_path_with_equal_scores(tmp_path):
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    proc = subprocess.run(
        [sys.executable, str(BENCHMARKS / "generate_throughput.py"), "--tiny", "--items", "4", "--batch", "2",
         "--reasoning", "20", "--max-new-tokens", "40", "--repeats", "1", "--out", str(tmp_path)],
        check=False, capture_output=True, text=True, timeout=600, env=env,
    )
    assert proc.returncode == 0, f"{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
    (path,) = tmp_path.glob("generate_throughput_tiny_CPU*.json")
    result = json.loads(path.read_text())
    runs = {(r["ending"], r["path"]): r for r in result["runs"]}
    assert set(runs) == {(e, p) for e in ("ends-at-tag", "writes-on") for p in ("naive_bs1", "hf_batched", "ours")}
    assert all(r["scores_match"] for r in runs.values()) and result["parity_all_ok"] is True
    for (ending, _path_name), r in runs.items():
        assert r["seconds"] > 0 and len(r["runs_s"]) == 1
        assert r["ours_speedup"] == pytest.approx(r["seconds"] / runs[(ending, "ours")]["seconds"], rel=0.02)
    assert "ours is x faster" in proc.stdout


def test_one_parity_recomputed_here(tmp_path):
    """The judge table's central claim recomputed by the test rather than read from the script's
    `parity_ok`: on the benchmark's own requests, the cached, batched, grouped-attention score path
    (ours_score_warm) gives the choice probabilities of a plain transformers forward run on each
    request alone, within the stated tolerance."""
    import math

    import common
    import torch

    from deepfakejudge.records import SCORES

    args = judge_throughput.parse_args(["--tiny"])
    processor = common.build_processor(str(tmp_path))
    bench = judge_throughput.Bench(args, common.Device("cpu"), "tiny", processor,
                                   {"matmul_tflops": 1.0, "copy_gbps": 1.0}, tmp_path)
    bench.prepare(common.TINY_WORKLOADS["A"])
    backend, requests = bench.backend, bench.score_requests
    bench.ours(True)
    backend.vision_cache.clear()
    backend.choice_probs(requests, SCORES)  # fills the vision cache
    warm = backend.choice_probs(requests, SCORES)
    assert backend.vision_cache.stats()["entries"] == len(requests) == 4
    bench.ours(False)  # the reference: transformers' own vision attention, one request, no cache
    tol = judge_throughput.TOLERANCE["float32"]
    for request, got in zip(requests, warm):
        context, ids = backend.heal(request.prefix, SCORES)
        with torch.inference_mode():
            logits = bench.model(**processor([request], tails=[context])).logits[0, -1].float()
        want = torch.softmax(logits, dim=-1)[ids].tolist()
        assert max(abs(math.log(got[c]) - math.log(w)) for c, w in zip(SCORES, want)) <= tol["logprob"]
        renorm = [got[c] / sum(got.values()) for c in SCORES]
        assert max(abs(x - w / sum(want)) for x, w in zip(renorm, want)) <= tol["prob"]
    backend.close()
