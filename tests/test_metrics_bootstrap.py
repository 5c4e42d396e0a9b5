"""Percentile bootstrap: determinism, pairing, coverage sanity and undefined resamples."""

import json
import math

import numpy as np
import pytest

from deepfakejudge.metrics import (
    BootstrapCI,
    bootstrap_ci,
    bootstrap_cis,
    detection_report,
    krippendorff_alpha,
    pointwise_agreement,
)


def _mean(x):
    return float(np.mean(x))


def _pearson(gold, pred):
    return pointwise_agreement(gold, pred).pearson


def _scores(seed, n):
    rng = np.random.default_rng(seed)
    gold = rng.integers(1, 6, size=n)
    pred = np.clip(gold + rng.integers(-1, 2, size=n), 1, 5)
    return [int(v) for v in gold], [int(v) for v in pred]


def test_same_seed_same_interval_different_seed_different():
    x = np.random.default_rng(0).normal(size=200)
    a = bootstrap_ci(_mean, x, n_resamples=300, seed=7)
    b = bootstrap_ci(_mean, x, n_resamples=300, seed=7)
    c = bootstrap_ci(_mean, x, n_resamples=300, seed=8)
    assert a == b
    assert (a.low, a.high) != (c.low, c.high)
    assert a.seed == 7 and a.n_resamples == 300 and a.n_used == 300


def test_unpacks_as_low_high_and_to_dict_is_json_safe():
    x = list(range(50))
    ci = bootstrap_ci(_mean, x, n_resamples=200)
    low, high = ci
    assert (low, high) == (ci.low, ci.high)
    assert ci.estimate == pytest.approx(24.5)
    assert low < ci.estimate < high
    d = json.loads(json.dumps(ci.to_dict(), allow_nan=False))
    assert d["confidence"] == 0.95 and d["n_used"] == 200


def test_coverage_sanity_on_a_large_sample():
    # mean of 4000 standard normals: the 95% interval holds the estimate and is about
    # 2 · 1.96 / sqrt(4000) ≈ 0.062 wide
    x = np.random.default_rng(1).normal(size=4000)
    ci = bootstrap_ci(_mean, x, n_resamples=1000, seed=0)
    assert ci.low < ci.estimate < ci.high
    assert ci.high - ci.low == pytest.approx(2 * 1.96 / math.sqrt(4000), rel=0.15)
    # and the true mean 0 is inside, as it should be for this seed
    assert ci.low < 0.0 < ci.high
    wider = bootstrap_ci(_mean, x, n_resamples=1000, seed=0, confidence=0.99)
    assert wider.low < ci.low and wider.high > ci.high


def test_resampling_is_paired():
    # gold and pred are identical per item: a paired resample keeps exact agreement at 1.0,
    # an unpaired one would not
    gold, _ = _scores(2, 100)
    ci = bootstrap_ci(
        lambda g, p: pointwise_agreement(g, p).exact_agreement, gold, list(gold), n_resamples=100
    )
    assert (ci.low, ci.high) == (1.0, 1.0)


def test_undefined_resamples_are_skipped_and_counted():
    # 10 items, one of them differs: a resample that misses it (probability 0.9^10 ≈ 0.35)
    # is constant and Pearson is undefined there
    gold = [1] * 9 + [5]
    pred = [2] * 9 + [4]
    seen = []

    def pearson_logged(g, p):
        value = _pearson(g, p)
        seen.append(value)
        return value

    ci = bootstrap_ci(pearson_logged, gold, pred, n_resamples=500, seed=3)
    defined = sum(v is not None for v in seen[1:])  # seen[0] is the full-sample estimate
    assert ci.n_used == defined
    assert 0 < ci.n_used < 500
    assert ci.n_used == pytest.approx(500 * (1 - 0.9**10), abs=50)
    assert ci.estimate == 1.0 and (ci.low, ci.high) == (1.0, 1.0)


def test_all_resamples_undefined_gives_nan():
    ci = bootstrap_ci(_pearson, [3, 3, 3], [1, 2, 3], n_resamples=50)
    assert ci.n_used == 0
    assert math.isnan(ci.low) and math.isnan(ci.high) and math.isnan(ci.estimate)
    d = ci.to_dict()
    assert d["low"] is None and d["high"] is None and d["estimate"] is None
    nan_metric = bootstrap_ci(lambda x: float("nan"), [1.0, 2.0], n_resamples=10)
    assert nan_metric.n_used == 0


def test_labels_with_none_and_tables():
    gold = ["real", "fake", "edited", "real"] * 25
    pred = ["real", None, "fake", "fake"] * 25
    ci = bootstrap_ci(lambda g, p: detection_report(g, p).accuracy, gold, pred, n_resamples=200)
    assert ci.estimate == 0.5 and ci.low <= 0.5 <= ci.high
    # a units × coders table is resampled by unit (rows)
    ratings = [[1, 1], [2, 2], [3, 3], [1, 2], [2, None]] * 10
    ci = bootstrap_ci(lambda r: krippendorff_alpha(r, "interval"), ratings, n_resamples=200)
    assert ci.estimate == pytest.approx(krippendorff_alpha(ratings, "interval"))
    assert ci.low < ci.estimate < ci.high


def test_bootstrap_cis_matches_single_intervals():
    gold, pred = _scores(5, 150)
    many = bootstrap_cis(
        lambda g, p: pointwise_agreement(g, p).to_dict(), gold, pred, n_resamples=200, seed=4
    )
    assert "confusion" not in many
    for name in ("rmse", "pearson", "kendall", "exact_agreement"):
        one = bootstrap_ci(
            lambda g, p, name=name: getattr(pointwise_agreement(g, p), name),
            gold,
            pred,
            n_resamples=200,
            seed=4,
        )
        assert many[name] == one
    assert isinstance(many["rmse"], BootstrapCI)
    # with expected scores the discrete figures are undefined on the full sample: no interval
    expected = [min(5.0, p + 0.25) for p in pred]
    cont = bootstrap_cis(lambda g, p: pointwise_agreement(g, p).to_dict(), gold, expected, n_resamples=20)
    assert "exact_agreement" not in cont and "confusion" not in cont and "rmse" in cont


@pytest.mark.parametrize(
    "arrays, kwargs, match",
    [
        (([1, 2, 3], [1, 2]), {}, r"arrays\[1\] has 2 items but arrays\[0\] has 3"),
        (([],), {}, "empty"),
        ((), {}, "at least one array"),
        (([1, 2],), {"n_resamples": 0}, "n_resamples = 0"),
        (([1, 2],), {"confidence": 1.0}, "confidence = 1.0"),
        (([1, 2],), {"confidence": 95}, "confidence = 95"),
        (("abc",), {}, "got the string"),
        (([1, 2],), {"seed": None}, "seed = None"),
    ],
)
def test_errors(arrays, kwargs, match):
    with pytest.raises(ValueError, match=match):
        bootstrap_ci(_mean, *arrays, **kwargs)
