"""The bundled demo dataset in examples/: well-formed records, real edits, reproducible build.

Reads the files directly (no deepfakejudge loader), so it checks the data, not the loader; only
the rubric check uses the project's rubric (`bootstrap.prompts.verdict`) and parser (`parsing`).
"""

from __future__ import annotations

import importlib.util
import json
import re
import subprocess
import sys
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
JSONL_FILES = ("detect.jsonl", "pointwise.jsonl", "pairwise.jsonl")
RECORD_KEYS = {"id", "image", "label", "source", "artifacts", "rationale"}
POINTWISE_KEYS = RECORD_KEYS | {"response", "score"}
PAIRWISE_KEYS = {"id", "image", "label", "source", "response_a", "response_b", "preferred",
                 "score_a", "score_b"}
CATEGORIES = {
    "texture", "edges/boundaries", "lighting and shadows", "reflections", "perspective/geometry",
    "anatomy", "structural fusion/deformation", "text and symbols", "physical plausibility",
    "colour/tone", "noise/blur/resolution", "background coherence", "splice/edit boundary",
}
RESPONSE = re.compile(r"<reasoning>(.+)</reasoning> <answer>(real|fake)</answer>", re.DOTALL)


def read_jsonl(name: str) -> list[dict]:
    lines = (EXAMPLES / name).read_text(encoding="utf-8").splitlines()
    rows = [json.loads(line) for line in lines]
    assert rows and all(isinstance(row, dict) for row in rows)
    return rows


@pytest.fixture(scope="module")
def detect() -> list[dict]:
    return read_jsonl("detect.jsonl")


@pytest.fixture(scope="module")
def pointwise() -> list[dict]:
    return read_jsonl("pointwise.jsonl")


@pytest.fixture(scope="module")
def pairwise() -> list[dict]:
    return read_jsonl("pairwise.jsonl")


