"""Judge meta-evaluation metrics against scipy/sklearn, published examples and hand cases."""

import json
import math

import numpy as np
import pytest
from scipy.stats import kendalltau, pearsonr, spearmanr
from sklearn.metrics import cohen_kappa_score, confusion_matrix

from deepfakejudge.metrics import (
    cohen_kappa,
    krippendorff_alpha,
    pairwise_accuracy,
    pointwise_agreement,
)


def _scores(seed, n=200, p_none=0.0):
    rng = np.random.default_rng(seed)
    gold = rng.integers(1, 6, size=n)
    noise = rng.integers(-1, 2, size=n) * (rng.random(n) < 0.5)
    pred = np.clip(gold + noise, 1, 5)
    pred = [None if rng.random() < p_none else int(v) for v in pred]
    return [int(g) for g in gold], pred


# --- pointwise -------------------------------------------------------------------------------


@pytest.mark.parametrize("seed, p_none", [(0, 0.0), (1, 0.0), (2, 0.15)])
def test_pointwise_matches_scipy(seed, p_none):
    gold, pred = _scores(seed, p_none=p_none)
    r = pointwise_agreement(gold, pred)
    keep = [i for i, p in enumerate(pred) if p is not None]
    g = np.array([gold[i] for i in keep], dtype=float)
    p = np.array([pred[i] for i in keep], dtype=float)
    assert (r.n, r.n_parsed, r.n_unparsable) == (len(gold), len(keep), len(gold) - len(keep))
    assert r.pearson == pytest.approx(pearsonr(g, p).statistic)
    assert r.spearman == pytest.approx(spearmanr(g, p).statistic)
    assert r.kendall == pytest.approx(kendalltau(g, p, variant="b").statistic)
    assert r.rmse == pytest.approx(math.sqrt(np.mean((g - p) ** 2)))
    assert r.mae == pytest.approx(np.mean(np.abs(g - p)))
    # unparsable counts as disagreement: the denominator is every item
    assert r.exact_agreement == pytest.approx(np.sum(g == p) / len(gold))
    assert r.within_one == pytest.approx(np.sum(np.abs(g - p) <= 1) / len(gold))
    cm = confusion_matrix(g.astype(int), p.astype(int), labels=[1, 2, 3, 4, 5])
    assert r.confusion == tuple(tuple(int(v) for v in row) for row in cm)


def test_pointwise_hand_case_with_unparsable():
    gold = [1, 2, 3, 4, 5]
    pred = [1, 3, None, 2, 5]
    r = pointwise_agreement(gold, pred)
    # parsed pairs (1,1) (2,3) (4,2) (5,5): errors 0, 1, -2, 0
    # RMSE = sqrt((0 + 1 + 4 + 0) / 4) = sqrt(5)/2 ; MAE = 3/4
    assert r.rmse == pytest.approx(math.sqrt(5) / 2)
    assert r.mae == pytest.approx(0.75)
    # exact: 2 of 5 (None is a miss); within one: (1,1) (2,3) (5,5) -> 3 of 5
    assert r.exact_agreement == pytest.approx(0.4)
    assert r.within_one == pytest.approx(0.6)
    assert (r.n, r.n_parsed, r.n_unparsable, r.unparsable_rate) == (5, 4, 1, 0.2)
    # Pearson on g = 1,2,4,5 (mean 3) and p = 1,3,2,5 (mean 2.75):
    # dg = -2,-1,1,2 ; dp = -1.75,0.25,-0.75,2.25
    # Σ dg·dp = 3.5 - 0.25 - 0.75 + 4.5 = 7 ; Σ dg² = 10 ; Σ dp² = 3.0625+0.0625+0.5625+5.0625 = 8.75
    # r = 7 / sqrt(87.5)
    assert r.pearson == pytest.approx(7 / math.sqrt(87.5))
    assert r.confusion[2] == (0, 0, 0, 0, 0)  # gold 3 was unparsable
    assert r.confusion[3][1] == 1  # gold 4 scored 2


