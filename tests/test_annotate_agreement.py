"""Agreement figures of `dfj annotate` against hand-computed cases, and the taxonomy file."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("yaml", reason="needs the annotate extra: pip install -e '.[annotate]'")

from deepfakejudge.annotate import DEFAULT_TAXONOMY, Rating, agreement_report, iou, load_taxonomy, match_boxes  # noqa: E402

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def ratings(kind: str, attr: str, first: list, second: list) -> list[Rating]:
    out = []
    for i, (a, b) in enumerate(zip(first, second)):
        out.append(Rating(item=f"i{i}", kind=kind, annotator="alice", rank=0, **{attr: a}))
        out.append(Rating(item=f"i{i}", kind=kind, annotator="bob", rank=1, **{attr: b}))
    return out


def test_iou_hand_cases():
    assert iou([0, 0, 10, 10], [5, 0, 15, 10]) == pytest.approx(50 / 150)
    assert iou([0, 0, 10, 10], [0, 0, 5, 5]) == pytest.approx(25 / 100)
    assert iou([0, 0, 10, 10], [0, 0, 10, 10]) == 1.0
    assert iou([0, 0, 10, 10], [10, 0, 20, 10]) == 0.0  # touching edges share no area


def test_match_boxes_is_one_to_one_and_maximal():
    a = [[0, 0, 10, 10], [20, 20, 30, 30]]
    b = [[21, 20, 31, 30], [0, 0, 10, 5]]
    assert sorted(match_boxes(a, b)) == [(0, 1, pytest.approx(0.5)), (1, 0, pytest.approx(90 / 110))]
    assert match_boxes(a, []) == [] and match_boxes([[0, 0, 1, 1]], [[5, 5, 6, 6]]) == []
    rng = np.random.default_rng(0)
    for _ in range(30):  # against brute force over all one-to-one assignments
        def boxes(n):
            xy = rng.uniform(0, 40, (n, 2))
            return [[x, y, x + w, y + h] for (x, y), (w, h) in zip(xy, rng.uniform(5, 30, (n, 2)))]
        a, b = boxes(3), boxes(3)
        best = max(sum(iou(a[i], b[j]) for i, j in zip(range(3), perm)) for perm in itertools.permutations(range(3)))
        assert sum(m[2] for m in match_boxes(a, b)) == pytest.approx(best)


def test_class_agreement_hand_computed():
    # alice: real fake fake edited / bob: real fake edited edited
    # p_o = 3/4, p_e = (1·1 + 2·1 + 1·2)/16 = 5/16, kappa = (3/4 − 5/16)/(1 − 5/16) = 7/11.
    # alpha (nominal): n = 8, D_o = 2 (the fake/edited unit), D_e = 8² − (2² + 3² + 3²) = 42,
    # alpha = 1 − 7·2/42 = 2/3.
    report = agreement_report(ratings("annotate", "label", ["real", "fake", "fake", "edited"],
                                      ["real", "fake", "edited", "edited"]))
    assert report["label"]["n"] == 4
    assert report["label"]["observed"] == pytest.approx(3 / 4)
    assert report["label"]["kappa"] == pytest.approx(7 / 11)
    assert report["label"]["alpha"] == pytest.approx(2 / 3)


def test_score_agreement_hand_computed():
    # alice 5 4 2 1 / bob 5 3 2 2: p_o = 1/2, p_e = (1·1 + 1·2)/16 = 3/16, kappa = 5/13.
    # interval alpha: coincidences 4–3, 3–4, 1–2, 2–1 (δ² = 1 each) → Σ o·δ² = 4; value counts
    # n_1..n_5 = 1, 3, 1, 1, 2 → Σ n_c n_k δ² = 256; alpha = 1 − 7·4/256 = 0.890625.
    first, second = [5, 4, 2, 1], [5, 3, 2, 2]
    report = agreement_report(ratings("pointwise", "score", first, second))["score"]
    assert report["n"] == 4 and report["observed"] == 0.5
    assert report["kappa"] == pytest.approx(5 / 13)
    assert report["alpha_interval"] == pytest.approx(0.890625)
    sklearn = pytest.importorskip("sklearn.metrics")
    assert report["kappa_quadratic"] == pytest.approx(
        sklearn.cohen_kappa_score(first, second, weights="quadratic", labels=[1, 2, 3, 4, 5]))
    # ordinal alpha: δ²(c, k) = (n_c + … + n_k − (n_c + n_k)/2)², so δ²(3, 4) = (2 − 1)² = 1 and
    # δ²(1, 2) = (4 − 2)² = 4 → Σ o·δ² = 2·1 + 2·4 = 10; Σ n_c n_k δ² over ordered pairs
    # = 2·(12 + 16 + 25 + 84.5 + 12 + 27 + 121.5 + 1 + 12.5 + 4.5) = 632; alpha = 1 − 7·10/632 = 281/316.
    assert report["alpha_ordinal"] == pytest.approx(281 / 316)


def test_preference_agreement_hand_computed():
    # alice A B A / bob A B B: p_o = 2/3, p_e = (2·1 + 1·2)/9 = 4/9, kappa = (2/9)/(5/9) = 0.4.
    report = agreement_report(ratings("pairwise", "choice", ["A", "B", "A"], ["A", "B", "B"]))["preference"]
    assert report["n"] == 3 and report["kappa"] == pytest.approx(0.4)


def test_box_agreement_hand_computed():
    box = (0.0, 0.0, 10.0, 10.0)
    data = [
        # item 0: one box each, IoU 1/3 → item IoU 1/3, no match at 0.5
        Rating("i0", "annotate", "alice", 0, label="fake", boxes=(("texture", box),)),
        Rating("i0", "annotate", "bob", 1, label="fake", boxes=(("texture", (5.0, 0.0, 15.0, 10.0)),)),
        # item 1: alice 2 boxes, bob 1 identical to alice's first → item IoU 1/2, one match, other category
        Rating("i1", "annotate", "alice", 0, label="fake", boxes=(("texture", box), ("anatomy", (20.0, 20.0, 30.0, 30.0)))),
        Rating("i1", "annotate", "bob", 1, label="fake", boxes=(("edges/boundaries", box),)),
        # item 2: neither drew a box
        Rating("i2", "annotate", "alice", 0, label="real"),
        Rating("i2", "annotate", "bob", 1, label="real"),
        # item 3: one annotator only: ignored
        Rating("i3", "annotate", "alice", 0, label="fake", boxes=(("texture", box),)),
    ]
    boxes = agreement_report(data)["boxes"]
    assert boxes["n_items"] == 2 and boxes["n_items_without_boxes"] == 1
    assert boxes["mean_iou"] == pytest.approx((1 / 3 + 1 / 2) / 2)
    assert boxes["f1_at_50"] == pytest.approx(2 * 1 / (2 + 3))
    assert boxes["n_matched_at_50"] == 1 and boxes["category_agreement"] == 0.0


def test_first_and_second_annotator_follow_assignment_order_not_names():
    data = [Rating("i0", "annotate", "zoe", 0, label="real"), Rating("i0", "annotate", "adam", 1, label="fake"),
            Rating("i1", "annotate", "zoe", 0, label="real"), Rating("i1", "annotate", "adam", 1, label="real")]
    # first = zoe (real, real), second = adam (fake, real): p_o 1/2; zoe constant → p_e = 1/2 → kappa 0
    assert agreement_report(data)["label"]["kappa"] == pytest.approx(0.0)


def test_undefined_figures_are_none():
    report = agreement_report([Rating("i0", "annotate", "alice", 0, label="real")])
    assert report["items_multiply_annotated"] == 0
    assert report["label"] == {"n": 0, "observed": None, "kappa": None, "alpha": None}
    assert report["score"]["kappa"] is None and report["boxes"]["mean_iou"] is None
    same = agreement_report(ratings("annotate", "label", ["real", "real"], ["real", "real"]))
    assert same["label"]["observed"] == 1.0 and same["label"]["kappa"] is None  # no variation: undefined
    json.dumps(report)


# ---------------------------------------------------------------- taxonomy

def test_default_taxonomy_covers_the_published_families_and_the_examples():
    tax = load_taxonomy()
    expected = {"texture", "edges/boundaries", "lighting and shadows", "reflections", "perspective/geometry",
                "anatomy", "structural fusion/deformation", "text and symbols", "physical plausibility",
                "colour/tone", "noise/blur/resolution", "background coherence", "splice/edit boundary"}
    assert expected <= set(tax.names)
    assert all(c.definition and "\n" not in c.definition and len(c.definition) < 200 for c in tax.categories)
    used = {a["category"] for line in (EXAMPLES / "detect.jsonl").read_text().splitlines() for a in json.loads(line)["artifacts"]}
    assert used <= set(tax.names)
    assert [k for k, _ in tax.rubric] == [5, 4, 3, 2, 1]


@pytest.mark.parametrize("text, key", [
    ("categories: []\nrubric: {}\n", "categories"),
    ("colour: red\n", "colour"),
    ("categories:\n  - {name: a, definition: x}\n  - {name: a, definition: y}\nrubric: {1: a, 2: b, 3: c, 4: d, 5: e}\n", "categories[1].name"),
    ("categories:\n  - {name: a}\nrubric: {1: a, 2: b, 3: c, 4: d, 5: e}\n", "categories[0].definition"),
    ("categories:\n  - {name: a, definition: x, colour: red}\nrubric: {1: a, 2: b, 3: c, 4: d, 5: e}\n", "categories[0].colour"),
    ("categories:\n  - {name: a, definition: x}\nrubric: {1: a, 5: e}\n", "rubric"),
])
def test_bad_taxonomy_files_name_the_key(tmp_path, text, key):
    path = tmp_path / "t.yaml"
    path.write_text(text)
    with pytest.raises(ValueError, match=f"'{key.replace('[', '.').replace(']', '.')}'"):
        load_taxonomy(path)
    assert DEFAULT_TAXONOMY.is_file()
