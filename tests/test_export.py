"""`dfj export`: the merged checkpoint loads with transformers, matches the adapter's outputs and
carries everything a standalone judge needs; `dfj data convert` writes ms-swift and LLaMA-Factory
training rows."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from deepfakejudge.backends.processor import ImageTextProcessor
from deepfakejudge.cli import main
from deepfakejudge.data import load_records, open_image
from deepfakejudge.judge import PointwiseJudge
from deepfakejudge.prompts import default_template, load_template
from deepfakejudge.train.examples import build_examples
from deepfakejudge.train.record import RUN_FILE, TEMPLATE_FILE

REPO = Path(__file__).resolve().parents[1]
POINTWISE = REPO / "examples" / "pointwise.jsonl"
PAIRWISE = REPO / "examples" / "pairwise.jsonl"
SMALL_PIXELS = 16 * 28 * 28


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def adapter(tiny_model_dir, tmp_path_factory):
    """Two steps at a high learning rate: an adapter that visibly changes the outputs."""
    folder = tmp_path_factory.mktemp("export")
    template = folder / "short.txt"
    template.write_text("Class: {ground_truth_label}\nExplanation: {candidate_response}\nRate it 1-5.", encoding="utf-8")
    out = folder / "adapter"
    rc = main(["train", "pointwise", "--base", str(tiny_model_dir), "--data", str(POINTWISE), "--template",
               str(template), "--out", str(out), "--max-steps", "2", "--batch-size", "2", "--grad-accum", "1",
               "--learning-rate", "5e-2",
               "--max-pixels", str(SMALL_PIXELS), "--device", "cpu", "--set", "gradient_checkpointing=false"])
    assert rc == 0
    return out


@pytest.fixture(scope="module")
def exported(adapter, tmp_path_factory):
    out = tmp_path_factory.mktemp("merged") / "judge"
    rc = main(["export", "--adapter", str(adapter), "--out", str(out), "--parity-samples", "4", "--device", "cpu"])
    assert rc == 0
    return out


def test_export_is_a_standalone_checkpoint(exported, tiny_model_dir):
    for name in ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", "chat_template.jinja",
                 "preprocessor_config.json", "video_preprocessor_config.json", RUN_FILE, TEMPLATE_FILE):
        assert (exported / name).is_file(), name
    for name in ("preprocessor_config.json", "video_preprocessor_config.json"):
        config = json.loads((exported / name).read_text())
        assert (config["min_pixels"], config["max_pixels"]) == (3136, SMALL_PIXELS)  # the training budget
    from safetensors import safe_open

    with safe_open(str(exported / "model.safetensors"), "pt") as f:
        keys = list(f.keys())
    assert not any("lora" in k for k in keys)
    with safe_open(str(tiny_model_dir / "model.safetensors"), "pt") as f:
        assert sorted(keys) == sorted(f.keys())  # same weight names as the base: loadable where the base is
    report = json.loads((exported / "dfj_export.json").read_text())
    assert report["parity"]["passed"] and report["parity"]["n"] == 4
    assert report["parity"]["max_abs_diff"] <= report["parity"]["tolerance"] == 1e-3


def test_export_matches_the_adapter_and_differs_from_the_base(exported, adapter, tiny_model_dir):
    from peft import PeftModel
    from transformers import Qwen2_5_VLForConditionalGeneration

    template = load_template(adapter / TEMPLATE_FILE, "pointwise")
    processor = ImageTextProcessor.from_pretrained(str(exported), 3136, SMALL_PIXELS)
    samples = load_records(POINTWISE).samples[:3]
    judge = PointwiseJudge(backend=None, template=template)  # only its request building is used
    batch = processor([judge.request(s, open_image(s)) for s in samples])

    def logits(model):
        with torch.no_grad():
            return model.eval()(**batch).logits

    merged = logits(Qwen2_5_VLForConditionalGeneration.from_pretrained(exported))
    base_model = Qwen2_5_VLForConditionalGeneration.from_pretrained(tiny_model_dir)
    base = logits(base_model)
    with_adapter = logits(PeftModel.from_pretrained(base_model, str(adapter)))
    mask = batch["attention_mask"].bool()
    assert (merged - with_adapter)[mask].abs().max() < 1e-4
    assert (base - with_adapter)[mask].abs().max() > 1e-3  # the adapter does something: parity is not vacuous


def test_judge_on_the_export_reuses_the_recorded_template(exported, tmp_path, capsys, sent_to_model):
    rc = main(["judge", "pointwise", "--model", str(exported), "--data", str(POINTWISE), "--out",
               str(tmp_path / "r.jsonl"), "--mode", "score-only", "--limit", "2", "--device", "cpu", "--json"])
    assert rc == 0
    # The model was sent the training template (the `adapter` fixture's), filled per item.
    first = [json.loads(line) for line in POINTWISE.read_text().splitlines()[:2]]
    assert [r.text for r in sent_to_model] == [
        f"Class: {r['label']}\nExplanation: {r['response']}\nRate it 1-5." for r in first]
    settings = json.loads(capsys.readouterr().out)["settings"]
    assert settings["template"].endswith(TEMPLATE_FILE) and settings["pixel_budget"]["max_pixels"] == SMALL_PIXELS


def test_export_refuses_a_non_empty_out_and_a_non_adapter(adapter, tmp_path, capsys):
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "f").write_text("keep me")
    assert main(["export", "--adapter", str(adapter), "--out", str(tmp_path / "x"), "--no-parity"]) == 2
    assert "not empty" in capsys.readouterr().err
    assert main(["export", "--adapter", str(tmp_path), "--out", str(tmp_path / "y"), "--no-parity"]) == 2
    assert "adapter_config.json" in capsys.readouterr().err


@pytest.mark.parametrize("data, kind", [(POINTWISE, "pointwise"), (PAIRWISE, "pairwise")])
def test_msswift_export_round_trips(data, kind, tmp_path):
    out = tmp_path / "swift" / "train.jsonl"
    assert main(["data", "convert", str(data), "--to", "msswift", "--out", str(out)]) == 0
    template = default_template(kind)
    original = load_records(data).samples
    back = load_records(out, templates=(template,))
    assert not back.errors and len(back.samples) == len(original)
    row = json.loads(out.read_text().splitlines()[0])
    assert row["messages"][0]["content"].startswith("<image>") and (out.parent / row["images"][0]).is_file()
    # Training on the exported rows builds exactly the examples the canonical rows build.
    a, _ = build_examples(original, template)
    b, _ = build_examples(back.samples, template)
    assert [(x.id, x.image, x.prompt, x.target) for x in a] == [(x.id, x.image, x.prompt, x.target) for x in b]


def test_llamafactory_export(tmp_path, capsys):
    out = tmp_path / "lf" / "dfj_pairwise.jsonl"
    assert main(["data", "convert", str(PAIRWISE), "--to", "llamafactory", "--out", str(out), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["rows"] == 56 and summary["kind"] == "pairwise"
    info = json.loads((out.parent / "dataset_info.json").read_text())
    assert info["dfj_pairwise"]["file_name"] == "dfj_pairwise.jsonl"
    assert info["dfj_pairwise"]["formatting"] == "sharegpt"
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    source = [json.loads(line) for line in PAIRWISE.read_text().splitlines()]
    # Each row, in order: the filled pairwise prompt after the image token, and the preferred letter.
    assert [r["id"] for r in rows] == [s["id"] for s in source]
    assert [r["messages"][1]["content"] for r in rows] == [f"<answer>{s['preferred']}</answer>" for s in source]
    text = default_template("pairwise").text
    assert [r["messages"][0]["content"] for r in rows] == [
        "<image>" + text.replace("{ground_truth_label}", s["label"]).replace("{response_a}", s["response_a"]).replace(
            "{response_b}", s["response_b"]) for s in source]
    assert all((out.parent / r["images"][0]).is_file() for r in rows)  # relative to the dataset folder


def test_convert_reports_unusable_rows(tmp_path, capsys):
    data = tmp_path / "d.jsonl"
    rows = [json.loads(line) for line in POINTWISE.read_text().splitlines()[:2]]
    for r in rows:
        r["image"] = str(REPO / "examples" / r["image"])
    del rows[1]["score"]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert main(["data", "convert", str(data), "--to", "msswift", "--out", str(tmp_path / "o.jsonl"),
                 "--image-root", str(REPO / "examples")]) == 1
    assert "d.jsonl:2: field 'score'" in capsys.readouterr().err
    assert len((tmp_path / "o.jsonl").read_text().splitlines()) == 1


def test_convert_reads_images_only_from_the_data_folder_and_image_roots(tmp_path, capsys):
    """A row naming an image outside the data's folder (`../x`, a symlink out) is an error row naming
    --image-root, not a written row that would make the trainer read that file."""
    row = json.loads(POINTWISE.read_text().splitlines()[0])
    source = REPO / "examples" / row["image"]
    outside, folder = tmp_path / "outside", tmp_path / "data"
    outside.mkdir()
    folder.mkdir()
    shutil.copy(source, outside / "a.jpg")
    shutil.copy(source, folder / "in.jpg")
    (folder / "link.jpg").symlink_to(outside / "a.jpg")
    rows = [{**row, "id": "in", "image": "in.jpg"}, {**row, "id": "up", "image": "../outside/a.jpg"},
            {**row, "id": "link", "image": "link.jpg"}]
    data = folder / "d.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "o.jsonl"
    args = ["data", "convert", str(data), "--to", "msswift", "--out", str(out)]
    assert main(args) == 1
    err = capsys.readouterr().err
    assert "d.jsonl:2: field 'image'" in err and "d.jsonl:3: field 'image'" in err and "--image-root" in err
    assert [json.loads(line)["images"][0] for line in out.read_text().splitlines()] == [str(folder / "in.jpg")]
    assert main([*args, "--image-root", str(outside)]) == 0
    assert len(out.read_text().splitlines()) == 3


def _swift_open(path: str, cwd: Path, root: Path | None) -> Path:
    """How ms-swift finds an image named in a row: a relative path against $ROOT_IMAGE_DIR if set,
    else against the working directory; never against the dataset file."""
    p = Path(path)
    return p if p.is_absolute() else (root if root is not None else cwd) / p


def test_msswift_image_paths_resolve_from_any_working_directory(tmp_path, capsys, monkeypatch):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    out = tmp_path / "swift" / "train.jsonl"
    assert main(["data", "convert", str(POINTWISE), "--to", "msswift", "--out", str(out), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["image_paths"] == "absolute"
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    monkeypatch.chdir(elsewhere)  # training from another folder than the file's
    assert all(Path(r["images"][0]).is_absolute() for r in rows)
    assert all(_swift_open(r["images"][0], elsewhere, None).is_file() for r in rows)
    # Relative to a root the user names: the summary says how to train (ROOT_IMAGE_DIR).
    assert main(["data", "convert", str(POINTWISE), "--to", "msswift", "--out", str(out),
                 "--relative-to", str(REPO), "--json"]) == 0
    said = json.loads(capsys.readouterr().out)["image_paths"]
    assert said == f"relative to {REPO}: train with ROOT_IMAGE_DIR={REPO} (or from that folder)"
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert all(r["images"][0].startswith("examples/") for r in rows)
    assert all(_swift_open(r["images"][0], elsewhere, REPO).is_file() for r in rows)
    # LLaMA-Factory resolves against its dataset folder: the option does not apply there.
    assert main(["data", "convert", str(POINTWISE), "--to", "llamafactory", "--out", str(tmp_path / "lf.jsonl"),
                 "--relative-to", str(REPO)]) == 2
    assert "--relative-to" in capsys.readouterr().err
