"""Detection metrics against sklearn and hand-computed cases."""

import json

import numpy as np
import pytest
from sklearn.calibration import calibration_curve
from sklearn.metrics import (
    accuracy_score,
    average_precision_score,
    brier_score_loss,
    confusion_matrix,
    f1_score,
    precision_score,
    recall_score,
    roc_auc_score,
)

from deepfakejudge.metrics import (
    ECE_BINS,
    POLICIES,
    detection_breakdown,
    detection_policies,
    detection_report,
)


def _random_rows(seed, n=300, p_none=0.1, p_missing_prob=0.1, decimals=None):
    rng = np.random.default_rng(seed)
    gold = list(rng.choice(["real", "fake", "edited"], size=n))
    pred = [None if rng.random() < p_none else str(rng.choice(["real", "fake"])) for _ in range(n)]
    p = rng.random(n)
    if decimals is not None:
        p = np.round(p, decimals)  # many ties
    p_fake = [None if rng.random() < p_missing_prob else float(v) for v in p]
    return gold, pred, p_fake


def _sk(gold, pred):
    """Gold with edited -> fake, unparsable -> a third label sklearn never scores."""
    return ["fake" if g == "edited" else g for g in gold], ["none" if p is None else p for p in pred]


def test_hand_case_with_unparsable():
    gold = ["real", "real", "real", "fake", "edited", "fake", "fake", "real"]
    pred = ["real", "fake", None, "fake", "fake", None, "real", "real"]
    r = detection_report(gold, pred)
    # gold real: rows 0,1,2,7 -> pred real, fake, none, real      => real row (2, 1, 1)
    # gold fake: rows 3,4,5,6 -> pred fake, fake, none, real      => fake row (1, 2, 1)
    assert r.confusion == ((2, 1, 1), (1, 2, 1))
    assert (r.n, r.n_real, r.n_fake, r.n_edited) == (8, 4, 4, 1)
    # accuracy: correct = 2 real + 2 fake = 4 of 8 (the two None are wrong)
    assert r.accuracy == 0.5
    assert (r.n_unparsable, r.unparsable_rate) == (2, 0.25)
    # real: TP 2, FP 1 (fake called real), FN 2 (one called fake, one None)
    #   precision 2/3, recall 2/4, F1 = 2*2 / (2*2 + 1 + 2) = 4/7
    assert r.real_precision == pytest.approx(2 / 3)
    assert r.real_recall == pytest.approx(0.5)
    assert r.real_f1 == pytest.approx(4 / 7)
    # fake: TP 2, FP 1 (real called fake), FN 2 (one called real, one None) -> F1 4/7 as well
    assert r.fake_f1 == pytest.approx(4 / 7)
    assert r.macro_f1 == pytest.approx(4 / 7)
    assert r.probability is None


def test_all_unparsable():
    r = detection_report(["real", "fake"], [None, None])
    assert r.accuracy == 0.0
    assert r.n_unparsable == 2
    # real: TP 0, FP 0, FN 1 -> F1 = 0 / (0 + 0 + 1) = 0; precision 0/0 undefined
    assert r.real_f1 == 0.0 and r.fake_f1 == 0.0
    assert r.real_precision is None and r.fake_precision is None
    assert r.real_recall == 0.0


def test_class_absent_everywhere_is_undefined_not_zero():
    r = detection_report(["fake", "edited"], ["fake", "fake"])
    # real: TP 0, FP 0, FN 0 -> F1 0/0 undefined
    assert r.real_f1 is None and r.real_recall is None and r.real_precision is None
    assert r.fake_f1 == 1.0
    assert r.macro_f1 is None
    assert json.loads(json.dumps(r.to_dict(), allow_nan=False))["real_f1"] is None


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matches_sklearn_on_random_rows(seed):
    gold, pred, _ = _random_rows(seed)
    r = detection_report(gold, pred)
    g, p = _sk(gold, pred)
    labels = ["real", "fake"]
    f1 = f1_score(g, p, labels=labels, average=None)
    assert r.real_f1 == pytest.approx(f1[0])
    assert r.fake_f1 == pytest.approx(f1[1])
    assert r.macro_f1 == pytest.approx(f1_score(g, p, labels=labels, average="macro"))
    assert r.accuracy == pytest.approx(accuracy_score(g, p))
    prec = precision_score(g, p, labels=labels, average=None)
    rec = recall_score(g, p, labels=labels, average=None)
    assert (r.real_precision, r.fake_precision) == pytest.approx(tuple(prec))
    assert (r.real_recall, r.fake_recall) == pytest.approx(tuple(rec))
    cm = confusion_matrix(g, p, labels=["real", "fake", "none"])
    assert r.confusion == tuple(tuple(int(v) for v in row) for row in cm[:2])
    assert r.n_unparsable == sum(v is None for v in pred)


