"""Judge meta-evaluation: how well judge scores or choices agree with gold ones.

- `pointwise_agreement`: gold 1..5 scores against judge scores (parsed integers, or expected
  scores Σ k·p_k as floats in [1, 5]; None = unparsable).
- `pairwise_accuracy`: gold preferred response (A/B) against the judge's choice (None = unparsable).
- `cohen_kappa`: two raters, every item rated by both; unweighted, linear or quadratic weights.
- `krippendorff_alpha`: any number of coders, missing ratings allowed; nominal, ordinal,
  interval or ratio data (Krippendorff 2011, "Computing Krippendorff's Alpha-Reliability").

Unparsable predictions are counted and reported, never dropped silently: they count as wrong in
the accuracy-like figures and are left out of the correlations and error figures, which are
computed on the parsed items only.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
from scipy.stats import kendalltau, rankdata

from deepfakejudge.metrics._common import (
    Result,
    as_items,
    check_aligned,
    float_array,
    is_missing,
    is_number,
    ratio,
    show,
)

SCORE_MIN, SCORE_MAX = 1, 5
PAIRWISE_CHOICES: tuple[str, ...] = ("A", "B")
Level = Literal["nominal", "ordinal", "interval", "ratio"]
Weights = Literal["linear", "quadratic"]


@dataclass(frozen=True)
class PointwiseAgreement(Result):
    """Agreement of judge scores with gold 1..5 scores.

    `rmse`, `mae` and the correlations use the `n_parsed` items with a prediction (None when
    fewer than 2 items, or one side is constant, leave a correlation undefined); Kendall is
    tau-b. `exact_agreement` and `within_one` (|gold − pred| ≤ 1) are over all `n` items, an
    unparsable prediction counting as disagreement; they and `confusion` (gold 1..5 rows × pred
    1..5 columns, parsed items only) need integer predictions and are None when any prediction
    is fractional (expected scores): pass the parsed scores for them.
    """

    n: int
    n_parsed: int
    n_unparsable: int
    unparsable_rate: float
    rmse: float | None
    mae: float | None
    pearson: float | None
    spearman: float | None
    kendall: float | None
    exact_agreement: float | None
    within_one: float | None
    confusion: tuple[tuple[int, ...], ...] | None


@dataclass(frozen=True)
class PairwiseAccuracy(Result):
    """Pairwise choice accuracy. `accuracy` is over all `n` items (unparsable = wrong);
    `accuracy_parsed` is over the parsed ones only (None when there are none)."""

    n: int
    n_correct: int
    n_unparsable: int
    unparsable_rate: float
    accuracy: float
    accuracy_parsed: float | None


def _check_gold_scores(name: str, values: Sequence[Any]) -> np.ndarray:
    fast = float_array(values)
    if fast is not None:
        x, n_none = fast
        if not n_none and np.all((x >= SCORE_MIN) & (x <= SCORE_MAX) & (x == np.round(x))):
            return x
    for i, v in enumerate(values):
        if not is_number(v) or not float(v).is_integer() or not SCORE_MIN <= v <= SCORE_MAX:
            raise ValueError(f"{name}[{i}] = {show(v)} is not an integer score in {SCORE_MIN}..{SCORE_MAX}")
    return np.array([float(v) for v in values])  # valid numbers of a type the fast path skips


def _check_pred_scores(name: str, values: Sequence[Any]) -> np.ndarray:
    """Scores as floats with NaN for None; a number outside [1, 5] (or NaN itself) is an error."""
    fast = float_array(values)
    if fast is not None:
        x, n_none = fast
        ok = ~np.isnan(x)
        if ok.sum() == len(x) - n_none and np.all((x[ok] >= SCORE_MIN) & (x[ok] <= SCORE_MAX)):
            return x
    for i, v in enumerate(values):
        if v is not None and (not is_number(v) or math.isnan(v) or not SCORE_MIN <= v <= SCORE_MAX):
            raise ValueError(
                f"{name}[{i}] = {show(v)} is not a score in [{SCORE_MIN}, {SCORE_MAX}]; "
                "use None for an unparsable score"
            )
    return np.array([math.nan if v is None else float(v) for v in values])


def _items(name: str, values: Sequence[Any]) -> Sequence[Any]:
    """Numeric numpy arrays pass as they are (checked vectorised); anything else as a list."""
    if isinstance(values, np.ndarray) and values.ndim == 1 and values.dtype.kind in "iuf":
        return values
    return as_items(name, values)


def _pearson(x: np.ndarray, y: np.ndarray) -> float | None:
    if len(x) < 2 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return None
    dx, dy = x - x.mean(), y - y.mean()
    r = float(np.dot(dx, dy) / math.sqrt(np.dot(dx, dx) * np.dot(dy, dy)))
    return max(-1.0, min(1.0, r))


def _kendall(x: np.ndarray, y: np.ndarray) -> float | None:
    if len(x) < 2 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return None
    return float(kendalltau(x, y, variant="b").statistic)


def pointwise_agreement(
    gold_scores: Sequence[int],
    pred_scores: Sequence[float | None],
) -> PointwiseAgreement:
    """Agreement of `pred_scores` (1..5 numbers or None) with `gold_scores` (integers 1..5).

    Raises ValueError on mismatched lengths, empty input or a score outside 1..5.
    """
    gold_list = _items("gold_scores", gold_scores)
    pred_list = _items("pred_scores", pred_scores)
    check_aligned("gold_scores", gold_list, "pred_scores", pred_list)
    gold = _check_gold_scores("gold_scores", gold_list)
    pred = _check_pred_scores("pred_scores", pred_list)

    n = len(gold)
    parsed = ~np.isnan(pred)
    g, p = gold[parsed], pred[parsed]
    n_parsed = int(parsed.sum())
    err = p - g

    integral = bool(np.all(p == np.round(p)))
    exact = within = confusion = None
    if integral:
        exact = float(np.sum(err == 0)) / n
        within = float(np.sum(np.abs(err) <= 1)) / n
        size = SCORE_MAX - SCORE_MIN + 1
        cells = np.zeros((size, size), dtype=int)
        np.add.at(cells, (g.astype(int) - SCORE_MIN, p.astype(int) - SCORE_MIN), 1)
        confusion = tuple(tuple(int(c) for c in row) for row in cells)

    return PointwiseAgreement(
        n=n,
        n_parsed=n_parsed,
        n_unparsable=n - n_parsed,
        unparsable_rate=(n - n_parsed) / n,
        rmse=float(np.sqrt(np.mean(err**2))) if n_parsed else None,
        mae=float(np.mean(np.abs(err))) if n_parsed else None,
        pearson=_pearson(g, p),
        spearman=_pearson(rankdata(g), rankdata(p)) if n_parsed >= 2 else None,
        kendall=_kendall(g, p),
        exact_agreement=exact,
        within_one=within,
        confusion=confusion,
    )


def pairwise_accuracy(gold: Sequence[str], pred: Sequence[str | None]) -> PairwiseAccuracy:
    """Accuracy of the judge's choices `pred` ("A", "B" or None) against `gold` ("A" or "B")."""
    gold = as_items("gold", gold)
    pred = as_items("pred", pred)
    check_aligned("gold", gold, "pred", pred)
    for i, g in enumerate(gold):
        if not isinstance(g, str) or g not in PAIRWISE_CHOICES:
            raise ValueError(f"gold[{i}] = {show(g)} is not a choice; expected 'A' or 'B'")
    for i, p in enumerate(pred):
        if p is not None and (not isinstance(p, str) or p not in PAIRWISE_CHOICES):
            raise ValueError(f"pred[{i}] = {show(p)} is not a choice; expected 'A', 'B' or None (unparsable)")
    n = len(gold)
    n_unparsable = sum(p is None for p in pred)
    n_correct = sum(g == p for g, p in zip(gold, pred))
    return PairwiseAccuracy(
        n=n,
        n_correct=n_correct,
        n_unparsable=n_unparsable,
        unparsable_rate=n_unparsable / n,
        accuracy=n_correct / n,
        accuracy_parsed=ratio(n_correct, n - n_unparsable),
    )


