import json
from pathlib import Path

import pytest
from PIL import Image

from deepfakejudge.data import InputError, load_records, open_image, sample_to_dict
from deepfakejudge.prompts import default_template, load_template

OFFICIAL = Path(__file__).resolve().parents[2] / "shared" / "reference" / "deepfakejudge-official"


def _row(**kw):
    row = {"id": "a", "image": "img.png", "label": "fake", "response": "<reasoning>r</reasoning> <answer>fake</answer>"}
    row.update(kw)
    return row


def _write(path: Path, rows) -> Path:
    with path.open("wb") as fh:
        for row in rows:
            fh.write(row if isinstance(row, bytes) else (json.dumps(row) + "\n").encode())
    return path


@pytest.fixture
def folder(tmp_path):
    Image.new("RGB", (40, 30), (120, 10, 10)).save(tmp_path / "img.png")
    return tmp_path


def test_bad_rows_become_errors_and_valid_rows_survive(folder):
    path = _write(folder / "d.jsonl", [
        _row(id="ok1", artifacts=[{"category": "texture", "bbox": [1, 2, 10, 20], "expression": "left"}],
             custom={"keep": 1}),
        b'{"id": "broken", "image": \n',
        b'{"id": "latin1", "image": "img.png", "label": "fake", "response": "caf\xe9"}\n',
        _row(id="lab", label="synthetic"),
        _row(id="ok1", response="again"),
        _row(id="box", artifacts=[{"category": "texture", "bbox": [10, 2, 5, 20]}]),
        _row(id="sc", score=7),
        _row(id=None),
        b"\n",
        _row(id=7, label="REAL"),
    ])
    ds = load_records(path)
    assert [s.id for s in ds.samples] == ["ok1", "7"]
    assert ds.samples[0].extra == {"custom": {"keep": 1}}
    assert ds.samples[1].label == "real"
    by_line = {int(e.where.rsplit(":", 1)[1]): e for e in ds.errors}
    assert sorted(by_line) == [2, 3, 4, 5, 6, 7, 8]
    assert by_line[2].field == "<row>" and "malformed JSON" in by_line[2].message
    assert by_line[3].field == "<row>" and "not UTF-8" in by_line[3].message
    assert by_line[4].field == "label" and "'synthetic'" in by_line[4].message and by_line[4].id == "lab"
    assert by_line[5].field == "id" and "duplicate id 'ok1' (first on line 1)" in by_line[5].message
    assert by_line[5].id is None  # the id stays with the valid first row
    assert by_line[6].field == "artifacts[0].bbox"
    assert by_line[7].field == "score"
    assert by_line[8].field == "id"
    assert str(by_line[4]).startswith(f"{path}:4: field 'label'")


def test_canonical_round_trip(folder):
    path = _write(folder / "d.jsonl", [_row(source="sd-xl", artifacts=[{"category": "anatomy", "bbox": [0, 0, 5, 5], "expression": "hand"}], score=3, extra_field="x")])
    s = load_records(path).samples[0]
    assert s.image == (folder / "img.png").resolve()
    row = sample_to_dict(s, folder)
    assert row == _row(source="sd-xl", artifacts=[{"category": "anatomy", "bbox": [0.0, 0.0, 5.0, 5.0], "expression": "hand"}], score=3, extra_field="x")


def test_split_folder_layout(folder):
    _write(folder / "data.jsonl", [_row()])
    assert len(load_records(folder)) == 1
    (folder / "empty").mkdir()
    with pytest.raises(ValueError, match="must contain data.jsonl"):
        load_records(folder / "empty")
    with pytest.raises(ValueError, match="no such file"):
        load_records(folder / "absent.jsonl")


def test_image_problems(folder):
    (folder / "corrupt.png").write_bytes(Image.open(folder / "img.png").tobytes()[:50])
    path = _write(folder / "d.jsonl", [
        _row(id="missing", image="nope.png"),
        _row(id="corrupt", image="corrupt.png"),
        _row(id="outside", artifacts=[{"category": "texture", "bbox": [0, 0, 41, 10]}]),
        _row(id="fine", artifacts=[{"category": "texture", "bbox": [0, 0, 40, 30]}]),
    ])
    samples = {s.id: s for s in load_records(path).samples}
    for sid, field, text in [("missing", "image", "not found"), ("corrupt", "image", "cannot decode"),
                             ("outside", "artifacts[0].bbox", "outside the 40x30 image")]:
        with pytest.raises(InputError, match=text) as info:
            open_image(samples[sid])
        assert info.value.field == field
    loaded = open_image(samples["fine"])
    assert loaded.size == (40, 30) and len(loaded.sha256) == 64


def test_decompression_bomb_is_refused_before_decoding(folder):
    path = _write(folder / "d.jsonl", [_row()])
    sample = load_records(path).samples[0]
    with pytest.raises(InputError, match="exceeds the limit of 1000"):
        open_image(sample, max_image_pixels=1000)


