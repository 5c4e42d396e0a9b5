"""Meta-evaluation: how well a judge agrees with gold (and human) scores or preferences.

Every figure comes with a 95% percentile bootstrap interval over items (fixed seed, paired
resampling; `metrics.bootstrap`), the number of items it was computed on and the number of
unparsable predictions among the joined items. The statistics themselves are `metrics/`'s.

Pointwise: RMSE, MAE, Pearson, Spearman, Kendall (tau-b) on the parsed `score` and on
`expected_score`; exact and within-one agreement (unparsable = disagreement); a gold x judge
confusion matrix. Pairwise: accuracy (unparsable = wrong), accuracy over parsed choices,
both-order consistency (the `agree` field), and optionally the accuracy of preferences derived
from a pointwise judge's scores of the two responses. Human sets: gold rows with
`human_scores: {annotator: 1..5}` (pointwise) or `human_preferences: {annotator: "A"|"B"}`
(pairwise) add Cohen's kappa for every pair of annotators and for the judge against each
annotator (quadratic weights for scores, unweighted for preferences), and Krippendorff's alpha
(ordinal / nominal) among annotators, and with the judge as one more coder.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from itertools import combinations
from typing import Any

import numpy as np

from ..errors import UsageError
from ..metrics import (
    bootstrap_ci,
    bootstrap_cis,
    cohen_kappa,
    krippendorff_alpha,
    pairwise_accuracy,
    pointwise_agreement,
)
from ..prompts import Template
from ..records import Sample
from ..tables import markdown_table
from .join import Joined, choice_value, join, score_value

SCORE_LEVELS = (1, 2, 3, 4, 5)
POINTWISE_FIGURES = (
    ("rmse", "RMSE ↓"), ("mae", "MAE ↓"), ("pearson", "Pearson ↑"), ("spearman", "Spearman ↑"),
    ("kendall", "Kendall ↑"), ("exact_agreement", "exact agreement ↑"), ("within_one", "within one ↑"),
)


@dataclass(frozen=True)
class Figure:
    key: str
    label: str
    value: float | None
    low: float | None
    high: float | None
    n: int  # items the figure was computed on
    unparsable: int  # unparsable predictions among the joined items this figure concerns


@dataclass(frozen=True)
class Bootstrap:
    resamples: int = 1000
    seed: int = 0
    confidence: float = 0.95


def _finite(x: float | None) -> float | None:
    return None if x is None or not math.isfinite(x) else float(x)


def _figure(key: str, label: str, ci: Any, value: float | None, n: int, unparsable: int) -> Figure:
    low = high = None
    if ci is not None and ci.n_used:
        low, high = _finite(ci.low), _finite(ci.high)
    return Figure(key, label, _finite(value) if value is not None else None, low, high, n, unparsable)


def pointwise_figures(gold: list[int], pred: list[float | None], suffix: str, boot: Bootstrap,
                      integral: bool) -> tuple[list[Figure], Any]:
    agreement = pointwise_agreement(gold, pred)
    full = agreement.to_dict()
    cis = bootstrap_cis(lambda g, p: pointwise_agreement(g, p).to_dict(), gold, pred,
                        n_resamples=boot.resamples, seed=boot.seed, confidence=boot.confidence)
    figures = []
    for key, label in POINTWISE_FIGURES:
        if key in ("exact_agreement", "within_one") and not integral:
            continue
        n = agreement.n if key in ("exact_agreement", "within_one") else agreement.n_parsed
        figures.append(_figure(f"{key}{suffix}", f"{label} ({suffix.strip('_') or 'score'})", cis.get(key),
                               full[key], n, agreement.n_unparsable))
    return figures, agreement


def _mean(values: np.ndarray) -> float | None:
    return float(np.mean(values.astype(float))) if len(values) else None


def _ci_figure(key: str, label: str, fn: Callable[..., float | None], arrays: Sequence[Sequence[Any]],
               boot: Bootstrap, unparsable: int) -> Figure:
    n = len(arrays[0]) if arrays else 0
    if n == 0:
        return Figure(key, label, None, None, None, 0, unparsable)
    ci = bootstrap_ci(fn, *arrays, n_resamples=boot.resamples, seed=boot.seed, confidence=boot.confidence)
    return _figure(key, label, ci, ci.estimate, n, unparsable)


def human_figures(samples: Sequence[Sample], judge: Sequence[Any], field: str, levels: tuple[Any, ...],
                  boot: Bootstrap, problems: list[str]) -> list[Figure]:
    """Annotator agreement from `extra[field]` = {annotator: rating} and the judge's agreement with them."""
    ratings: list[dict[str, Any]] = []
    for s in samples:
        given = s.extra.get(field) or {}
        clean = {}
        if not isinstance(given, dict):
            problems.append(f"{s.where}: {field} must be an object {{annotator: rating}}; ignored")
            given = {}
        for who, r in given.items():
            if r is None:
                continue
            if r not in levels or isinstance(r, bool):
                problems.append(f"{s.where}: {field}[{who!r}] = {r!r} is not one of {list(levels)}; ignored")
                continue
            clean[str(who)] = r
        ratings.append(clean)
    annotators = sorted({who for r in ratings for who in r})
    if not annotators:
        return []
    weights = "quadratic" if field == "human_scores" else None
    tag = " (quadratic)" if weights else ""
    level = "ordinal" if field == "human_scores" else "nominal"

    def kappa(a, b):
        return cohen_kappa(list(a), list(b), weights=weights, labels=levels)

    figures = []
    for x, y in combinations(annotators, 2):
        both = [(r[x], r[y]) for r in ratings if x in r and y in r]
        cols = [[p[0] for p in both], [p[1] for p in both]]
        figures.append(_ci_figure(f"kappa_{x}_{y}", f"Cohen's κ{tag}: {x} vs {y}", kappa, cols, boot, 0))
    for who in annotators:
        rated = [(r[who], j) for r, j in zip(ratings, judge) if who in r]
        parsed = [(h, j) for h, j in rated if j is not None]
        cols = [[p[0] for p in parsed], [p[1] for p in parsed]]
        figures.append(_ci_figure(f"kappa_judge_{who}", f"Cohen's κ{tag}: judge vs {who}", kappa, cols, boot,
                                  len(rated) - len(parsed)))

    def alpha(units):
        return krippendorff_alpha([list(u) for u in units], level=level)

    humans = [[r.get(who) for who in annotators] for r in ratings]
    paired = [u for u in humans if sum(v is not None for v in u) >= 2]
    if len(annotators) >= 2:
        figures.append(_ci_figure("alpha_annotators", f"Krippendorff's α ({level}): annotators", alpha,
                                  [paired], boot, 0))
    with_judge = [u + [j] for u, j in zip(humans, judge) if sum(v is not None for v in u + [j]) >= 2]
    figures.append(_ci_figure("alpha_with_judge", f"Krippendorff's α ({level}): annotators + judge", alpha,
                              [with_judge], boot, sum(j is None for j in judge)))
    return figures