def cohen_kappa(
    a: Sequence[Hashable],
    b: Sequence[Hashable],
    weights: Weights | None = None,
    labels: Sequence[Hashable] | None = None,
) -> float | None:
    """Cohen's kappa between two raters who rated the same items.

    kappa = 1 − Σ w_ij·O_ij / Σ w_ij·E_ij, with O the observed and E the chance (product of
    marginals) joint distribution; w_ij = [i ≠ j] (unweighted), |i − j| ("linear") or
    (i − j)² ("quadratic"), i and j being positions in `labels`. `labels` defaults to the sorted
    values seen; for scores pass `labels=(1, 2, 3, 4, 5)` so that an unused level still counts
    in the weighted distances. Same definition as sklearn's `cohen_kappa_score`. Returns None
    when chance disagreement is 0 (e.g. both raters always give the same single value).
    """
    a = as_items("a", a)
    b = as_items("b", b)
    check_aligned("a", a, "b", b)
    if weights not in (None, "linear", "quadratic"):
        raise ValueError(f"weights = {weights!r}; expected None, 'linear' or 'quadratic'")
    for name, values in (("a", a), ("b", b)):
        for i, v in enumerate(values):
            if is_missing(v):
                raise ValueError(
                    f"{name}[{i}] is missing; Cohen's kappa needs both ratings of every item "
                    "(use krippendorff_alpha for missing ratings)"
                )
    if labels is None:
        try:
            labels = sorted(set(a) | set(b))
        except TypeError:
            raise ValueError("a and b mix values that cannot be ordered; pass labels") from None
    else:
        labels = as_items("labels", labels)
        if len(set(labels)) != len(labels):
            raise ValueError(f"labels = {labels!r} has duplicates")
    index = {label: k for k, label in enumerate(labels)}
    for name, values in (("a", a), ("b", b)):
        for i, v in enumerate(values):
            if v not in index:
                raise ValueError(f"{name}[{i}] = {show(v)} is not in labels {labels!r}")

    k = len(labels)
    observed = np.zeros((k, k))
    np.add.at(observed, ([index[v] for v in a], [index[v] for v in b]), 1)
    observed /= observed.sum()
    expected = np.outer(observed.sum(axis=1), observed.sum(axis=0))
    pos = np.arange(k)
    diff = np.abs(pos[:, None] - pos[None, :]).astype(float)
    w = {None: (diff > 0).astype(float), "linear": diff, "quadratic": diff**2}[weights]
    chance = float(np.sum(w * expected))
    if chance == 0:
        return None
    return 1.0 - float(np.sum(w * observed)) / chance


