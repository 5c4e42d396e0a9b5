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
               "--out", str(out), "--max-steps", "2", "--batch-size", "4", "--learning-rate", "1e-3",
               "--max-pixels", str(64 * 28 * 28), "--json"])
    assert rc == 0
    assert json.loads(capsys.readouterr().out)["global_step"] == 2
    record = json.loads((out / RUN_FILE).read_text())
    assert record["config"]["dtype"] == "auto" and record["config"]["device"] == "auto"
    assert record["runtime"]["model_dtype"] == "bfloat16" and record["runtime"]["bf16"]
    assert record["runtime"]["device"].startswith("cuda")
    assert all(x["loss"] > 0 for x in record["train"]["losses"])
    rc = main(["export", "--adapter", str(out), "--out", str(tmp_path / "merged"), "--dtype", "bfloat16",
               "--parity-samples", "4", "--device", "cuda", "--json"])
    summary = json.loads(capsys.readouterr().out)
    assert rc == 0 and summary["dtype"] == "bfloat16" and summary["parity"]["passed"]
    assert summary["parity"]["tolerance"] == 5e-2
