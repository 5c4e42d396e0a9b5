"""Detection metrics (DFJ-Detect): real/fake verdicts, and optionally p(fake), against gold labels.

Definitions (docs/design.md, "Metric definitions"; docs/detect-and-reason.md):
- Gold labels are "real", "fake" or "edited"; "edited" counts as fake.
- Predictions are "real", "fake" or None (unparsable). Accuracy is over all items and counts
  None as wrong, under both policies below.
- Unparsable policy `"unparsable-as-miss"` (the headline): Real F1 and Fake F1 are per-class F1
  where None is a miss (false negative) for the true class and a prediction of neither class (no
  false positive anywhere). This equals sklearn's
  `f1_score(gold, pred, labels=["real", "fake"], average=None)` with None mapped to a third label.
  It does not reward refusing to answer.
- Unparsable policy `"parsed-only"`: precision, recall and F1 over the items with a parsed answer
  only (sklearn's `f1_score` on the rows where pred is not None); accuracy still over all items.
  This is what published figures whose F1s exceed their accuracy by far fit (a model that refuses
  often keeps high F1s).
- F1 is 2·TP / (2·TP + FP + FN); precision TP / (TP + FP); recall TP / (TP + FN). A figure whose
  denominator is 0 is None (undefined), not 0. Macro F1 is the mean of the two, None if either is.

Probability metrics use p_fake, the probability that the image is fake, on the rows that have
one (None marks a row without; how many is reported):
- ROC-AUC: Mann-Whitney form with ties counted half (same as sklearn `roc_auc_score`).
- Average precision: Σ_n (R_n − R_{n−1}) P_n over the distinct thresholds, highest first (same
  as sklearn `average_precision_score`; no interpolation).
- Equal error rate: where the false-positive rate equals the false-negative rate on the ROC
  curve, linearly interpolated between the two ROC points that straddle FPR = FNR.
- Brier score: mean of (p_fake − y)², y = 1 for fake.
- Expected calibration error: 15 equal-width bins over p_fake in [0, 1]; bin b holds
  edges[b] < p ≤ edges[b+1] (the first bin also holds p = 0), as in sklearn's
  `calibration_curve(strategy="uniform")` and Guo et al. 2017. ECE = Σ_b (n_b / n) ·
  |mean p_fake in b − fraction fake in b|. `reliability` holds every bin, empty ones included.
  This is the calibration of p_fake itself (not of the top-label confidence).
Any probability figure that needs both classes is None when the rows with a probability hold
only one.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
from scipy.stats import rankdata

from deepfakejudge.metrics._common import Result, as_items, check_aligned, float_array, is_number, ratio, show

GOLD_LABELS: tuple[str, ...] = ("real", "fake", "edited")
UNPARSABLE_AS_MISS = "unparsable-as-miss"
PARSED_ONLY = "parsed-only"
POLICIES: tuple[str, ...] = (UNPARSABLE_AS_MISS, PARSED_ONLY)  # the first is the headline
PREDICTIONS: tuple[str, ...] = ("real", "fake")
ECE_BINS = 15
_GOLD_SET = frozenset(GOLD_LABELS)
_PRED_SET = frozenset((*PREDICTIONS, None))


@dataclass(frozen=True)
class ReliabilityBin(Result):
    """One bin of the reliability diagram: p_fake in (lower, upper]; means are None when empty."""

    lower: float
    upper: float
    count: int
    mean_p_fake: float | None
    fraction_fake: float | None


@dataclass(frozen=True)
class ProbabilityMetrics(Result):
    """Ranking and calibration of p_fake over the `n` rows that have one (`n_missing` lack one)."""

    n: int
    n_missing: int
    roc_auc: float | None
    average_precision: float | None
    eer: float | None
    brier: float | None
    ece: float | None
    reliability: tuple[ReliabilityBin, ...]


@dataclass(frozen=True)
class DetectionMetrics(Result):
    """Real/fake detection figures. `confusion[g][p]`: gold g in (real, fake) × pred p in
    (real, fake, none). `n_fake` counts edited images too; `n_edited` is the edited part of it.
    `policy` says how unparsable answers enter precision, recall and F1 (see the module doc);
    counts, confusion and accuracy do not depend on it. `probability` is None unless p_fake was
    given."""

    n: int
    n_real: int
    n_fake: int
    n_edited: int
    accuracy: float
    real_precision: float | None
    real_recall: float | None
    real_f1: float | None
    fake_precision: float | None
    fake_recall: float | None
    fake_f1: float | None
    macro_f1: float | None
    n_unparsable: int
    unparsable_rate: float
    confusion: tuple[tuple[int, int, int], tuple[int, int, int]]
    probability: ProbabilityMetrics | None = None
    policy: str = UNPARSABLE_AS_MISS


def _within(items: list[Any], allowed: frozenset) -> bool:
    """Fast check that every item is one of `allowed` (False on unhashable items too)."""
    try:
        return set(items) <= allowed
    except TypeError:
        return False


def _check_gold(gold: list[Any]) -> None:
    if _within(gold, _GOLD_SET):
        return
    for i, g in enumerate(gold):
        if not isinstance(g, str) or g not in GOLD_LABELS:
            raise ValueError(
                f"gold[{i}] = {show(g)} is not a known label; expected one of 'real', 'fake', 'edited'"
            )


def _check_pred(pred: list[Any]) -> None:
    if _within(pred, _PRED_SET):
        return
    for i, p in enumerate(pred):
        if p is not None and (not isinstance(p, str) or p not in PREDICTIONS):
            raise ValueError(
                f"pred[{i}] = {show(p)} is not a known prediction; expected 'real', 'fake' or None "
                "(None marks an unparsable output)"
            )


def _check_p_fake(p_fake: list[Any]) -> np.ndarray:
    """p_fake as floats, NaN marking a row without a probability."""
    fast = float_array(p_fake)
    if fast is not None:
        x, n_none = fast
        ok = ~np.isnan(x)
        if ok.sum() == len(x) - n_none and np.all((x[ok] >= 0.0) & (x[ok] <= 1.0)):
            return x
    for i, p in enumerate(p_fake):
        if p is None:
            continue
        if not is_number(p) or math.isnan(p):
            raise ValueError(f"p_fake[{i}] = {show(p)} is not a probability; use None for a row without one")
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"p_fake[{i}] = {show(p)} is outside [0, 1]")
    return np.array([math.nan if p is None else float(p) for p in p_fake])


def _f1(tp: int, fp: int, fn: int) -> float | None:
    return ratio(2 * tp, 2 * tp + fp + fn)


def check_policy(policy: str) -> str:
    """`policy` if it names an unparsable policy; ValueError naming the choices otherwise."""
    if policy not in POLICIES:
        raise ValueError(
            f"policy {policy!r} is not an unparsable policy; use {UNPARSABLE_AS_MISS!r} (an unparsable "
            f"answer is a miss in both F1s) or {PARSED_ONLY!r} (F1 over parsed answers only)"
        )
    return policy


def class_figures(
    confusion: tuple[tuple[int, int, int], tuple[int, int, int]], policy: str = UNPARSABLE_AS_MISS
) -> dict[str, float | None]:
    """Precision, recall and F1 per class (and macro F1) from a confusion matrix
    ((rr, rf, rn), (fr, ff, fn)): gold real × pred (real, fake, none), then gold fake."""
    (rr, rf, rn), (fr, ff, fn_) = confusion
    if check_policy(policy) == PARSED_ONLY:
        rn = fn_ = 0  # unparsable answers leave the F1s entirely
    # real: TP = rr, FP = fr (fake called real), FN = rf + rn (missed real, "none" included)
    # fake: TP = ff, FP = rf, FN = fr + fn_
    real_f1 = _f1(rr, fr, rf + rn)
    fake_f1 = _f1(ff, rf, fr + fn_)
    return {
        "real_precision": ratio(rr, rr + fr),
        "real_recall": ratio(rr, rr + rf + rn),
        "real_f1": real_f1,
        "fake_precision": ratio(ff, ff + rf),
        "fake_recall": ratio(ff, fr + ff + fn_),
        "fake_f1": fake_f1,
        "macro_f1": None if real_f1 is None or fake_f1 is None else (real_f1 + fake_f1) / 2,
    }


def with_policy(m: DetectionMetrics, policy: str) -> DetectionMetrics:
    """`m` with its precision, recall and F1 recomputed under `policy` (no rescan of the rows)."""
    return replace(m, policy=policy, **class_figures(m.confusion, policy))


def detection_policies(
    gold: Sequence[str],
    pred: Sequence[str | None],
    p_fake: Sequence[float | None] | None = None,
) -> dict[str, DetectionMetrics]:
    """`detection_report` under every unparsable policy, headline first, keyed by policy name."""
    headline = detection_report(gold, pred, p_fake)
    return {policy: with_policy(headline, policy) for policy in POLICIES}


def detection_report(
    gold: Sequence[str],
    pred: Sequence[str | None],
    p_fake: Sequence[float | None] | None = None,
    *,
    policy: str = UNPARSABLE_AS_MISS,
) -> DetectionMetrics:
    """Detection figures for aligned gold labels and predictions (and optionally p_fake), with
    unparsable answers (None) entering the F1s as `policy` says ("unparsable-as-miss", the
    headline, or "parsed-only").

    Raises ValueError on an unknown policy, mismatched lengths, empty input, an unknown gold label
    or prediction, or a probability outside [0, 1].
    """
    check_policy(policy)
    gold = as_items("gold", gold)
    pred = as_items("pred", pred)
    check_aligned("gold", gold, "pred", pred)
    _check_gold(gold)
    _check_pred(pred)

    gold_arr = np.asarray(gold, dtype=object)
    pred_arr = np.asarray(pred, dtype=object)
    gold_fake = gold_arr != "real"
    pred_col = np.where(pred_arr == "real", 0, np.where(pred_arr == "fake", 1, 2))
    cells = np.bincount(gold_fake * 3 + pred_col, minlength=6)
    rr, rf, rn, fr, ff, fn_ = (int(c) for c in cells)  # gold real × (real, fake, none), then gold fake
    n = len(gold)
    n_unparsable = rn + fn_
    confusion = ((rr, rf, rn), (fr, ff, fn_))

    probability = None
    if p_fake is not None:
        p_fake = as_items("p_fake", p_fake)
        check_aligned("gold", gold, "p_fake", p_fake)
        s = _check_p_fake(p_fake)
        has = ~np.isnan(s)
        y, s = gold_fake[has].astype(bool), s[has]
        probability = probability_report(y, s, n_missing=n - len(s))

    return DetectionMetrics(
        n=n,
        n_real=rr + rf + rn,
        n_fake=fr + ff + fn_,
        n_edited=int(np.sum(gold_arr == "edited")),
        accuracy=(rr + ff) / n,
        **class_figures(confusion, policy),
        n_unparsable=n_unparsable,
        unparsable_rate=n_unparsable / n,
        confusion=confusion,
        probability=probability,
        policy=policy,
    )


def detection_breakdown(
    gold: Sequence[str],
    pred: Sequence[str | None],
    groups: Sequence[Hashable],
    p_fake: Sequence[float | None] | None = None,
    *,
    policy: str = UNPARSABLE_AS_MISS,
) -> dict[Hashable, DetectionMetrics]:
    """`detection_report` per group (e.g. each row's source, or its gold label for the
    real / t2i / edited breakdown), in order of first appearance.

    Within a group of one gold class, per-class F1 of the other class is 0 or None; accuracy
    is the figure to read there.
    """
    gold = as_items("gold", gold)
    pred = as_items("pred", pred)
    groups = as_items("groups", groups)
    check_policy(policy)
    check_aligned("gold", gold, "groups", groups)
    check_aligned("gold", gold, "pred", pred)
    p_list = None if p_fake is None else as_items("p_fake", p_fake)
    if p_list is not None:
        check_aligned("gold", gold, "p_fake", p_list)
    members: dict[Hashable, list[int]] = {}
    for i, key in enumerate(groups):
        members.setdefault(key, []).append(i)
    return {
        key: detection_report(
            [gold[i] for i in idx],
            [pred[i] for i in idx],
            None if p_list is None else [p_list[i] for i in idx],
            policy=policy,
        )
        for key, idx in members.items()
    }


def probability_report(y: np.ndarray, s: np.ndarray, n_missing: int = 0) -> ProbabilityMetrics:
    """Ranking and calibration figures for boolean targets `y` (True = fake) and scores `s`
    (p_fake in [0, 1]); inputs are assumed checked (use `detection_report` for raw rows)."""
    n = len(s)
    n_pos = int(y.sum())
    n_neg = n - n_pos
    both = n_pos > 0 and n_neg > 0
    return ProbabilityMetrics(
        n=n,
        n_missing=n_missing,
        roc_auc=_roc_auc(y, s, n_pos, n_neg) if both else None,
        average_precision=_average_precision(y, s) if n_pos > 0 else None,
        eer=_eer(y, s) if both else None,
        brier=float(np.mean((s - y) ** 2)) if n else None,
        ece=_ece(y, s) if n else None,
        reliability=_reliability(y, s),
    )


def _roc_auc(y: np.ndarray, s: np.ndarray, n_pos: int, n_neg: int) -> float:
    # Mann-Whitney U from mid-ranks: P(score of a fake > score of a real), ties counted half.
    ranks = rankdata(s)
    u = ranks[y].sum() - n_pos * (n_pos + 1) / 2
    return float(u / (n_pos * n_neg))


def _curve(y: np.ndarray, s: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Cumulative true and false positives at each distinct threshold, highest first."""
    order = np.argsort(-s, kind="mergesort")
    s_sorted, y_sorted = s[order], y[order]
    last = np.r_[np.flatnonzero(np.diff(s_sorted)), len(s) - 1]  # last index of each threshold
    tps = np.cumsum(y_sorted)[last]
    fps = last + 1 - tps
    return tps.astype(float), fps.astype(float)