@dataclass(frozen=True)
class MetaEval:
    kind: str
    pred: str
    gold: str
    figures: tuple[Figure, ...]
    confusion: tuple[tuple[int, ...], ...] | None
    counts: dict[str, int]
    problems: tuple[str, ...]
    bootstrap: Bootstrap
    unparsable: tuple[str, ...] = ()  # "file:line: id" of each joined prediction without a parsed value

    def figure(self, key: str) -> Figure | None:
        return next((f for f in self.figures if f.key == key), None)

    def to_dict(self) -> dict[str, Any]:
        main = ("rmse", "mae", "pearson", "spearman", "kendall", "exact_agreement", "within_one") \
            if self.kind == "pointwise" else ("accuracy", "accuracy_parsed", "consistency", "accuracy_from_pointwise")
        head: dict[str, Any] = {"kind": self.kind, "pred": self.pred, "gold": self.gold, "n": self.counts["joined"]}
        first = self.figures[0] if self.figures else None
        head["unparsable"] = first.unparsable if first else 0
        for key in main:
            f = self.figure(key)
            if f is not None:
                head[key] = f.value
        return {
            **head,
            "figures": [asdict(f) for f in self.figures],
            "confusion": None if self.confusion is None else [list(r) for r in self.confusion],
            "counts": self.counts,
            "problems": list(self.problems),
            "unparsable_rows": list(self.unparsable),
            "bootstrap": asdict(self.bootstrap),
        }


