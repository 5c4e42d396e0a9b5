"""LoRA training on the tiny Qwen2.5-VL on CPU: loss logged, adapter changed, base unchanged,
overfitting drives the loss down, resume continues the step count, and `dfj judge --adapter`
reuses the recorded template and pixel budget."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from deepfakejudge.cli import main
from deepfakejudge.train.config import load_config
from deepfakejudge.train.record import RUN_FILE, TEMPLATE_FILE
from deepfakejudge.train.sft import run_training

REPO = Path(__file__).resolve().parents[1]
SMALL_PIXELS = 16 * 28 * 28  # at most 16 visual tokens: cheap on CPU
SHORT_TEMPLATE = "Class: {ground_truth_label}\nExplanation: {candidate_response}\nRate it 1-5."
RATIONALES = (
    "The skin is too smooth.", "Lighting on the left cheek does not match.", "The hands have six fingers.",
    "Text on the sign is garbled.", "Edges around the hair look soft.", "The reflection in the eyes is consistent.",
    "The texture of the wall repeats.", "Shadows and reflections agree.",
)
IMAGES = ("astronaut.jpg", "camera.jpg", "chelsea.jpg", "coffee.jpg", "hubble.jpg", "rocket.jpg",
          "synth_spheres.png", "coffee_smear.jpg")


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def write_short_data(folder: Path) -> tuple[Path, Path]:
    """Eight short pointwise rows over the bundled images, and a short template: fast to train.
    The images are copied beside the data: training reads images only from the data's folder."""
    data = folder / "eight.jsonl"
    (folder / "images").mkdir(exist_ok=True)
    for image in IMAGES:
        shutil.copy(REPO / "examples" / "images" / image, folder / "images" / image)
    rows = [
        {"id": f"item{i}", "image": f"images/{image}", "label": "fake" if i % 2 else "real",
         "response": "<reasoning>Looks fine.</reasoning> <answer>real</answer>", "rationale": rationale,
         "score": i % 5 + 1}
        for i, (rationale, image) in enumerate(zip(RATIONALES, IMAGES))
    ]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    template = folder / "short.txt"
    template.write_text(SHORT_TEMPLATE, encoding="utf-8")
    return data, template


@pytest.fixture(scope="module")
def sharp_model_dir(tiny_model_dir, tmp_path_factory):
    """The tiny model with a 10x output layer. The random tiny model's logits are nearly uniform and
    its frozen lm_head too small to express a peaked distribution, so no adapter could overfit it;
    real checkpoints have no such limit."""
    from transformers import Qwen2_5_VLForConditionalGeneration

    out = tmp_path_factory.mktemp("sharp") / "model"
    shutil.copytree(tiny_model_dir, out)
    model = Qwen2_5_VLForConditionalGeneration.from_pretrained(out)
    with torch.no_grad():
        model.lm_head.weight.mul_(10)
    model.save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def trained(tiny_model_dir, tmp_path_factory):
    """Three steps on the bundled examples/pointwise.jsonl, with a short template (fast on CPU)."""
    folder = tmp_path_factory.mktemp("train")
    _, template = write_short_data(folder)
    out = folder / "adapter"
    before = load_file(tiny_model_dir / "model.safetensors")
    config = load_config("pointwise", {
        "base": str(tiny_model_dir), "data": str(REPO / "examples" / "pointwise.jsonl"), "out": str(out),
        "template": str(template),
        "max_steps": 3, "per_device_train_batch_size": 2, "gradient_accumulation_steps": 1,
        "learning_rate": 1e-3, "logging_steps": 1,
        "max_pixels": SMALL_PIXELS, "device": "cpu", "gradient_checkpointing": False, "save_steps": 100,
    })
    return run_training(config), before