@pytest.fixture(scope="module")
def builder():
    """The build script as a module (for its EDITS table); needs scikit-image only to run it."""
    spec = importlib.util.spec_from_file_location("dfj_build_examples", EXAMPLES / "build_examples.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is built
    spec.loader.exec_module(module)
    yield module
    del sys.modules[spec.name]


def pixels(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"), dtype=np.int16)


# ----------------------------------------------------------------------------- structure


@pytest.mark.parametrize("name", JSONL_FILES)
def test_rows_parse_with_unique_ids(name):
    rows = read_jsonl(name)
    ids = [row["id"] for row in rows]
    assert len(ids) == len(set(ids)), [i for i, n in Counter(ids).items() if n > 1]


def test_keys_are_exactly_the_canonical_ones(detect, pointwise, pairwise):
    assert all(set(row) == RECORD_KEYS for row in detect)
    assert all(set(row) == POINTWISE_KEYS for row in pointwise)
    assert all(PAIRWISE_KEYS <= set(row) for row in pairwise)


def test_every_file_covers_the_same_images(detect, pointwise, pairwise):
    images = {row["image"] for row in detect}
    assert len(images) == len(detect)
    assert {row["image"] for row in pointwise} == images
    assert {row["image"] for row in pairwise} == images
    by_image = {row["image"]: (row["label"], row["source"]) for row in detect}
    for row in pointwise + pairwise:
        assert (row["label"], row["source"]) == by_image[row["image"]], row["id"]


def test_labels_sources_and_mix(detect):
    counts = Counter(row["label"] for row in detect)
    assert set(counts) == {"real", "edited", "fake"}
    assert counts["real"] >= 5 and counts["edited"] >= 5 and counts["fake"] >= 1
    prefix = {"real": "skimage:", "edited": "edit:", "fake": "synthetic:"}
    for row in detect:
        assert row["source"].startswith(prefix[row["label"]]), row["id"]


@pytest.mark.parametrize("name", JSONL_FILES)
def test_images_exist_and_open(name):
    for row in read_jsonl(name):
        path = EXAMPLES / row["image"]
        assert not Path(row["image"]).is_absolute() and path.is_file(), row["image"]
        with Image.open(path) as image:
            image.load()
            assert max(image.size) <= 320


def test_artifacts_are_well_formed_and_inside_the_image(detect):
    for row in detect:
        if row["label"] == "real":
            assert row["artifacts"] == [], row["id"]
            continue
        assert row["artifacts"], row["id"]
        with Image.open(EXAMPLES / row["image"]) as image:
            width, height = image.size
        for artifact in row["artifacts"]:
            assert set(artifact) == {"category", "bbox", "expression"}
            assert artifact["category"] in CATEGORIES, artifact["category"]
            assert artifact["expression"].strip()
            x0, y0, x1, y1 = artifact["bbox"]
            assert all(isinstance(v, int) for v in artifact["bbox"])
            assert 0 <= x0 < x1 <= width and 0 <= y0 < y1 <= height, (row["id"], artifact["bbox"])


def test_rationales_are_two_to_four_sentences(detect):
    for row in detect:
        sentences = [s for s in re.split(r"(?<=[.!?])\s+", row["rationale"].strip()) if s]
        assert 2 <= len(sentences) <= 4, (row["id"], len(sentences))


# ----------------------------------------------------------------------------- the edits


def test_edits_change_pixels_inside_their_box_only(detect, builder):
    edits = {edit.id: edit for edit in builder.EDITS}
    edited_rows = [row for row in detect if row["label"] == "edited"]
    assert {row["id"] for row in edited_rows} == set(edits)
    for row in edited_rows:
        edit = edits[row["id"]]
        box = row["artifacts"][0]["bbox"]
        assert box == list(edit.box), row["id"]
        edited = pixels(EXAMPLES / row["image"])
        original = pixels(EXAMPLES / "images" / f"{edit.original}.jpg")
        assert edited.shape == original.shape
        diff = np.abs(edited - original).max(axis=-1)
        height, width = diff.shape
        x0, y0, x1, y1 = box
        assert 0.05 <= (x1 - x0) * (y1 - y0) / (width * height) <= 0.30, row["id"]
        inside = np.zeros(diff.shape, dtype=bool)
        inside[y0:y1, x0:x1] = True
        # JPEG blocks that straddle the box edge may shift a few levels just outside it
        near = np.zeros(diff.shape, dtype=bool)
        near[max(0, y0 - 8) : y1 + 8, max(0, x0 - 8) : x1 + 8] = True
        assert diff[inside].mean() > 5.0, row["id"]
        assert (diff[inside] > 20).mean() > 0.05, row["id"]
        assert diff[~inside].mean() < 0.1, row["id"]
        assert diff[~near].max() <= 1, row["id"]


def test_an_untouched_photo_is_not_mistaken_for_an_edit(builder):
    """The pixel check above can fail: two different photos differ everywhere."""
    a, b = pixels(EXAMPLES / "images" / "chelsea.jpg"), pixels(EXAMPLES / "images" / "coffee.jpg")
    assert a.shape == b.shape and np.abs(a - b).max(axis=-1).mean() > 20


# ----------------------------------------------------------------------------- graded responses


def test_every_image_has_levels_one_to_five_once(detect, pointwise):
    levels = defaultdict(list)
    for row in pointwise:
        levels[row["image"]].append(row["score"])
        assert row["id"] == f"{Path(row['image']).stem}-l{row['score']}"
    assert set(levels) == {row["image"] for row in detect}
    for image, found in levels.items():
        assert sorted(found) == [1, 2, 3, 4, 5], image


def test_responses_follow_the_detector_contract(pointwise):
    for row in pointwise:
        match = RESPONSE.fullmatch(row["response"])
        assert match, row["id"]
        reasoning, _answer = match.groups()
        assert "<" not in reasoning and len(reasoning.split()) >= 15, row["id"]


def test_every_answer_is_the_rubric_verdict_of_its_level(pointwise, pairwise):
    """Levels 3..5 answer the true class and levels 2 and 1 the wrong one, as the bootstrap, the
    evaluator's scale and the docs state it (`verdict`), read with the project's one parser."""
    from deepfakejudge.bootstrap.prompts import verdict
    from deepfakejudge.parsing import parse_prediction

    answers = [(row["id"], row["label"], row["score"], row["response"]) for row in pointwise]
    for row in pairwise:
        answers.append((row["id"], row["label"], row["score_a"], row["response_a"]))
        answers.append((row["id"], row["label"], row["score_b"], row["response_b"]))
    assert len(answers) == 70 + 2 * 56
    off = [(row_id, level, parse_prediction(response), verdict(label, level))
           for row_id, label, level, response in answers if parse_prediction(response) != verdict(label, level)]
    assert not off, "(id, level, answered, the rubric's verdict): " + repr(off)
    # The wrong verdict is "fake" for a real photo and "real" for an edited or fake image: both occur.
    assert {parse_prediction(row["response"]) for row in pointwise if row["score"] == 2} == {"real", "fake"}


def test_responses_are_written_per_image_not_templated(pointwise):
    responses = [row["response"] for row in pointwise]
    assert len(set(responses)) == len(responses)
    top = [RESPONSE.fullmatch(row["response"]).group(1) for row in pointwise if row["score"] == 5]
    # the level-5 explanations of two different images share little wording
    for i, a in enumerate(top):
        for b in top[i + 1 :]:
            wa, wb = set(a.lower().split()), set(b.lower().split())
            assert len(wa & wb) / len(wa | wb) < 0.5


def test_pairs_prefer_the_higher_level_and_are_balanced(pointwise, pairwise):
    response_at = {(row["image"], row["score"]): row["response"] for row in pointwise}
    per_image = defaultdict(Counter)
    for row in pairwise:
        assert row["score_a"] != row["score_b"], row["id"]
        assert row["preferred"] == ("A" if row["score_a"] > row["score_b"] else "B"), row["id"]
        assert row["response_a"] == response_at[(row["image"], row["score_a"])], row["id"]
        assert row["response_b"] == response_at[(row["image"], row["score_b"])], row["id"]
        per_image[row["image"]][row["preferred"]] += 1
    overall = Counter(row["preferred"] for row in pairwise)
    assert overall["A"] == overall["B"]
    for image, counts in per_image.items():
        assert 3 <= sum(counts.values()) <= 4, image
        assert abs(counts["A"] - counts["B"]) <= 1, image
    pairs = {(row["image"], frozenset((row["score_a"], row["score_b"]))) for row in pairwise}
    assert len(pairs) == len(pairwise), "a pair of levels repeats for one image"


# ----------------------------------------------------------------------------- the build


def test_examples_folder_stays_small():
    files = [p for p in EXAMPLES.rglob("*") if p.is_file() and "__pycache__" not in p.parts]
    total = sum(p.stat().st_size for p in files)
    assert total < 1.5e6, total


def test_readme_states_a_licence_for_every_source_photo(detect):
    readme = (EXAMPLES / "README.md").read_text(encoding="utf-8")
    for row in detect:
        if row["label"] == "real":
            loader = row["source"].split(":", 1)[1]
            line = next(line for line in readme.splitlines() if f"skimage.data.{loader}()" in line)
            assert "public domain" in line or "CC0" in line, loader


def test_build_script_reproduces_the_committed_files(tmp_path):
    pytest.importorskip("skimage")
    result = subprocess.run(
        [sys.executable, str(EXAMPLES / "build_examples.py"), "--out", str(tmp_path)],
        capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr
    built = sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*") if p.is_file())
    committed = sorted(
        p.relative_to(EXAMPLES).as_posix()
        for p in [*(EXAMPLES / "images").iterdir(), *(EXAMPLES / name for name in JSONL_FILES)]
    )
    assert built == committed
    for name in built:
        if name.endswith(".jsonl"):
            assert (tmp_path / name).read_bytes() == (EXAMPLES / name).read_bytes(), name
            continue
        # Image bytes may differ across Pillow/libjpeg/scikit-image releases; the pixels may not.
        new, old = (np.asarray(Image.open(p / name).convert("RGB"), dtype=np.int16) for p in (tmp_path, EXAMPLES))
        assert new.shape == old.shape, name
        assert np.abs(new - old).mean() < 1.0, name