def evaluate_pointwise(pred: str, gold: str, templates: tuple[Template, ...] = (),
                       boot: Bootstrap = Bootstrap()) -> MetaEval:
    joined = join(pred, gold, "pointwise", templates)
    problems = list(joined.problems)
    samples = [s for s, _ in joined.items]
    gold_scores = [s.score for s in samples]
    scores = [score_value(p.row, "score", p.where, problems, integral=True) for _, p in joined.items]
    expected = [score_value(p.row, "expected_score", p.where, problems, integral=False) for _, p in joined.items]
    figures: list[Figure] = []
    confusion = None
    if samples:
        fs, agreement = pointwise_figures(gold_scores, scores, "", boot, integral=True)
        figures += fs
        confusion = agreement.confusion
        if any(e is not None for e in expected):
            figures += pointwise_figures(gold_scores, expected, "_expected", boot, integral=False)[0]
        judge = [None if v is None else int(v) for v in scores]
        figures += human_figures(samples, judge, "human_scores", SCORE_LEVELS, boot, problems)
    return MetaEval("pointwise", str(pred), str(gold), tuple(figures), confusion, joined.counts,
                    tuple(problems), boot, _unparsable(joined, scores, "score"))


def _unparsable(joined: Joined, values: Sequence[Any], field: str) -> tuple[str, ...]:
    return tuple(f"{p.where}: id {s.id!r}: no parsable {field}" for (s, p), v in zip(joined.items, values) if v is None)


def _derived_choices(samples: Sequence[Sample], pointwise_pred: str, pointwise_gold: str,
                     templates: tuple[Template, ...], problems: list[str]) -> list[str | None] | None:
    """Preference implied by a pointwise judge's scores of response_a and response_b (expected
    score where both have one, else the parsed score); a tie or a missing score gives None."""
    joined = join(pointwise_pred, pointwise_gold, "pointwise", templates)
    by_response: dict[tuple[str, str], dict[str, Any]] = {}
    for s, p in joined.items:
        if s.response:
            by_response.setdefault((str(s.image), s.response.strip()), p.row)
    choices: list[str | None] = []
    for s in samples:
        a = by_response.get((str(s.image), (s.response_a or "").strip()))
        b = by_response.get((str(s.image), (s.response_b or "").strip()))
        if a is None or b is None:
            problems.append(f"{s.where}: pair {s.id!r}: response_{'a' if a is None else 'b'} has no pointwise "
                            f"prediction (matched on image and text) in {pointwise_pred}")
            choices.append(None)
            continue
        key = "expected_score" if a.get("expected_score") is not None and b.get("expected_score") is not None else "score"
        sa, sb = a.get(key), b.get(key)
        choices.append(None if sa is None or sb is None or sa == sb else ("A" if sa > sb else "B"))
    return choices