def test_loss_logged_adapter_changed_base_unchanged(trained, tiny_model_dir):
    outcome, before = trained
    losses = outcome.record["train"]["losses"]
    assert [x["step"] for x in losses] == [1, 2, 3]
    assert all(math.isfinite(x["loss"]) and x["loss"] > 0 for x in losses)
    assert outcome.global_step == 3 and outcome.examples == 70

    adapter = load_file(outcome.out / "adapter_model.safetensors")
    assert adapter and all("lora_" in k for k in adapter)
    assert all(".language_model." in k for k in adapter)  # vision tower and merger frozen
    targets = {k.split(".lora_")[0].rsplit(".", 1)[-1] for k in adapter}
    assert targets == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}
    lora_b = [v for k, v in adapter.items() if "lora_B" in k]
    assert lora_b and all(v.abs().sum() > 0 for v in lora_b)  # LoRA B starts at zero: it moved

    # Every base weight of the trained model in memory equals the checkpoint, and the checkpoint
    # file itself is untouched.
    base = {k.replace("base_model.model.", "").replace(".base_layer", ""): p
            for k, p in outcome.model.named_parameters() if "lora_" not in k}
    from transformers import Qwen2_5_VLForConditionalGeneration

    fresh = dict(Qwen2_5_VLForConditionalGeneration.from_pretrained(tiny_model_dir).named_parameters())
    assert base.keys() == fresh.keys()
    assert all(torch.equal(base[k].detach(), fresh[k].detach()) for k in fresh)
    after = load_file(tiny_model_dir / "model.safetensors")
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_run_record(trained):
    outcome, _ = trained
    record = json.loads((outcome.out / RUN_FILE).read_text(encoding="utf-8"))
    assert record["status"] == "done" and record["kind"] == "pointwise"
    assert record["pixel_budget"] == {"min_pixels": 3136, "max_pixels": SMALL_PIXELS}
    from deepfakejudge.prompts import load_template

    template = load_template(record["config"]["template"], "pointwise")
    assert record["template"]["sha256"] == template.sha256
    assert (outcome.out / TEMPLATE_FILE).read_text(encoding="utf-8") == SHORT_TEMPLATE
    assert record["config"]["lora_r"] == 32 and record["config"]["learning_rate"] == 1e-3
    assert record["train"]["train_samples_per_second"] > 0
    assert record["provenance"]["trl"] and record["data"]["skipped"] == 0
    assert record["runtime"]["model_dtype"] == "float32" and not record["runtime"]["bf16"]  # fp32 on CPU
    assert record["runtime"]["device"] == "cpu" and record["runtime"]["effective_batch"] == 2
    visual = record["runtime"]["visual_cache"]  # the 14 example images, each encoded once
    assert visual["used"] and visual["images"] == 14 and visual["bytes"] > 0


def test_judge_with_adapter_uses_recorded_template_and_budget(trained, tiny_model_dir, tmp_path, capsys,
                                                              sent_to_model):
    outcome, _ = trained
    base = ["--model", str(tiny_model_dir), "--adapter", str(outcome.out), "--data",
            str(REPO / "examples" / "pointwise.jsonl"), "--mode", "score-only", "--limit", "2", "--device", "cpu",
            "--json"]
    assert main(["judge", "pointwise", *base, "--out", str(tmp_path / "a.jsonl")]) == 0
    summary = json.loads(capsys.readouterr().out)
    # The judge sent the model the template the adapter was trained with, filled per item.
    first = [json.loads(line) for line in (REPO / "examples" / "pointwise.jsonl").read_text().splitlines()[:2]]
    assert [r.text for r in sent_to_model] == [
        SHORT_TEMPLATE.replace("{ground_truth_label}", r["label"]).replace("{candidate_response}", r["response"])
        for r in first]
    assert summary["settings"]["pixel_budget"] == {"min_pixels": 3136, "max_pixels": SMALL_PIXELS}
    assert summary["settings"]["template"].endswith(TEMPLATE_FILE)
    assert summary["backend"]["max_pixels"] == SMALL_PIXELS
    # An explicit budget still wins.
    assert main(["judge", "pointwise", *base, "--out", str(tmp_path / "b.jsonl"), "--max-pixels", "40000"]) == 0
    assert json.loads(capsys.readouterr().out)["settings"]["pixel_budget"]["max_pixels"] == 40000
    # A pointwise adapter is not a pairwise judge.
    assert main(["judge", "pairwise", *base[:4], "--data", str(REPO / "examples" / "pairwise.jsonl"),
                 "--out", str(tmp_path / "c.jsonl")]) == 2
    assert "trained as a pointwise judge" in capsys.readouterr().err