@pytest.mark.parametrize("seed, decimals", [(0, None), (1, None), (2, 1), (3, 2)])
def test_probability_metrics_match_sklearn(seed, decimals):
    gold, pred, p_fake = _random_rows(seed, decimals=decimals)
    r = detection_report(gold, pred, p_fake).probability
    keep = [i for i, p in enumerate(p_fake) if p is not None]
    y = np.array([gold[i] != "real" for i in keep], dtype=int)
    s = np.array([p_fake[i] for i in keep])
    assert (r.n, r.n_missing) == (len(keep), len(gold) - len(keep))
    assert r.roc_auc == pytest.approx(roc_auc_score(y, s))
    assert r.average_precision == pytest.approx(average_precision_score(y, s))
    assert r.brier == pytest.approx(brier_score_loss(y, s))

    frac, mean_p = calibration_curve(y, s, n_bins=ECE_BINS, strategy="uniform")
    filled = [b for b in r.reliability if b.count]
    assert len(r.reliability) == ECE_BINS
    assert [b.fraction_fake for b in filled] == pytest.approx(list(frac))
    assert [b.mean_p_fake for b in filled] == pytest.approx(list(mean_p))
    counts = np.array([b.count for b in filled])
    assert counts.sum() == len(s)
    assert r.ece == pytest.approx(np.sum(counts / len(s) * np.abs(frac - mean_p)))


def test_ece_hand_case():
    # bins are 1/15 wide: 0.1 -> bin 1 (0.0667, 0.1333], 0.9 -> bin 13 (0.8667, 0.9333]
    # bin 1: p 0.1, 0.1 ; targets real, fake -> |0.1 - 0.5| = 0.4, weight 2/4
    # bin 13: p 0.9, 0.9 ; targets fake, fake -> |0.9 - 1.0| = 0.1, weight 2/4
    # ECE = 0.5*0.4 + 0.5*0.1 = 0.25 ; Brier = (0.01 + 0.81 + 0.01 + 0.01) / 4 = 0.21
    r = detection_report(["real", "fake", "fake", "edited"], ["real"] * 4, [0.1, 0.1, 0.9, 0.9])
    assert r.probability.ece == pytest.approx(0.25)
    assert r.probability.brier == pytest.approx(0.21)
    bins = r.probability.reliability
    assert bins[1].count == 2 and bins[1].fraction_fake == 0.5
    assert bins[13].count == 2 and bins[13].mean_p_fake == pytest.approx(0.9)
    assert bins[0].count == 0 and bins[0].mean_p_fake is None


def test_reliability_bin_edges():
    # bins are (lower, upper]; 0 goes to the first bin and 1 to the last; an inner edge belongs
    # to the bin below it, as in sklearn's calibration_curve
    edge = float(np.linspace(0.0, 1.0, ECE_BINS + 1)[1])
    r = detection_report(["real"] * 3, ["real"] * 3, [0.0, edge, 1.0]).probability
    counts = [b.count for b in r.reliability]
    assert counts[0] == 2 and counts[-1] == 1 and sum(counts) == 3
    assert r.reliability[0].lower == 0.0 and r.reliability[-1].upper == 1.0


@pytest.mark.parametrize(
    "fake_scores, real_scores, eer",
    [
        # thresholds 0.8: FPR 0, FNR 1/2 ; 0.6: FPR 1/2, FNR 1/2 -> the two rates meet at 0.5
        ([0.8, 0.4], [0.6, 0.2], 0.5),
        # ROC points (FPR, FNR): (0, 1), (0, 2/3) @0.9, (0, 1/3) @0.8, (1/2, 1/3) @0.7.
        # FNR - FPR goes 1/3 -> -1/6 on the last segment: t = (1/3)/(1/2) = 2/3,
        # EER = 0 + 2/3 * 1/2 = 1/3 (FNR stays 1/3 along it)
        ([0.9, 0.8, 0.3], [0.7, 0.2], 1 / 3),
        # a tie at 0.5 moves both rates in one step: (0, 1/2) @0.9 -> (1/2, 0) @0.5,
        # FNR - FPR goes 1/2 -> -1/2: t = 1/2, EER = 1/4
        ([0.9, 0.5], [0.5, 0.1], 0.25),
        ([0.9, 0.8], [0.2, 0.1], 0.0),  # perfectly separated
        ([0.2, 0.1], [0.9, 0.8], 1.0),  # perfectly inverted
    ],
)
def test_eer_hand_cases(fake_scores, real_scores, eer):
    gold = ["fake"] * len(fake_scores) + ["real"] * len(real_scores)
    r = detection_report(gold, [None] * len(gold), fake_scores + real_scores)
    assert r.probability.eer == pytest.approx(eer)


