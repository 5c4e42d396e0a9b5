"""GPU path of training and export: bf16 mixed precision by default, adapter usable on CUDA.
Skipped without a CUDA device."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from deepfakejudge.cli import main
from deepfakejudge.train.record import RUN_FILE

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]

REPO = Path(__file__).resolve().parents[1]


def test_bf16_training_and_export_on_gpu(tiny_model_dir, tmp_path, capsys):
    out = tmp_path / "adapter"
    rc = main(["train", "pairwise", "--base", str(tiny_model_dir), "--data", str(REPO / "examples" / "pairwise.jsonl"),
               "--out", str(out), "--max-steps", "2", "--batch-size", "4", "--grad-accum", "1", "--learning-rate", "1e-3",
               "--max-pixels", str(64 * 28 * 28), "--json"])
    assert rc == 0
    assert json.loads(capsys.readouterr().out)["global_step"] == 2
    record = json.loads((out / RUN_FILE).read_text())
    assert record["config"]["dtype"] == "auto" and record["config"]["device"] == "auto"
    assert record["runtime"]["model_dtype"] == "bfloat16" and record["runtime"]["bf16"]
    assert record["runtime"]["device"].startswith("cuda")
    # Images encoded once on the GPU, batches pinned by the DataLoader and fed as embeddings.
    assert record["runtime"]["visual_cache"]["used"] and record["runtime"]["visual_cache"]["images"] == 14
    assert all(x["loss"] > 0 for x in record["train"]["losses"])
    rc = main(["export", "--adapter", str(out), "--out", str(tmp_path / "merged"), "--dtype", "bfloat16",
               "--parity-samples", "4", "--device", "cuda", "--json"])
    summary = json.loads(capsys.readouterr().out)
    assert rc == 0 and summary["dtype"] == "bfloat16" and summary["parity"]["passed"]
    assert summary["parity"]["tolerance"] == 5e-2


def test_grouped_vision_attention_matches_the_loop_on_gpu(tiny_model_dir, test_images):
    """On CUDA the backend runs the grouped vision attention by default; scores agree with the loop."""
    from deepfakejudge.backends.base import ChatRequest, LoadOptions, PixelBudget
    from deepfakejudge.backends.hf import HFBackend
    from deepfakejudge.records import SCORES

    budget = PixelBudget(3136, 256 * 28 * 28)
    requests = [ChatRequest(text=f"rate {k}", image=im, prefix="<score>") for k, im in test_images.items()]
    probs = {}
    for mode in ("auto", "loop"):
        backend = HFBackend(LoadOptions(model=str(tiny_model_dir), device="cuda", dtype="float32",
                                        vision_attention=mode, budget=budget))
        assert backend.describe()["vision_attention"] == ("grouped" if mode == "auto" else "loop")
        probs[mode] = backend.choice_probs(requests, SCORES)
        backend.close()
    for a, b in zip(probs["auto"], probs["loop"]):
        assert all(abs(a[c] - b[c]) < 1e-4 for c in SCORES)