def test_pointwise_accepts_numpy_arrays():
    gold, pred = _scores(6)
    assert pointwise_agreement(np.array(gold), np.array(pred)) == pointwise_agreement(gold, pred)
    assert pointwise_agreement(np.array(gold, dtype=float), pred) == pointwise_agreement(gold, pred)
    with pytest.raises(ValueError, match=r"gold_scores\[2\] = 6 is not an integer score"):
        pointwise_agreement(np.array([1, 2, 6]), np.array([1, 2, 3]))
    with pytest.raises(ValueError, match=r"pred_scores\[0\] = nan"):
        pointwise_agreement(np.array([1, 2]), np.array([np.nan, 2.0]))


def test_pointwise_expected_scores():
    gold, pred = _scores(3)
    rng = np.random.default_rng(3)
    expected = [float(np.clip(p + rng.normal(0, 0.3), 1, 5)) for p in pred]
    r = pointwise_agreement(gold, expected)
    assert r.pearson == pytest.approx(pearsonr(gold, expected).statistic)
    assert r.kendall == pytest.approx(kendalltau(gold, expected).statistic)
    assert r.rmse == pytest.approx(math.sqrt(np.mean((np.array(gold) - expected) ** 2)))
    # discrete figures need integer predictions
    assert r.exact_agreement is None and r.within_one is None and r.confusion is None
    # integer-valued floats (3.0) are integers
    assert pointwise_agreement([1, 3], [1.0, 3.0]).exact_agreement == 1.0


def test_pointwise_undefined_correlations():
    r = pointwise_agreement([1, 2, 3], [4, 4, 4])  # constant predictions
    assert r.pearson is None and r.spearman is None and r.kendall is None
    assert r.rmse == pytest.approx(math.sqrt((9 + 4 + 1) / 3))
    r = pointwise_agreement([1, 2], [None, None])
    assert r.n_parsed == 0 and r.rmse is None and r.mae is None and r.pearson is None
    assert r.exact_agreement == 0.0
    d = json.loads(json.dumps(r.to_dict(), allow_nan=False))
    assert d["pearson"] is None and d["n_unparsable"] == 2


@pytest.mark.parametrize(
    "gold, pred, match",
    [
        ([1, 2, 3], [1, 2], "gold_scores has 3 items but pred_scores has 2"),
        ([0, 2], [1, 2], r"gold_scores\[0\] = 0 is not an integer score in 1..5"),
        ([1, 2.5], [1, 2], r"gold_scores\[1\] = 2.5"),
        ([1, None], [1, 2], r"gold_scores\[1\] = None"),
        ([1, 2], [1, 6], r"pred_scores\[1\] = 6 is not a score in \[1, 5\]"),
        ([1, 2], [0.5, 2], r"pred_scores\[0\] = 0.5"),
        ([1, 2], [1, float("nan")], r"pred_scores\[1\] = nan"),
        ([1, 2], [1, "3"], r"pred_scores\[1\] = '3'"),
        ([1, 2], [True, 2], r"pred_scores\[0\] = True"),
        ([], [], "empty"),
    ],
)
def test_pointwise_errors(gold, pred, match):
    with pytest.raises(ValueError, match=match):
        pointwise_agreement(gold, pred)


# --- pairwise --------------------------------------------------------------------------------


def test_pairwise_hand_case():
    gold = ["A", "B", "A", "B", "A"]
    pred = ["A", "A", None, "B", None]
    r = pairwise_accuracy(gold, pred)
    # correct: items 0 and 3 -> 2/5 overall; 2 of the 3 parsed
    assert (r.n, r.n_correct, r.n_unparsable) == (5, 2, 2)
    assert r.accuracy == pytest.approx(0.4)
    assert r.accuracy_parsed == pytest.approx(2 / 3)
    assert r.unparsable_rate == pytest.approx(0.4)
    none = pairwise_accuracy(["A"], [None])
    assert none.accuracy == 0.0 and none.accuracy_parsed is None
    assert json.loads(json.dumps(none.to_dict(), allow_nan=False))["accuracy_parsed"] is None


