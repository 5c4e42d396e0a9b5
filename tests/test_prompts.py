from pathlib import Path

import pytest

from deepfakejudge.prompts import PLACEHOLDERS, default_template, load_template

OFFICIAL = Path(__file__).resolve().parents[2] / "shared" / "reference" / "deepfakejudge-official"
needs_official = pytest.mark.skipif(not OFFICIAL.is_dir(), reason="shared/reference not beside the clone")


@pytest.mark.parametrize("kind", ["pointwise", "pairwise"])
def test_default_templates_have_their_placeholders(kind):
    t = default_template(kind)
    for name in PLACEHOLDERS[kind]:
        assert "{" + name + "}" in t.text
    assert len(t.sha256) == 64 and t.name == "dfj-default" and not t.official


def test_fill_is_single_pass_and_keeps_other_braces(tmp_path):
    path = tmp_path / "t.txt"
    path.write_bytes(b"Label: {ground_truth_label}\r\nA: {response_a}\r\nB: {response_b}\r\n<answer>{A_or_B}</answer>")
    t = load_template(path, "pairwise")
    # A response that itself contains a placeholder must not be substituted again.
    text = t.fill(ground_truth_label="fake", response_a="says {response_b}", response_b="x {0} }{")
    # Read in text mode, as the official scripts read their file: CRLF -> LF.
    assert text == "Label: fake\nA: says {response_b}\nB: x {0} }{\n<answer>{A_or_B}</answer>"
    with open(path) as fh:
        assert t.text == fh.read()


def test_fill_names_missing_values():
    with pytest.raises(ValueError, match=r"missing \['candidate_response'\]"):
        default_template("pointwise").fill(ground_truth_label="real")


def test_template_without_placeholders_is_refused(tmp_path):
    path = tmp_path / "t.txt"
    path.write_text("Rate {candidate_response}")
    with pytest.raises(ValueError, match=r"missing \{ground_truth_label\}"):
        load_template(path, "pointwise")
    with pytest.raises(ValueError, match="cannot read"):
        load_template(tmp_path / "absent.txt", "pointwise")


def test_hash_follows_content(tmp_path):
    a, b = tmp_path / "a.txt", tmp_path / "b.txt"
    a.write_text("{ground_truth_label} {candidate_response}")
    b.write_text("{ground_truth_label}  {candidate_response}")
    assert load_template(a, "pointwise").sha256 != load_template(b, "pointwise").sha256
    assert load_template(a, "pointwise").sha256 == load_template(a, "pointwise").sha256


@pytest.mark.reference
@needs_official
def test_official_templates_load_and_fill_without_keyerror():
    pw = load_template(OFFICIAL / "pointwise_prompt.txt", "pointwise")
    assert "\r" not in pw.text and pw.official  # text mode, as the official scripts read it
    filled = pw.fill(ground_truth_label="edited", candidate_response="<reasoning>r</reasoning> <answer>fake</answer>")
    assert "{integer score from 1 to 5}" in filled and "{ground_truth_label}" not in filled
    pr = load_template(OFFICIAL / "pairwise_prompt.txt", "pairwise")
    filled = pr.fill(ground_truth_label="real", response_a="first", response_b="second")
    assert filled.index("first") < filled.index("second") and "{A_or_B}" in filled
    with pytest.raises(KeyError):
        pr.text.format(ground_truth_label="real", response_a="a", response_b="b")  # why we don't use format