def test_overfitting_eight_items_drives_the_loss_down(sharp_model_dir, tmp_path):
    data, template = write_short_data(tmp_path)
    config = tmp_path / "overfit.yaml"  # a higher lr than the paper's 1e-6, given through --config
    config.write_text("learning_rate: 5.0e-3\nlr_scheduler_type: constant\nwarmup_ratio: 0.0\nlora_dropout: 0.0\n"
                      "per_device_train_batch_size: 8\neffective_batch_size: 8\nlogging_steps: 1\n"
                      "gradient_checkpointing: false\n"
                      "save_steps: 1000\n", encoding="utf-8")
    out = tmp_path / "overfit"
    rc = main(["train", "pointwise", "--base", str(sharp_model_dir), "--data", str(data), "--template", str(template),
               "--out", str(out), "--config", str(config), "--max-steps", "10", "--max-pixels", str(SMALL_PIXELS),
               "--device", "cpu"])
    assert rc == 0
    losses = [x["loss"] for x in json.loads((out / RUN_FILE).read_text())["train"]["losses"]]
    assert len(losses) == 10
    assert min(losses[-3:]) < 0.35 * losses[0], losses  # measured: 7.9 -> 1.0


def test_resume_continues_the_step_count(tiny_model_dir, tmp_path, capsys):
    data, template = write_short_data(tmp_path)
    out = tmp_path / "run"
    common = ["train", "pointwise", "--base", str(tiny_model_dir), "--data", str(data), "--template", str(template),
              "--out", str(out), "--batch-size", "4", "--grad-accum", "1", "--learning-rate", "1e-3",
              "--max-pixels", str(SMALL_PIXELS),
              "--device", "cpu", "--save-steps", "1", "--set", "logging_steps=1", "--set", "gradient_checkpointing=false"]
    assert main([*common, "--max-steps", "2"]) == 0
    assert (out / "checkpoint-2").is_dir()
    capsys.readouterr()

    assert main([*common, "--max-steps", "4"]) == 2  # an existing run is never overwritten
    assert "--resume" in capsys.readouterr().err
    assert main([*common, "--max-steps", "4", "--resume", "--learning-rate", "1e-2"]) == 2
    assert "learning_rate 0.001 -> 0.01" in capsys.readouterr().err

    # Turning the visual-embedding cache off changes no result: allowed on resume.
    assert main([*common, "--max-steps", "4", "--resume", "--json", "--set", "visual_cache_gb=0"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["global_step"] == 4
    record = json.loads((out / RUN_FILE).read_text())
    assert record["runtime"]["visual_cache"] == {"used": False, "reason": "visual_cache_gb is 0"}
    assert record["train"]["resumed_from"] == "checkpoint-2"
    assert [x["step"] for x in record["train"]["losses"]] == [1, 2, 3, 4]
    state = json.loads((out / "checkpoint-4" / "trainer_state.json").read_text())
    assert state["global_step"] == 4

    # A run folder moved elsewhere (another disk, another machine) resumes there.
    moved = tmp_path / "moved"
    shutil.move(out, moved)
    at = common.index("--out")
    assert main([*common[:at], "--out", str(moved), *common[at + 2:], "--max-steps", "5", "--resume", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["global_step"] == 5
    assert json.loads((moved / RUN_FILE).read_text())["train"]["resumed_from"] == "checkpoint-4"


def test_resume_without_checkpoint_is_an_error(tmp_path, capsys):
    rc = main(["train", "pointwise", "--base", "B", "--data", "D", "--out", str(tmp_path), "--resume"])
    assert rc == 2
    assert "no checkpoint-N folder" in capsys.readouterr().err


def test_frozen_vision_tower_runs_without_grad(tiny_model_dir):
    """The vision tower's forward is kept out of autograd (transformers would otherwise backprop
    through it for nothing); the adapter's loss and gradients are exactly the same."""
    from peft import LoraConfig, get_peft_model
    from transformers import Qwen2_5_VLForConditionalGeneration

    from deepfakejudge.backends.processor import ImageTextProcessor
    from deepfakejudge.data import load_records
    from deepfakejudge.prompts import default_template
    from deepfakejudge.train.collate import JudgeCollator
    from deepfakejudge.train.examples import build_examples
    from deepfakejudge.train.sft import language_model_targets, vision_without_grad

    processor = ImageTextProcessor.from_pretrained(str(tiny_model_dir), 3136, SMALL_PIXELS)
    examples, _ = build_examples(load_records(REPO / "examples" / "pointwise.jsonl").samples[:2],
                                 default_template("pointwise"))
    batch = JudgeCollator(processor)([e.to_row() for e in examples])

    def step(without_grad: bool):
        model = Qwen2_5_VLForConditionalGeneration.from_pretrained(tiny_model_dir)
        if without_grad:
            vision_without_grad(model)
        seen = []
        model.model.visual.register_forward_hook(lambda m, a, out: seen.append(out.pooler_output.requires_grad))
        torch.manual_seed(0)
        peft_model = get_peft_model(model, LoraConfig(r=4, target_modules=language_model_targets(model),
                                                      init_lora_weights=False))
        peft_model.train()
        peft_model.enable_input_require_grads()  # what TRL does for PEFT + gradient checkpointing
        loss = peft_model(**batch).loss
        loss.backward()
        grads = {n: p.grad for n, p in peft_model.named_parameters() if p.requires_grad}
        return loss.item(), grads, seen

    loss_a, grads_a, seen_a = step(without_grad=False)
    loss_b, grads_b, seen_b = step(without_grad=True)
    assert seen_a == [True] and seen_b == [False]  # the graph no longer runs through the tower
    assert loss_a == loss_b
    assert grads_a.keys() == grads_b.keys() and all(torch.equal(grads_a[k], grads_b[k]) for k in grads_a)
    assert torch.is_grad_enabled()  # grad mode restored after the tower


def test_cached_visual_embeddings_give_the_pixel_paths_loss_and_gradients(tiny_model_dir, monkeypatch):
    """Images encoded once before training (`visual_cache_gb`): the batch carries embeddings, the
    tower does not run in the step, and loss and adapter gradients equal the pixel path's."""
    from peft import LoraConfig, get_peft_model
    from transformers import Qwen2_5_VLForConditionalGeneration

    from deepfakejudge.backends.processor import ImageTextProcessor
    from deepfakejudge.data import load_records
    from deepfakejudge.prompts import default_template
    from deepfakejudge.train.collate import JudgeCollator
    from deepfakejudge.train.examples import build_examples
    from deepfakejudge.train.sft import language_model_targets
    from deepfakejudge.train.visual import VisualStore, encode_images

    processor = ImageTextProcessor.from_pretrained(str(tiny_model_dir), 3136, SMALL_PIXELS)
    examples, _ = build_examples(load_records(REPO / "examples" / "pointwise.jsonl").samples[:12],
                                 default_template("pointwise"))
    rows = [e.to_row() for e in examples[::4]]  # three rows, three images
    model = Qwen2_5_VLForConditionalGeneration.from_pretrained(tiny_model_dir)
    torch.manual_seed(0)
    peft_model = get_peft_model(model, LoraConfig(r=4, target_modules=language_model_targets(model),
                                                  init_lora_weights=False))
    store = VisualStore()
    paths = list(dict.fromkeys(e.image for e in examples))
    too_big = encode_images(peft_model, processor, store, paths, visual_tokens=16 * len(paths), max_bytes=100)
    assert not too_big["used"] and "more than" in too_big["reason"] and len(store) == 0
    info = encode_images(peft_model, processor, store, paths, visual_tokens=16 * len(paths), max_bytes=2**30,
                         batch_size=2)
    assert info["used"] and info["images"] == len(store) == len(paths) and info["bytes"] == store.nbytes > 0

    pixels = JudgeCollator(processor)(rows)
    cached = JudgeCollator(processor, visual=store)(rows)
    assert "pixel_values" in pixels and "pixel_values" not in cached and "mm_encoder_outputs" in cached
    for key in ("input_ids", "attention_mask", "labels", "mm_token_type_ids", "image_grid_thw"):
        assert torch.equal(pixels[key], cached[key]), key
    # A GPU run's DataLoader pins every batch. Pinning needs CUDA, so the tensor step is stubbed:
    # the walk reaches every embedding (transformers' ModelOutput would refuse the walk's update()).
    from torch.utils.data._utils.pin_memory import pin_memory
    from transformers.modeling_outputs import BaseModelOutputWithPooling

    pinned_ids = []
    monkeypatch.setattr(torch.Tensor, "pin_memory", lambda t, *a, **k: (pinned_ids.append(id(t)), t)[1])
    pinned = pin_memory(cached)
    embeds = cached["mm_encoder_outputs"]["image"].pooler_output
    assert pinned["mm_encoder_outputs"]["image"].pooler_output == embeds
    assert {id(e) for e in embeds} <= set(pinned_ids)
    with pytest.raises(Exception, match="update"):
        pin_memory({"image": BaseModelOutputWithPooling(pooler_output=embeds)})
    monkeypatch.undo()
    # A row whose image is not in the store: the whole batch takes pixels.
    other = JudgeCollator(processor, visual=VisualStore())(rows)
    assert "pixel_values" in other

    calls = []
    model.model.visual.register_forward_hook(lambda m, a, out: calls.append(1))
    peft_model.train()

    def step(batch):
        for p in peft_model.parameters():
            p.grad = None
        loss = peft_model(**batch).loss
        loss.backward()
        return loss.item(), {n: p.grad.clone() for n, p in peft_model.named_parameters() if p.requires_grad}

    loss_p, grads_p = step(pixels)
    assert calls == [1]
    loss_c, grads_c = step(cached)
    assert calls == [1]  # the tower did not run for the cached batch
    assert loss_c == pytest.approx(loss_p, rel=1e-6)
    for k in grads_p:
        torch.testing.assert_close(grads_c[k], grads_p[k], rtol=1e-4, atol=1e-7)


def test_two_process_data_parallel_training_on_cpu(tiny_model_dir, tmp_path):
    """The multi-GPU path (DDP), on two CPU processes with gloo: torchrun is what `accelerate
    launch --multi_gpu` runs underneath. Each rank trains on its share of every batch; rank 0
    alone writes the adapter and the run record."""
    import os
    import socket
    import subprocess
    import sys

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = tmp_path / "ddp"
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
         "--master_port", str(port), "-m", "deepfakejudge.cli", "train", "pointwise", "--base", str(tiny_model_dir),
         "--data", str(REPO / "examples" / "pointwise.jsonl"), "--out", str(out), "--max-steps", "2",
         # An effective batch of 8 on two processes of 2: the accumulation (2) is derived, as 32 would be.
         "--batch-size", "2", "--effective-batch", "8", "--max-pixels", str(SMALL_PIXELS), "--device", "cpu",
         "--set", "logging_steps=1",
         "--json"],
        capture_output=True, text=True, timeout=300, env=env,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    # rank 0 speaks for both
    assert proc.stderr.count("train pointwise: 70 examples") == proc.stderr.count("visual embeddings: 14 images") == 1
    assert proc.stderr.count("effective batch 8 = 2 per device x 2 device(s) x 2 gradient accumulation step(s)") == 1
    record = json.loads((out / RUN_FILE).read_text())
    assert record["status"] == "done" and record["train"]["global_step"] == 2
    assert record["runtime"]["world_size"] == 2 and record["runtime"]["effective_batch"] == 8
    assert record["config"]["gradient_accumulation_steps"] == 2
    assert record["runtime"]["visual_cache"]["used"] and record["runtime"]["visual_cache"]["images"] == 14
    assert [x["step"] for x in record["train"]["losses"]] == [1, 2]
    adapter = load_file(out / "adapter_model.safetensors")
    assert adapter and all("lora_" in k for k in adapter)
