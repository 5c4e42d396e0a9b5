"""Training examples: answers built from rows, prompts identical to inference token by token,
loss only on the answer, and sequences refused rather than cut."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

import pytest

from deepfakejudge.cli import main
from deepfakejudge.data import InputError, load_records, open_image
from deepfakejudge.judge import PairwiseJudge, PointwiseJudge
from deepfakejudge.prompts import default_template
from deepfakejudge.train.collate import IGNORE_INDEX, JudgeCollator, visual_tokens
from deepfakejudge.train.examples import build_example, build_examples, target_text
from deepfakejudge.train.prepare import prepare_examples

REPO = Path(__file__).resolve().parents[1]
POINTWISE = REPO / "examples" / "pointwise.jsonl"
PAIRWISE = REPO / "examples" / "pairwise.jsonl"


@pytest.fixture(scope="module")
def pointwise_samples():
    return load_records(POINTWISE).samples


@pytest.fixture(scope="module")
def pairwise_samples():
    return load_records(PAIRWISE).samples


def test_targets_from_rows(pointwise_samples, pairwise_samples):
    s = pointwise_samples[0]
    assert target_text(s, "pointwise") == f"<reasoning>{s.rationale.strip()}</reasoning>\n<score>{s.score}</score>"
    p = pairwise_samples[0]
    assert target_text(p, "pairwise") == f"<answer>{p.preferred}</answer>"
    given = "<reasoning>Grounded.</reasoning>\n<score>5</score>"
    assert target_text(replace(s, score=5, extra={"target": given}), "pointwise") == given


@pytest.mark.parametrize(
    "change, field",
    [({"score": None}, "score"), ({"rationale": None}, "rationale"), ({"response": " "}, "response"),
     ({"score": 2, "extra": {"target": "<reasoning>x</reasoning><score>5</score>"}}, "target"),
     ({"extra": {"target": "<reasoning><score>5</score></reasoning>"}}, "target")],
)
def test_unusable_pointwise_rows_name_the_field(pointwise_samples, change, field):
    bad = replace(pointwise_samples[0], **change)
    with pytest.raises(InputError) as err:
        build_example(bad, default_template("pointwise"))
    assert err.value.field == field
    _, errors = build_examples([bad], default_template("pointwise"))
    assert errors[0].field == field and errors[0].where.endswith(":1")


def test_pairwise_without_preference_is_an_error(pairwise_samples):
    with pytest.raises(InputError, match="gold preference") as err:
        build_example(replace(pairwise_samples[0], preferred=None), default_template("pairwise"))
    assert err.value.field == "preferred"


def _inference_ids(backend, request):
    batch = backend.processor([request])
    return batch["input_ids"][0].tolist(), batch["pixel_values"]


@pytest.mark.parametrize("kind", ["pointwise", "pairwise"])
def test_training_prompt_is_the_inference_prompt(tiny_backend, pointwise_samples, pairwise_samples, kind):
    samples = (pointwise_samples if kind == "pointwise" else pairwise_samples)[:3]
    template = default_template(kind)
    judge = (PointwiseJudge if kind == "pointwise" else PairwiseJudge)(tiny_backend, template=template)
    examples = [build_example(s, template) for s in samples]
    batch = JudgeCollator(tiny_backend.processor)([e.to_row() for e in examples])
    tok = tiny_backend.processor.tokenizer
    offset = 0
    for row, (sample, example) in enumerate(zip(samples, examples)):
        image = open_image(sample)
        request = judge.request(sample, image) if kind == "pointwise" else judge.request(sample, image, swapped=False)
        want, pixels = _inference_ids(tiny_backend, request)
        got = batch["input_ids"][row].tolist()
        assert got[: len(want)] == want  # same tokens, image tokens included
        labels = batch["labels"][row].tolist()
        assert all(x == IGNORE_INDEX for x in labels[: len(want)])  # no loss on the prompt
        answer = [x for x in labels[len(want):] if x != IGNORE_INDEX]
        # The loss covers the end of the turn as ms-swift >= 3.11 does: <|im_end|> and the newline.
        assert tok.decode(answer) == example.target + "<|im_end|>\n"
        # Prompt + answer is the chat template's own rendering of the two-turn conversation.
        rendered = tok.apply_chat_template(
            [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": example.prompt}]},
             {"role": "assistant", "content": example.target}],
            chat_template=tiny_backend.processor.chat_template, tokenize=False)
        assert tok.decode([x for x in got if x != tiny_backend.processor.pad_token_id]).replace(
            "<|image_pad|>", "") == rendered.replace("<|image_pad|>", "")
        n = pixels.shape[0]
        assert batch["pixel_values"][offset: offset + n].equal(pixels)  # same pixels as at inference
        offset += n
    assert batch["mm_token_type_ids"].sum() == (batch["input_ids"] == tiny_backend.processor.image_token_id).sum()


def test_end_of_turn_option_keeps_the_old_loss(tiny_backend, pointwise_samples):
    template = default_template("pointwise")
    example = build_example(pointwise_samples[0], template)
    tok = tiny_backend.processor.tokenizer
    answers = {}
    for end in ("im_end_newline", "im_end"):
        labels = JudgeCollator(tiny_backend.processor, end_of_turn=end)([example.to_row()])["labels"][0].tolist()
        answers[end] = [x for x in labels if x != IGNORE_INDEX]
    assert tok.decode(answers["im_end"]) == example.target + "<|im_end|>"
    assert answers["im_end_newline"] == answers["im_end"] + tok("\n", add_special_tokens=False)["input_ids"]


def test_visual_token_count_from_size_matches_the_processor(tiny_backend, test_images):
    from deepfakejudge.backends.base import ChatRequest

    for image in test_images.values():
        _, counts = tiny_backend.processor.image_inputs([ChatRequest(text="x", image=image)])
        assert visual_tokens(tiny_backend.processor, image.size) == counts[0]


def test_overlong_rows_are_refused_never_cut(tiny_backend, tiny_model_dir, tmp_path, capsys):
    template = default_template("pointwise")
    full = prepare_examples(POINTWISE, template, tiny_backend.processor, max_length=100_000)
    assert len(full.examples) == 70 and not full.errors
    lengths = sorted(
        len(JudgeCollator(tiny_backend.processor)([e.to_row()])["input_ids"][0]) for e in full.examples
    )
    assert full.longest == lengths[-1]  # the pre-check measures exactly what the collator builds
    limit = lengths[len(lengths) // 2]
    cut = prepare_examples(POINTWISE, template, tiny_backend.processor, max_length=limit)
    assert len(cut.examples) == sum(n <= limit for n in lengths)
    assert {e.field for e in cut.errors} == {"<sequence>"} and cut.too_long == len(cut.errors)
    assert "never cut" in cut.errors[0].message
    # The newline after <|im_end|> is one more token per row in the length check too.
    old = prepare_examples(POINTWISE, template, tiny_backend.processor, max_length=100_000, end_of_turn="im_end")
    assert old.longest == full.longest - 1

    # The command refuses before loading the model, and says how to go on.
    args = ["train", "pointwise", "--base", str(tiny_model_dir), "--data", str(POINTWISE), "--out",
            str(tmp_path / "run"), "--max-length", str(limit), "--max-pixels", str(64 * 28 * 28)]
    assert main(args) == 2
    err = capsys.readouterr().err
    dropped = len(cut.errors)
    assert f"{dropped} of 70 rows cannot be trained on" in err and "pointwise.jsonl:" in err
    assert f"{dropped} of them longer than max_length {limit}" in err
    assert f"pass --allow-errors to train on the {70 - dropped} usable rows" in err
    assert not (tmp_path / "run" / "adapter_model.safetensors").exists()
    # --dry-run reports the count (and the batch plan) without training.
    assert main([*args, "--dry-run", "--allow-errors", "--json"]) == 0
    checked = json.loads(capsys.readouterr().out)
    assert checked["data"]["too_long"] == dropped and checked["data"]["examples"] == 70 - dropped


def test_unreadable_image_is_reported_with_its_line(tmp_path, tiny_backend):
    rows = [json.loads(line) for line in POINTWISE.read_text(encoding="utf-8").splitlines()[:2]]
    for r in rows:
        r["image"] = str(REPO / "examples" / r["image"])
    rows[1]["image"] = str(tmp_path / "missing.jpg")
    data = tmp_path / "d.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    prepared = prepare_examples(data, default_template("pointwise"), tiny_backend.processor, 100_000,
                                image_roots=[REPO / "examples"])
    assert len(prepared.examples) == 1
    assert prepared.errors[0].field == "image" and prepared.errors[0].where.endswith(":2")


def test_images_outside_the_data_folder_are_refused_unless_allowed(tmp_path, tiny_model_dir, capsys):
    """`dfj train` reads images only from the data file's folder and the `--image-root` folders
    (symlinks resolved), as `dfj judge` does: a data file cannot make training read any file."""
    row = json.loads(POINTWISE.read_text(encoding="utf-8").splitlines()[0])
    source = REPO / "examples" / row["image"]
    outside = tmp_path / "outside"
    outside.mkdir()
    shutil.copy(source, outside / "a.jpg")
    folder = tmp_path / "data"
    folder.mkdir()
    shutil.copy(source, folder / "inside.jpg")
    (folder / "link.jpg").symlink_to(outside / "a.jpg")
    rows = [{**row, "id": "in", "image": "inside.jpg"}, {**row, "id": "up", "image": "../outside/a.jpg"},
            {**row, "id": "link", "image": "link.jpg"}]
    data = folder / "d.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    args = ["train", "pointwise", "--base", str(tiny_model_dir), "--data", str(data), "--out", str(tmp_path / "run"),
            "--max-pixels", str(64 * 28 * 28)]

    assert main(args) == 2  # refused before the model loads, as other rows that cannot be used
    err = capsys.readouterr().err
    assert "2 of 3 rows cannot be trained on" in err and "--image-root" in err
    assert "d.jsonl:2: field 'image'" in err and "d.jsonl:3: field 'image'" in err
    assert not (tmp_path / "run" / "adapter_model.safetensors").exists()

    args += ["--dry-run", "--json"]
    assert main(args) == 0
    checked = json.loads(capsys.readouterr().out)
    assert checked["data"]["examples"] == 1 and checked["data"]["skipped"] == 2

    # Allowing the folder (flag, or a YAML list) makes both usable; the inside image always was.
    assert main([*args, "--image-root", str(outside)]) == 0
    checked = json.loads(capsys.readouterr().out)
    assert checked["data"]["examples"] == 3 and checked["config"]["image_root"] == [str(outside)]
    config = tmp_path / "c.yaml"
    config.write_text(f"image_root:\n  - {outside}\n", encoding="utf-8")
    assert main([*args, "--config", str(config)]) == 0
    assert json.loads(capsys.readouterr().out)["data"]["examples"] == 3