def _average_precision(y: np.ndarray, s: np.ndarray) -> float:
    tps, fps = _curve(y, s)
    precision = tps / (tps + fps)
    recall = tps / tps[-1]
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def _eer(y: np.ndarray, s: np.ndarray) -> float:
    tps, fps = _curve(y, s)
    fpr = np.r_[0.0, fps / fps[-1]]
    fnr = np.r_[1.0, 1.0 - tps / tps[-1]]
    d = fnr - fpr  # non-increasing from 1 (accept nothing) to -1 (accept everything)
    i = int(np.argmax(d <= 0))
    if d[i] == 0:
        return float(fpr[i])
    t = d[i - 1] / (d[i - 1] - d[i])
    return float(fpr[i - 1] + t * (fpr[i] - fpr[i - 1]))


def _bins(y: np.ndarray, s: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    edges = np.linspace(0.0, 1.0, ECE_BINS + 1)
    ids = np.searchsorted(edges[1:-1], s)  # (lower, upper]; p = 0 falls in the first bin
    count = np.bincount(ids, minlength=ECE_BINS)
    sum_p = np.bincount(ids, weights=s, minlength=ECE_BINS)
    sum_y = np.bincount(ids, weights=y.astype(float), minlength=ECE_BINS)
    return edges, count, sum_p, sum_y


def _ece(y: np.ndarray, s: np.ndarray) -> float:
    # Σ_b (n_b / n) · |mean_p_b − frac_b| = Σ_b |sum_p_b − sum_y_b| / n
    _, _, sum_p, sum_y = _bins(y, s)
    return float(np.abs(sum_p - sum_y).sum() / len(s))


def _reliability(y: np.ndarray, s: np.ndarray) -> tuple[ReliabilityBin, ...]:
    edges, count, sum_p, sum_y = _bins(y, s)
    return tuple(
        ReliabilityBin(
            lower=float(edges[b]),
            upper=float(edges[b + 1]),
            count=int(count[b]),
            mean_p_fake=float(sum_p[b] / count[b]) if count[b] else None,
            fraction_fake=float(sum_y[b] / count[b]) if count[b] else None,
        )
        for b in range(ECE_BINS)
    )