def krippendorff_alpha(
    ratings: Sequence[Sequence[Any]],
    level: Level = "nominal",
) -> float | None:
    """Krippendorff's alpha for `ratings`, units × coders, None (or NaN) for a missing rating.

    Follows Krippendorff (2011): only units with at least two ratings are pairable; the
    coincidence matrix o_ck = Σ_u (number of c–k pairs of ratings of u by different coders) /
    (m_u − 1); n_c = Σ_k o_ck; n = Σ_c n_c; and alpha = 1 − (n − 1)·Σ o_ck δ²_ck / Σ n_c n_k δ²_ck.
    δ²: nominal [c ≠ k]; interval (c − k)²; ratio ((c − k)/(c + k))²; ordinal
    (Σ_{g=c..k} n_g − (n_c + n_k)/2)² over the ordered values seen. Nominal values may be any
    hashable; the other levels need numbers (non-negative for ratio).

    Returns None when alpha is undefined: no unit with two ratings, or no variation at all.
    """
    if level not in ("nominal", "ordinal", "interval", "ratio"):
        raise ValueError(f"level = {level!r}; expected 'nominal', 'ordinal', 'interval' or 'ratio'")
    units = as_items("ratings", ratings)
    if not units:
        raise ValueError("ratings is empty; expected units × coders")
    rows = [as_items(f"ratings[{u}]", row) for u, row in enumerate(units)]
    n_coders = len(rows[0])
    values: dict[Any, int] = {}
    cells: list[tuple[int, Any]] = []
    for u, row in enumerate(rows):
        if len(row) != n_coders:
            raise ValueError(
                f"ratings[{u}] has {len(row)} coders but ratings[0] has {n_coders}; "
                "use None for a missing rating"
            )
        for c, v in enumerate(row):
            if is_missing(v):
                continue
            if level != "nominal" and not is_number(v):
                raise ValueError(f"ratings[{u}][{c}] = {show(v)} is not a number ({level} data)")
            if level == "ratio" and v < 0:
                raise ValueError(f"ratings[{u}][{c}] = {show(v)} is negative (ratio data)")
            cells.append((u, values.setdefault(v, len(values))))

    if level != "nominal":  # order the value index numerically
        ordered = sorted(values)
        rank = {values[v]: k for k, v in enumerate(ordered)}
        cells = [(u, rank[k]) for u, k in cells]
        value_list = np.asarray(ordered, dtype=float)
    n_values = len(values)
    counts = np.zeros((len(rows), n_values))
    if cells:
        u_idx, v_idx = zip(*cells)
        np.add.at(counts, (list(u_idx), list(v_idx)), 1)
    m = counts.sum(axis=1)
    counts = counts[m >= 2]
    if len(counts) == 0:
        return None
    weight = 1.0 / (counts.sum(axis=1) - 1)
    coincidence = (counts * weight[:, None]).T @ counts - np.diag(weight @ counts)
    n_c = coincidence.sum(axis=1)
    n = n_c.sum()

    if level == "nominal":
        delta2 = 1.0 - np.eye(n_values)
    elif level == "interval":
        delta2 = (value_list[:, None] - value_list[None, :]) ** 2
    elif level == "ratio":
        total = value_list[:, None] + value_list[None, :]
        diff = value_list[:, None] - value_list[None, :]
        delta2 = np.divide(diff, total, out=np.zeros_like(diff), where=total != 0) ** 2
    else:  # ordinal: Σ_{g=c..k} n_g − (n_c + n_k)/2, symmetric in c, k
        cum = np.cumsum(n_c)
        lo = np.minimum.outer(np.arange(n_values), np.arange(n_values))
        hi = np.maximum.outer(np.arange(n_values), np.arange(n_values))
        between = cum[hi] - cum[lo] + n_c[lo]
        delta2 = (between - (n_c[:, None] + n_c[None, :]) / 2) ** 2

    expected = float(n_c @ delta2 @ n_c)
    if expected == 0:
        return None
    return 1.0 - (n - 1) * float(np.sum(coincidence * delta2)) / expected
