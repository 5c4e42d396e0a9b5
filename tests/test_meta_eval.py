"""`dfj meta-eval` on hand-computed cases: joining by id with every mismatch reported, the figures,
their intervals and unparsable counts, and the human-agreement figures. (The statistics are
checked against scipy/sklearn in tests/test_metrics_*.py.)"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from deepfakejudge.cli import main
from deepfakejudge.metrics import cohen_kappa, krippendorff_alpha


def write(path: Path, rows: list) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows), encoding="utf-8")
    return path


def gold_row(i: int, score: int, **extra) -> dict:
    return {"id": f"p{i}", "image": "x.jpg", "label": "real", "response": f"response {i}", "score": score, **extra}


def run_json(capsys, *args: str) -> tuple[int, dict, str]:
    rc = main(["meta-eval", *args, "--json", "--n-resamples", "200"])
    captured = capsys.readouterr()
    return rc, json.loads(captured.out), captured.err


@pytest.fixture
def pointwise_files(tmp_path):
    humans = [{"ann1": 1, "ann2": 1}, {"ann1": 2, "ann2": 3}, {"ann1": 3, "ann2": 3}, {"ann1": 4, "ann2": 5},
              {"ann1": 5, "ann2": 5}]
    gold = write(tmp_path / "gold.jsonl", [gold_row(i + 1, i + 1, human_scores=h) for i, h in enumerate(humans)])
    pred = write(tmp_path / "pred.jsonl", [
        {"id": "p1", "score": 1, "expected_score": 1.2},
        {"id": "p2", "score": 2, "expected_score": 2.0},
        {"id": "p3", "score": 4, "expected_score": 3.5},
        {"id": "p4", "score": 5, "expected_score": 4.6},
        {"id": "p5", "score": None, "expected_score": None},
    ])
    return pred, gold


def test_pointwise_hand_computed(pointwise_files, capsys):
    pred, gold = pointwise_files
    rc, out, err = run_json(capsys, "pointwise", "--pred", str(pred), "--gold", str(gold))
    assert rc == 0  # an unparsable prediction is the judge's failure: listed and counted, not an input error
    assert out["unparsable_rows"] == [f"{pred}:5: id 'p5': no parsable score"]
    assert f"{pred}:5: id 'p5': no parsable score (counted as unparsable)" in err
    # Parsed pairs (gold, judge): (1,1) (2,2) (3,4) (4,5); p5 unparsable.
    assert out["n"] == 5 and out["unparsable"] == 1
    assert out["rmse"] == pytest.approx(math.sqrt(2 / 4))
    assert out["mae"] == pytest.approx(0.5)
    assert out["pearson"] == pytest.approx(7 / math.sqrt(50))  # Σdxdy = 7, Σdx² = 5, Σdy² = 10
    assert out["spearman"] == pytest.approx(1.0) and out["kendall"] == pytest.approx(1.0)
    assert out["exact_agreement"] == pytest.approx(2 / 5) and out["within_one"] == pytest.approx(4 / 5)
    assert out["confusion"] == [[1, 0, 0, 0, 0], [0, 1, 0, 0, 0], [0, 0, 0, 1, 0], [0, 0, 0, 0, 1], [0] * 5]
    fig = {f["key"]: f for f in out["figures"]}
    assert fig["rmse"]["n"] == 4 and fig["exact_agreement"]["n"] == 5 and fig["rmse"]["unparsable"] == 1
    # expected_score: errors .2, 0, .5, .6
    assert fig["rmse_expected"]["value"] == pytest.approx(math.sqrt((0.04 + 0.25 + 0.36) / 4))
    assert fig["mae_expected"]["value"] == pytest.approx(1.3 / 4)
    assert "exact_agreement_expected" not in fig  # fractional scores have no exact agreement
    assert 0.0 <= fig["rmse"]["low"] <= fig["rmse"]["value"] <= fig["rmse"]["high"]  # a 95% interval per figure
    assert fig["pearson"]["low"] is not None and fig["pearson"]["high"] <= 1.0
    assert out["bootstrap"] == {"resamples": 200, "seed": 0, "confidence": 0.95}


def test_pointwise_human_agreement(pointwise_files, capsys):
    pred, gold = pointwise_files
    _, out, _ = run_json(capsys, "pointwise", "--pred", str(pred), "--gold", str(gold))
    fig = {f["key"]: f for f in out["figures"]}
    ann1, ann2, judge = [1, 2, 3, 4, 5], [1, 3, 3, 5, 5], [1, 2, 4, 5, None]
    levels = (1, 2, 3, 4, 5)
    assert fig["kappa_ann1_ann2"]["value"] == pytest.approx(cohen_kappa(ann1, ann2, weights="quadratic", labels=levels))
    assert fig["kappa_ann1_ann2"]["n"] == 5
    assert fig["kappa_judge_ann1"]["value"] == pytest.approx(
        cohen_kappa(ann1[:4], judge[:4], weights="quadratic", labels=levels))
    assert fig["kappa_judge_ann1"]["n"] == 4 and fig["kappa_judge_ann1"]["unparsable"] == 1
    units = [[a, b] for a, b in zip(ann1, ann2)]
    assert fig["alpha_annotators"]["value"] == pytest.approx(krippendorff_alpha(units, level="ordinal"))
    assert fig["alpha_with_judge"]["value"] == pytest.approx(
        krippendorff_alpha([u + [j] for u, j in zip(units, judge)], level="ordinal"))


def test_markdown_table(pointwise_files, capsys):
    pred, gold = pointwise_files
    assert main(["meta-eval", "pointwise", "--pred", str(pred), "--gold", str(gold), "--n-resamples", "50"]) == 0
    text = capsys.readouterr().out
    assert "| figure | value | 95% CI | n | unparsable |" in text
    assert "| RMSE ↓ (score) | 0.707 | [" in text
    assert "| judge | n | RMSE ↓ (score) | Pearson ↑ (score) |" in text
    assert "| 3 | 0 | 0 | 0 | 1 | 0 |" in text  # confusion row: gold 3 judged 4


def test_join_problems_are_reported_with_file_and_line(tmp_path, capsys):
    gold = write(tmp_path / "gold.jsonl", [gold_row(1, 1), gold_row(2, 2), gold_row(3, 3), gold_row(4, 4)])
    pred = write(tmp_path / "pred.jsonl", [
        {"id": "p1", "score": 1},
        "{not json",
        {"id": "p1", "score": 5},
        {"id": "p2", "error": "file not found: x.jpg", "field": "image", "where": "gold.jsonl:2"},
        {"id": "zz", "score": 3},
        {"score": 3},
        {"id": "p4", "score": 7},
    ])
    rc, out, err = run_json(capsys, "pointwise", "--pred", str(pred), "--gold", str(gold))
    assert rc == 1
    assert f"{pred}:2: malformed line" in err
    assert f"{pred}:3: duplicate id 'p1' (first at {pred}:1)" in err
    assert f"{pred}:4: id 'p2': the judge failed on this row (file not found: x.jpg)" in err
    assert f"{pred}:5: prediction 'zz' has no gold row" in err
    assert f"{pred}:6: row has no id" in err
    assert f"{gold}:3: gold row 'p3' has no prediction" in err
    assert f"{pred}:7: score = 7 is not a score 1..5; counted as unparsable" in err
    counts = out["counts"]
    assert (counts["joined"], counts["duplicates"], counts["errors"], counts["malformed"]) == (2, 1, 1, 2)
    assert (counts["missing_prediction"], counts["no_gold_row"]) == (1, 1)
    assert out["n"] == 2 and out["unparsable"] == 1  # p1 (first row) and p4 (out of range)
    assert out["rmse"] == pytest.approx(0.0)
    rc = main(["meta-eval", "pointwise", "--pred", str(pred), "--gold", str(gold), "--n-resamples", "20",
               "--allow-errors", "--json"])
    assert rc == 0
    capsys.readouterr()


def test_nothing_joins_is_an_error(tmp_path, capsys):
    gold = write(tmp_path / "gold.jsonl", [gold_row(1, 1)])
    pred = write(tmp_path / "pred.jsonl", [{"id": "other", "score": 1}])
    assert main(["meta-eval", "pointwise", "--pred", str(pred), "--gold", str(gold)]) == 2
    assert "no prediction joins a gold row" in capsys.readouterr().err


def pair_row(i: int, preferred: str, a: str, b: str) -> dict:
    return {"id": f"q{i}", "image": "x.jpg", "label": "fake", "response_a": a, "response_b": b, "preferred": preferred}


def test_pairwise_hand_computed(tmp_path, capsys):
    gold = write(tmp_path / "gold.jsonl", [pair_row(1, "A", "a1", "b1"), pair_row(2, "B", "a2", "b2"),
                                           pair_row(3, "A", "a3", "b3"), pair_row(4, "B", "a4", "b4")])
    pred = write(tmp_path / "pred.jsonl", [
        {"id": "q1", "choice": "A", "p_a": 0.8, "agree": True},
        {"id": "q2", "choice": "A", "p_a": 0.6, "agree": False},
        {"id": "q3", "choice": None, "p_a": None, "agree": None},
        {"id": "q4", "choice": "B", "p_a": 0.1, "agree": True},
    ])
    # A pointwise judge's scores of the same responses: q1 5 vs 2 -> A (right); q2 tie -> none (wrong);
    # q3 4 vs 1 -> A (right); q4 scores say A but expected scores (used when both have one) say B (right).
    pw_gold = write(tmp_path / "pw_gold.jsonl", [
        {"id": f"r{k}", "image": "x.jpg", "label": "fake", "response": text, "score": 3}
        for k, text in enumerate(["a1", "b1", "a2", "b2", "a3", "b3", "a4", "b4"])])
    pw_pred = write(tmp_path / "pw_pred.jsonl", [
        {"id": "r0", "score": 5}, {"id": "r1", "score": 2}, {"id": "r2", "score": 3}, {"id": "r3", "score": 3},
        {"id": "r4", "score": 4}, {"id": "r5", "score": 1}, {"id": "r6", "score": 2, "expected_score": 2.1},
        {"id": "r7", "score": 1, "expected_score": 2.9}])
    rc, out, _ = run_json(capsys, "pairwise", "--pred", str(pred), "--gold", str(gold),
                          "--pointwise-pred", str(pw_pred), "--pointwise-gold", str(pw_gold))
    assert rc == 0
    assert out["n"] == 4 and out["unparsable"] == 1
    assert out["accuracy"] == pytest.approx(2 / 4)  # q1 right, q2 wrong, q3 unparsable, q4 right
    assert out["accuracy_parsed"] == pytest.approx(2 / 3)
    assert out["consistency"] == pytest.approx(2 / 3)
    fig = {f["key"]: f for f in out["figures"]}
    assert fig["consistency"]["n"] == 3 and fig["consistency"]["unparsable"] == 1
    assert out["accuracy_from_pointwise"] == pytest.approx(3 / 4)
    assert fig["accuracy_from_pointwise"]["unparsable"] == 1  # the tie


def test_pairwise_human_preferences(tmp_path, capsys):
    prefs = [{"h1": "A", "h2": "A"}, {"h1": "B", "h2": "A"}, {"h1": "A", "h2": "A"}, {"h1": "B", "h2": "B"}]
    gold = write(tmp_path / "gold.jsonl", [
        {**pair_row(i, g, "a", "b"), "human_preferences": h} for i, (g, h) in enumerate(zip("ABAB", prefs))])
    pred = write(tmp_path / "pred.jsonl", [{"id": f"q{i}", "choice": c} for i, c in enumerate("AAAB")])
    rc, out, _ = run_json(capsys, "pairwise", "--pred", str(pred), "--gold", str(gold))
    assert rc == 0
    fig = {f["key"]: f for f in out["figures"]}
    h1, h2 = [p["h1"] for p in prefs], [p["h2"] for p in prefs]
    assert fig["kappa_h1_h2"]["value"] == pytest.approx(cohen_kappa(h1, h2, labels=("A", "B")))
    assert fig["kappa_judge_h1"]["value"] == pytest.approx(cohen_kappa(h1, list("AAAB"), labels=("A", "B")))
    assert fig["alpha_annotators"]["value"] == pytest.approx(
        krippendorff_alpha([[a, b] for a, b in zip(h1, h2)], level="nominal"))
    assert "consistency" not in fig  # a one-order run has no `agree`