def test_probability_rows_and_single_class():
    gold = ["real", "fake", "fake", "real"]
    pred = ["real", "fake", "fake", "real"]
    # only the two fake rows have a probability: ranking figures undefined, Brier is not
    r = detection_report(gold, pred, [None, 0.7, 0.9, None]).probability
    assert (r.n, r.n_missing) == (2, 2)
    assert r.roc_auc is None and r.eer is None
    assert r.average_precision == 1.0
    assert r.brier == pytest.approx((0.09 + 0.01) / 2)
    empty = detection_report(gold, pred, [None] * 4).probability
    assert empty.n == 0 and empty.brier is None and empty.ece is None
    d = json.loads(json.dumps(detection_report(gold, pred, [None] * 4).to_dict(), allow_nan=False))
    assert d["probability"]["roc_auc"] is None


def test_accepts_numpy_arrays():
    gold, pred, p_fake = _random_rows(5, p_none=0.0, p_missing_prob=0.0)
    a = detection_report(gold, pred, p_fake)
    b = detection_report(np.array(gold), np.array(pred), np.array(p_fake))
    assert a == b
    with pytest.raises(ValueError, match=r"p_fake\[1\] = nan is not a probability"):
        detection_report(np.array(gold[:2]), np.array(pred[:2]), np.array([0.5, np.nan]))
    with pytest.raises(ValueError, match=r"gold\[0\] = 'REAL'"):
        detection_report(np.array(["REAL", "fake"]), ["real", "fake"])


def test_breakdown_matches_subsets():
    gold, pred, p_fake = _random_rows(7, n=60)
    source = [["sd", "flux", "camera"][i % 3] for i in range(60)]
    parts = detection_breakdown(gold, pred, source, p_fake)
    assert list(parts) == ["sd", "flux", "camera"]
    idx = [i for i in range(60) if source[i] == "flux"]
    expected = detection_report([gold[i] for i in idx], [pred[i] for i in idx], [p_fake[i] for i in idx])
    assert parts["flux"] == expected
    assert sum(m.n for m in parts.values()) == 60


@pytest.mark.parametrize(
    "gold, pred, p_fake, match",
    [
        (["real", "fake"], ["real"], None, "gold has 2 items but pred has 1"),
        ([], [], None, "empty"),
        (["real", "Fake"], ["real", "fake"], None, r"gold\[1\] = 'Fake'"),
        (["real", "t2i"], ["real", "fake"], None, r"gold\[1\] = 't2i'"),
        (["real", "fake"], ["real", "edited"], None, r"pred\[1\] = 'edited'"),
        (["real", "fake"], ["real", ""], None, r"pred\[1\] = ''"),
        (["real", "fake"], ["real", "fake"], [0.2, 1.5], r"p_fake\[1\] = 1.5 is outside"),
        (["real", "fake"], ["real", "fake"], [float("nan"), 0.5], r"p_fake\[0\] = nan"),
        (["real", "fake"], ["real", "fake"], [0.5], "gold has 2 items but p_fake has 1"),
        ("real", ["real"], None, "gold must be a sequence"),
    ],
)
def test_errors(gold, pred, p_fake, match):
    with pytest.raises(ValueError, match=match):
        detection_report(gold, pred, p_fake)


# -- unparsable policies ---------------------------------------------------------------------------