def evaluate_pairwise(pred: str, gold: str, templates: tuple[Template, ...] = (), boot: Bootstrap = Bootstrap(),
                      pointwise_pred: str | None = None, pointwise_gold: str | None = None) -> MetaEval:
    joined = join(pred, gold, "pairwise", templates)
    problems = list(joined.problems)
    samples = [s for s, _ in joined.items]
    gold_pref = [s.preferred for s in samples]
    choices = [choice_value(p.row, "choice", p.where, problems) for _, p in joined.items]
    figures: list[Figure] = []
    if samples:
        n_unparsable = sum(c is None for c in choices)
        acc = pairwise_accuracy(gold_pref, choices).to_dict()
        cis = bootstrap_cis(lambda g, p: pairwise_accuracy(g, p).to_dict(), gold_pref, choices,
                            n_resamples=boot.resamples, seed=boot.seed, confidence=boot.confidence)
        figures.append(_figure("accuracy", "accuracy ↑ (unparsable = wrong)", cis.get("accuracy"), acc["accuracy"],
                               len(samples), n_unparsable))
        figures.append(_figure("accuracy_parsed", "accuracy ↑ (parsed only)", cis.get("accuracy_parsed"),
                               acc["accuracy_parsed"], len(samples) - n_unparsable, n_unparsable))
        agree = [p.row.get("agree") for _, p in joined.items]
        both = np.array([a for a in agree if isinstance(a, bool)], dtype=bool)
        if len(both):
            figures.append(_ci_figure("consistency", "both-order consistency ↑", _mean, [both], boot,
                                      len(agree) - len(both)))
        if pointwise_pred is not None:
            if pointwise_gold is None:
                raise UsageError("--pointwise-pred needs --pointwise-gold (the rows the pointwise judge scored), "
                                 "to find each pair's two responses")
            derived = _derived_choices(samples, pointwise_pred, pointwise_gold, templates, problems)
            n_none = sum(c is None for c in derived)
            cis = bootstrap_cis(lambda g, p: pairwise_accuracy(g, p).to_dict(), gold_pref, derived,
                                n_resamples=boot.resamples, seed=boot.seed, confidence=boot.confidence)
            figures.append(_figure("accuracy_from_pointwise", "accuracy ↑ of pointwise-derived preferences "
                                   "(ties = wrong)", cis.get("accuracy"),
                                   pairwise_accuracy(gold_pref, derived).accuracy, len(samples), n_none))
        figures += human_figures(samples, choices, "human_preferences", ("A", "B"), boot, problems)
    return MetaEval("pairwise", str(pred), str(gold), tuple(figures), None, joined.counts, tuple(problems), boot,
                    _unparsable(joined, choices, "choice"))


def _fmt(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.3f}"


def markdown(result: MetaEval) -> str:
    """A summary row like the paper's tables, the per-figure table with CIs, and the confusion matrix."""
    c = result.counts
    pct = round(result.bootstrap.confidence * 100)
    lines = [
        f"Meta-evaluation ({result.kind}): {result.pred} vs {result.gold}",
        f"{c['joined']} joined; {c.get('missing_prediction', 0)} gold rows without prediction, "
        f"{c.get('no_gold_row', 0)} predictions without gold, {c.get('duplicates', 0)} duplicates, "
        f"{c.get('errors', 0)} judge error rows, {c.get('malformed', 0)} malformed lines",
        "",
    ]
    keys = ("rmse", "pearson", "spearman", "kendall", "rmse_expected", "pearson_expected") \
        if result.kind == "pointwise" else ("accuracy", "consistency", "accuracy_from_pointwise")
    shown = [result.figure(k) for k in keys if result.figure(k) is not None]
    if shown:
        lines += [markdown_table(["judge", "n", *(f.label for f in shown)],
                                 [[result.pred, c["joined"], *(_fmt(f.value) for f in shown)]], "lr" + "r" * len(shown)), ""]
    lines.append(markdown_table(
        ["figure", "value", f"{pct}% CI", "n", "unparsable"],
        [[f.label, _fmt(f.value), "n/a" if f.low is None else f"[{f.low:.3f}, {f.high:.3f}]", f.n, f.unparsable]
         for f in result.figures],
        "lrlrr"))
    if result.confusion is not None:
        lines += ["", "Confusion (rows: gold score, columns: judge score; parsed scores only)", "",
                  markdown_table(["gold \\ judge", *map(str, SCORE_LEVELS)],
                                 [[level, *row] for level, row in zip(SCORE_LEVELS, result.confusion)], "lrrrrr")]
    lines.append("")
    lines.append(f"CIs: percentile bootstrap over items, {result.bootstrap.resamples} resamples, seed "
                 f"{result.bootstrap.seed}.")
    return "\n".join(lines)