@pytest.mark.parametrize(
    "gold, pred, match",
    [
        (["A", "B"], ["A"], "gold has 2 items but pred has 1"),
        (["A", "C"], ["A", "B"], r"gold\[1\] = 'C'"),
        (["A", None], ["A", "B"], r"gold\[1\] = None"),
        (["A", "B"], ["a", "B"], r"pred\[0\] = 'a'"),
    ],
)
def test_pairwise_errors(gold, pred, match):
    with pytest.raises(ValueError, match=match):
        pairwise_accuracy(gold, pred)


# --- Cohen's kappa ---------------------------------------------------------------------------


@pytest.mark.parametrize("weights", [None, "linear", "quadratic"])
@pytest.mark.parametrize("seed", [0, 1])
def test_cohen_kappa_matches_sklearn(weights, seed):
    a, b = _scores(seed)
    assert cohen_kappa(a, b, weights=weights) == pytest.approx(cohen_kappa_score(a, b, weights=weights))
    # a level nobody used still counts in the distances when labels are given
    a2 = [v for v in a if v != 3]
    b2 = [v for v, x in zip(b, a) if x != 3]
    b2 = [4 if v == 3 else v for v in b2]
    labels = [1, 2, 3, 4, 5]
    ours = cohen_kappa(a2, b2, weights=weights, labels=labels)
    assert ours == pytest.approx(cohen_kappa_score(a2, b2, weights=weights, labels=labels))


def test_cohen_kappa_hand_case():
    # a = [x, x, y, y], b = [x, y, y, y]: p_o = 3/4 ; marginals a (1/2, 1/2), b (1/4, 3/4)
    # p_e = 1/2·1/4 + 1/2·3/4 = 1/2 ; kappa = (3/4 - 1/2) / (1 - 1/2) = 1/2
    assert cohen_kappa(["x", "x", "y", "y"], ["x", "y", "y", "y"]) == pytest.approx(0.5)
    assert cohen_kappa(["x", "x"], ["x", "x"]) is None  # no chance disagreement: undefined


def test_cohen_kappa_errors():
    with pytest.raises(ValueError, match=r"b\[1\] is missing"):
        cohen_kappa([1, 2], [1, None])
    with pytest.raises(ValueError, match=r"a\[0\] = 7 is not in labels"):
        cohen_kappa([7, 2], [1, 2], labels=[1, 2, 3])
    with pytest.raises(ValueError, match="weights = 'cubic'"):
        cohen_kappa([1, 2], [1, 2], weights="cubic")
    with pytest.raises(ValueError, match="a has 2 items but b has 1"):
        cohen_kappa([1, 2], [1])


# --- Krippendorff's alpha --------------------------------------------------------------------

# Krippendorff (2011), "Computing Krippendorff's Alpha-Reliability", reliability data with
# missing values: 4 observers (rows here) × 12 units. Published: nominal .743, ordinal .815,
# interval .849, ratio .797.
_K2011 = [
    [1, 2, 3, 3, 2, 1, 4, 1, 2, None, None, None],
    [1, 2, 3, 3, 2, 2, 4, 1, 2, 5, None, 3],
    [None, 3, 3, 3, 2, 3, 4, 2, 2, 5, 1, None],
    [1, 2, 3, 3, 2, 4, 4, 1, 2, 5, 1, None],
]
# Wikipedia's "Krippendorff's alpha" computational example: 3 coders × 15 units.
# Published: nominal 0.691 (0.691358 to six places), interval 0.811 (0.810845).
_WIKI = [
    [None, None, None, None, None, 3, 4, 1, 2, 1, 1, 3, 3, None, 3],
    [1, None, 2, 1, 3, 3, 4, 3, None, None, None, None, None, None, None],
    [None, None, 2, 1, 3, 4, 4, None, 2, 1, 1, 3, 3, None, 4],
]