def test_hand_case_under_both_policies():
    gold = ["real", "real", "real", "real", "fake", "edited", "fake", "fake"]
    pred = ["real", "real", None, None, "fake", "real", "fake", None]
    # gold real -> (real, real, none, none) = (2, 0, 2); gold fake -> (fake, real, fake, none) = (1, 2, 1)
    both = detection_policies(gold, pred)
    assert list(both) == list(POLICIES) == ["unparsable-as-miss", "parsed-only"]
    miss, parsed = both["unparsable-as-miss"], both["parsed-only"]
    for r in (miss, parsed):
        assert r.confusion == ((2, 0, 2), (1, 2, 1))
        assert (r.n, r.n_unparsable) == (8, 3)
        assert r.accuracy == 0.5  # 4 of 8 right: over all items under both policies
    # unparsable-as-miss. real: TP 2, FP 1, FN 0 + 2 -> F1 4/7; fake: TP 2, FP 0, FN 1 + 1 -> F1 4/6
    assert miss.policy == "unparsable-as-miss"
    assert miss.real_f1 == pytest.approx(4 / 7) and miss.fake_f1 == pytest.approx(2 / 3)
    assert miss.real_recall == pytest.approx(2 / 4) and miss.fake_recall == pytest.approx(2 / 4)
    assert miss.macro_f1 == pytest.approx((4 / 7 + 2 / 3) / 2)
    # parsed-only (5 parsed rows). real: TP 2, FP 1, FN 0 -> F1 4/5; fake: TP 2, FP 0, FN 1 -> 4/5
    assert parsed.policy == "parsed-only"
    assert parsed.real_f1 == pytest.approx(4 / 5) and parsed.fake_f1 == pytest.approx(4 / 5)
    assert parsed.real_recall == 1.0 and parsed.fake_recall == pytest.approx(2 / 3)
    assert parsed.real_precision == pytest.approx(2 / 3) and parsed.fake_precision == 1.0
    assert parsed.macro_f1 == pytest.approx(4 / 5)
    # the policy keyword gives the same figures, and names itself in to_dict
    assert detection_report(gold, pred, policy="parsed-only") == parsed
    assert detection_report(gold, pred) == miss
    assert parsed.to_dict()["policy"] == "parsed-only"


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_parsed_only_matches_sklearn_on_parsed_rows(seed):
    gold, pred, _ = _random_rows(seed, p_none=0.3)
    r = detection_report(gold, pred, policy="parsed-only")
    g, p = _sk(gold, pred)
    keep = [i for i, v in enumerate(pred) if v is not None]
    gk, pk = [g[i] for i in keep], [p[i] for i in keep]
    labels = ["real", "fake"]
    assert (r.real_f1, r.fake_f1) == pytest.approx(tuple(f1_score(gk, pk, labels=labels, average=None)))
    assert r.macro_f1 == pytest.approx(f1_score(gk, pk, labels=labels, average="macro"))
    assert (r.real_precision, r.fake_precision) == pytest.approx(
        tuple(precision_score(gk, pk, labels=labels, average=None)))
    assert (r.real_recall, r.fake_recall) == pytest.approx(tuple(recall_score(gk, pk, labels=labels, average=None)))
    # accuracy stays over all items, unparsable counted wrong
    assert r.accuracy == pytest.approx(accuracy_score(g, p))
    assert r.n == len(gold) and r.n_unparsable == len(gold) - len(keep)


def test_policies_agree_without_unparsable_answers():
    gold, pred, _ = _random_rows(5, p_none=0.0)
    both = detection_policies(gold, pred)
    a, b = both["unparsable-as-miss"].to_dict(), both["parsed-only"].to_dict()
    assert a.pop("policy") == "unparsable-as-miss" and b.pop("policy") == "parsed-only"
    assert a == b


def test_paper_row_fits_parsed_only_and_not_unparsable_as_miss():
    # A published row: Real F1 76.6, Fake F1 79.8, accuracy 63.7 on 1,000 real + 1,000 fake.
    n_real = n_fake = 1000
    correct = 1274  # 63.7% of 2,000
    # Under unparsable-as-miss even zero false positives cannot reach both F1s: F1 <= 2r / (r + 1)
    # with r = recall (precision <= 1), and the two recalls share the 1,274 correct answers.
    reachable = [rr for rr in range(correct - n_fake, n_real + 1)
                 if 2 * rr / (rr + n_real) >= 0.766 and 2 * (correct - rr) / (correct - rr + n_fake) >= 0.798]
    assert reachable == []
    # Under parsed-only a confusion with 373 unparsable answers reproduces it (to 0.1 points).
    rr, ff, rf, fr = 577, 697, 176, 177
    gold = ["real"] * n_real + ["fake"] * n_fake
    pred = (["real"] * rr + ["fake"] * rf + [None] * (n_real - rr - rf)
            + ["real"] * fr + ["fake"] * ff + [None] * (n_fake - fr - ff))
    parsed = detection_report(gold, pred, policy="parsed-only")
    assert (parsed.real_f1, parsed.fake_f1, parsed.accuracy) == pytest.approx((0.766, 0.798, 0.637), abs=5e-4)
    miss = detection_report(gold, pred)
    assert miss.accuracy == parsed.accuracy and miss.n_unparsable == 373
    assert miss.real_f1 < 0.70 and miss.fake_f1 < 0.78


def test_breakdown_under_parsed_only():
    gold, pred, _ = _random_rows(8, n=60, p_none=0.3)
    source = [["sd", "flux"][i % 2] for i in range(60)]
    parts = detection_breakdown(gold, pred, source, policy="parsed-only")
    idx = [i for i in range(60) if source[i] == "sd"]
    assert parts["sd"] == detection_report([gold[i] for i in idx], [pred[i] for i in idx], policy="parsed-only")


def test_unknown_policy_is_refused():
    with pytest.raises(ValueError, match="policy 'parsed' is not an unparsable policy; use 'unparsable-as-miss'"):
        detection_report(["real"], ["real"], policy="parsed")
    with pytest.raises(ValueError, match="not an unparsable policy"):
        detection_breakdown(["real"], ["real"], ["a"], policy="miss")