def test_msswift_rows_with_default_templates(folder):
    pw = default_template("pointwise").fill(ground_truth_label="edited", candidate_response="<reasoning>seam</reasoning> <answer>fake</answer>")
    pr = default_template("pairwise").fill(ground_truth_label="real", response_a="one", response_b="two")
    path = _write(folder / "data.jsonl", [
        {"messages": [{"role": "user", "content": "<image>" + pw}, {"role": "assistant", "content": "<reasoning>ok</reasoning>\n<score>4</score>"}], "images": ["img.png"]},
        {"id": "p1", "messages": [{"role": "user", "content": "<image>" + pr}, {"role": "assistant", "content": "<answer>B</answer>"}], "images": ["img.png"]},
        {"messages": [{"role": "user", "content": "<image>Something else entirely"}], "images": ["img.png"]},
        {"messages": [{"role": "user", "content": "<image>" + pw}], "images": []},
    ])
    ds = load_records(path)
    first, second = ds.samples
    assert (first.id, first.label, first.response, first.score) == ("data-1", "edited", "<reasoning>seam</reasoning> <answer>fake</answer>", 4)
    assert first.extra["target"].endswith("<score>4</score>")
    assert (second.id, second.response_a, second.response_b, second.preferred) == ("p1", "one", "two", "B")
    assert [(e.field, e.where.endswith(str(n))) for e, n in zip(ds.errors, (3, 4))] == [
        ("messages[user].content", True), ("images", True)]


@pytest.mark.reference
@pytest.mark.skipif(not OFFICIAL.is_dir(), reason="shared/reference not beside the clone")
def test_msswift_rows_built_with_the_official_template(folder):
    template = load_template(OFFICIAL / "pointwise_prompt.txt", "pointwise")
    # ms-swift JSON rows usually carry LF line ends even though the template file is CRLF.
    user = template.fill(ground_truth_label="fake", candidate_response="<reasoning>warped text</reasoning> <answer>fake</answer>").replace("\r\n", "\n")
    path = _write(folder / "data.jsonl", [{"messages": [{"role": "user", "content": "<image>" + user}, {"role": "assistant", "content": "<reasoning>x</reasoning>\n<score>2</score>"}], "images": ["img.png"]}])
    assert load_records(path).errors[0].field == "messages[user].content"  # not our template
    s = load_records(path, templates=(template,)).samples[0]
    assert (s.label, s.response, s.score) == ("fake", "<reasoning>warped text</reasoning> <answer>fake</answer>", 2)
    assert s.extra["template_sha256"] == template.sha256


def test_decoded_images_are_reused_until_the_file_changes(folder):
    import os

    path = _write(folder / "d.jsonl", [_row(id="a"), _row(id="b")])
    a, b = load_records(path).samples
    first = open_image(a)
    assert open_image(b) is first  # same file: decoded once
    Image.new("RGB", (40, 30), (0, 200, 0)).save(folder / "img.png")
    os.utime(folder / "img.png", ns=(1, 1))  # a different mtime even on coarse clocks
    again = open_image(a)
    assert again is not first and again.sha256 != first.sha256
    assert again.image.getpixel((0, 0)) == (0, 200, 0)


def test_cli_validate_lists_every_problem_and_stats_counts(folder, capsys):
    from deepfakejudge.cli import main

    path = _write(folder / "d.jsonl", [
        _row(id="ok", artifacts=[{"category": "texture", "bbox": [0, 0, 10, 10], "expression": "x"}], score=4),
        b"{not json\n",
        _row(id="gone", image="missing.png", score=2),
        _row(id="wide", artifacts=[{"category": "anatomy", "bbox": [0, 0, 41, 10]}]),
    ])
    assert main(["data", "validate", str(path), "--json"]) == 1
    out = capsys.readouterr()
    assert json.loads(out.out) == {"data": str(path), "rows": 4, "valid": 1, "problems": 3}
    lines = out.err.strip().splitlines()
    assert [line.split(": field ")[0] for line in lines] == [f"{path}:2", f"{path}:3", f"{path}:4"]
    assert "'image'" in lines[1] and "'artifacts[0].bbox'" in lines[2]
    assert main(["data", "validate", str(path), "--no-images", "--json"]) == 1
    assert json.loads(capsys.readouterr().out)["problems"] == 1
    assert main(["data", "stats", str(path), "--json"]) == 0
    stats = json.loads(capsys.readouterr().out)
    assert stats["rows"] == 3 and stats["errors"] == 1 and stats["images"] == 2
    assert stats["score"] == {"1": 0, "2": 1, "3": 0, "4": 1, "5": 0}
    assert stats["artifact_category"] == {"texture": 1, "anatomy": 1}


def test_dataset_stats_counts_by_hand(tmp_path):
    from deepfakejudge.data import Dataset, dataset_stats
    from deepfakejudge.records import Artifact, RowError, Sample

    a, b = tmp_path / "a.png", tmp_path / "b.png"
    samples = (
        Sample(id="1", image=a, label="fake", source="sd", artifacts=(Artifact("texture"), Artifact("anatomy")),
               response="r", score=2),
        Sample(id="2", image=a, label="fake", source="sd", artifacts=(Artifact("texture"),), response="r", score=5),
        Sample(id="3", image=b, label="real", response_a="x", response_b="y", preferred="B"),
    )
    stats = dataset_stats(Dataset(tmp_path / "d.jsonl", samples, (RowError("d.jsonl:4", "label", "bad"),)))
    assert stats.to_dict() == {
        "data": str(tmp_path / "d.jsonl"), "rows": 3, "errors": 1, "images": 2,
        "label": {"fake": 2, "real": 1}, "source": {"sd": 2, "(none)": 1},
        "score": {"1": 0, "2": 1, "3": 0, "4": 0, "5": 1}, "pointwise_rows": 2, "pairwise_rows": 1,
        "preferred": {"B": 1}, "artifact_category": {"texture": 2, "anatomy": 1},
    }
    assert list(stats.to_dict()["artifact_category"]) == ["texture", "anatomy"]  # most common first
    assert dataset_stats(Dataset(tmp_path / "e.jsonl", samples[2:], ())).score == {}  # no scored row