def _units(coders_by_units):
    return [list(unit) for unit in zip(*coders_by_units)]


@pytest.mark.parametrize(
    "level, expected",
    [("nominal", 0.743), ("ordinal", 0.815), ("interval", 0.849), ("ratio", 0.797)],
)
def test_krippendorff_2011_example(level, expected):
    assert round(krippendorff_alpha(_units(_K2011), level), 3) == expected


def test_krippendorff_wikipedia_example():
    units = _units(_WIKI)
    assert krippendorff_alpha(units, "nominal") == pytest.approx(0.691358, abs=1e-6)
    assert krippendorff_alpha(units, "interval") == pytest.approx(0.810845, abs=1e-6)
    # NaN is missing as well as None
    nan_units = [[np.nan if v is None else float(v) for v in u] for u in units]
    assert krippendorff_alpha(np.array(nan_units), "nominal") == pytest.approx(0.691358, abs=1e-6)


def test_krippendorff_hand_cases():
    # units (1,1), (2,2), (1,2); each unit has m_u = 2 so each pair counts 1/(2-1) = 1:
    # o_11 = 2, o_22 = 2, o_12 = o_21 = 1 ; n_1 = n_2 = 3 ; n = 6
    # nominal: alpha = 1 - (n-1)·Σo·δ / Σ n_c n_k δ = 1 - 5·2 / (2·3·3) = 4/9
    # interval with values 1, 2: δ² = 1 off the diagonal, so the same 4/9
    ratings = [[1, 1], [2, 2], [1, 2]]
    assert krippendorff_alpha(ratings, "nominal") == pytest.approx(4 / 9)
    assert krippendorff_alpha(ratings, "interval") == pytest.approx(4 / 9)
    # interval, 2 coders, units (1,1), (3,3), (1,3): o_11 = o_33 = 2, o_13 = o_31 = 1, δ²_13 = 4
    # Σ o δ² = 2·4 = 8 ; Σ n_c n_k δ² = 2·3·3·4 = 72 ; alpha = 1 - 5·8/72 = 4/9 again (scale-free)
    assert krippendorff_alpha([[1, 1], [3, 3], [1, 3]], "interval") == pytest.approx(4 / 9)
    # nominal on strings; a unit with one rating is not pairable and changes nothing
    assert krippendorff_alpha([["a", "a"], ["b", "b"], ["a", "b"], ["c", None]]) == pytest.approx(4 / 9)
    assert krippendorff_alpha([[1, 1, 1], [2, 2, 2], [5, 5, None]], "interval") == 1.0


def test_krippendorff_matches_cohen_style_on_large_complete_data():
    # With two coders, no missing data, many units and alike marginals, interval alpha is close
    # to quadratic-weighted kappa (alpha pools the two coders' marginals, kappa keeps them apart).
    a, b = _scores(4, n=4000)
    alpha_i = krippendorff_alpha(list(zip(a, b)), "interval")
    assert alpha_i == pytest.approx(cohen_kappa(a, b, weights="quadratic"), abs=0.01)


def test_krippendorff_undefined_and_errors():
    assert krippendorff_alpha([[1, None], [None, 2]]) is None  # no unit with two ratings
    assert krippendorff_alpha([[3, 3], [3, 3]], "interval") is None  # no variation at all
    with pytest.raises(ValueError, match=r"ratings\[1\] has 1 coders but ratings\[0\] has 2"):
        krippendorff_alpha([[1, 2], [1]])
    with pytest.raises(ValueError, match=r"ratings\[0\]\[1\] = 'x' is not a number \(interval"):
        krippendorff_alpha([[1, "x"]], "interval")
    with pytest.raises(ValueError, match=r"ratings\[0\]\[0\] = -1 is negative"):
        krippendorff_alpha([[-1, 2]], "ratio")
    with pytest.raises(ValueError, match="level = 'metric'"):
        krippendorff_alpha([[1, 2]], "metric")
    with pytest.raises(ValueError, match="ratings is empty"):
        krippendorff_alpha([])
