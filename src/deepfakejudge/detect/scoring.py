"""Score prediction files against gold labels: DFJ-Detect figures, CIs, breakdowns, tables.

Definitions are those of `metrics.detection`. Unparsable answers enter the F1s under two named
policies, reported side by side: "unparsable-as-miss" (the headline: a miss for the true class,
so refusing to answer is never rewarded) and "parsed-only" (F1 over parsed answers; accuracy over
all items under both). Which rows count:
- a prediction row whose id is in the gold set and that passed validation is scored;
- a problem row (bad label, duplicate, id not in gold…) is excluded and counted;
- a gold id without a usable prediction (no row, a run error, a problem row) is "missing": left
  out by default (so a `--limit` run can be scored), scored as unparsable with
  `missing_as_unparsable` (a detector that fails on an image has missed it).
"""

from __future__ import annotations

import csv
import io
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ..errors import InputError
from ..metrics import (
    PARSED_ONLY,
    POLICIES,
    UNPARSABLE_AS_MISS,
    BootstrapCI,
    DetectionMetrics,
    bootstrap_cis,
    detection_breakdown,
    detection_report,
    with_policy,
)
from ..metrics.detection import check_policy, class_figures
from ..records import RowError
from ..tables import MISSING, markdown_table, num, pct
from .predictions import Gold, PredictionFile

KINDS = {"real": "real", "fake": "t2i", "edited": "edited"}  # gold label -> manipulation kind
CI_FIGURES = ("accuracy", "real_f1", "fake_f1", "macro_f1", "unparsable_rate")
POLICY_FIGURES = ("real_precision", "real_recall", "real_f1", "fake_precision", "fake_recall", "fake_f1", "macro_f1")
PARSED_ONLY_CI = ("real_f1", "fake_f1", "macro_f1")  # CI keys "parsed_only_<figure>"
PROB_FIGURES = ("roc_auc", "average_precision", "eer", "brier", "ece")


@dataclass(frozen=True)
class DetectionScore:
    """Everything `dfj detect score` reports for one prediction file."""

    name: str
    pred: str
    gold: str
    ids: tuple[str, ...]
    metrics: DetectionMetrics
    ci: Mapping[str, BootstrapCI]
    by_kind: Mapping[str, DetectionMetrics]
    by_source: Mapping[str, DetectionMetrics]
    problems: tuple[RowError, ...]
    missing: tuple[str, ...]
    run_errors: tuple[RowError, ...]
    missing_as_unparsable: bool

    def under(self, policy: str) -> DetectionMetrics:
        """The overall figures under an unparsable policy ("unparsable-as-miss" is `metrics`)."""
        return with_policy(self.metrics, check_policy(policy))

    def ci_under(self, policy: str) -> dict[str, BootstrapCI]:
        """The CIs of the F1s and accuracy under `policy`, keyed by figure name."""
        if check_policy(policy) == UNPARSABLE_AS_MISS:
            return {k: v for k, v in self.ci.items() if k in ("accuracy", "real_f1", "fake_f1", "macro_f1")}
        out = {k: self.ci[f"parsed_only_{k}"] for k in PARSED_ONLY_CI if f"parsed_only_{k}" in self.ci}
        if "accuracy" in self.ci:
            out["accuracy"] = self.ci["accuracy"]
        return out

    def to_dict(self) -> dict[str, Any]:
        m = self.metrics
        out: dict[str, Any] = {
            "name": self.name,
            "pred": self.pred,
            "data": self.gold,
            "n": m.n,
            "accuracy": m.accuracy,
            "real_f1": m.real_f1,
            "fake_f1": m.fake_f1,
            "macro_f1": m.macro_f1,
            "unparsable": m.n_unparsable,
            "unparsable_rate": m.unparsable_rate,
        }
        out.update(m.to_dict())
        out["policies"] = {
            policy: {"accuracy": m.accuracy, **{k: getattr(under, k) for k in POLICY_FIGURES},
                     "unparsable": m.n_unparsable,
                     "ci": {k: v.to_dict() for k, v in self.ci_under(policy).items()}}
            for policy, under in ((p, self.under(p)) for p in POLICIES)
        }
        out["confusion"] = {
            gold: dict(zip(("real", "fake", "none"), row)) for gold, row in zip(("real", "fake"), m.confusion)
        }
        out["ci"] = {k: v.to_dict() for k, v in self.ci.items()}
        out["by_kind"] = {k: _brief(v) for k, v in self.by_kind.items()}
        out["by_source"] = {k: _brief(v) for k, v in self.by_source.items()}
        out["problems"] = {
            "count": len(self.problems),
            "rows": [{"where": e.where, "field": e.field, "id": e.id, "message": e.message} for e in self.problems],
        }
        out["missing"] = {"count": len(self.missing), "ids": list(self.missing),
                          "scored_as_unparsable": self.missing_as_unparsable}
        out["run_errors"] = len(self.run_errors)
        return out


def _brief(m: DetectionMetrics) -> dict[str, Any]:
    keys = ("n", "accuracy", "real_f1", "fake_f1", "macro_f1", "n_unparsable")
    d = m.to_dict()
    out = {k: d[k] for k in keys}
    out["unparsable"] = out.pop("n_unparsable")
    parsed = class_figures(m.confusion, PARSED_ONLY)
    out["parsed_only"] = {k: parsed[k] for k in ("real_f1", "fake_f1", "macro_f1")}
    if m.probability is not None:
        out["roc_auc"] = m.probability.roc_auc
    return out


def _ci_figures(gold: Sequence[str], pred: Sequence[str | None], p_fake: Sequence[float | None] | None) -> dict[str, Any]:
    m = detection_report(gold, pred, p_fake)
    out = {k: getattr(m, k) for k in CI_FIGURES}
    parsed = class_figures(m.confusion, PARSED_ONLY)  # same resample, other policy: no second pass
    out.update({f"parsed_only_{k}": parsed[k] for k in PARSED_ONLY_CI})
    if m.probability is not None:
        out.update({k: getattr(m.probability, k) for k in PROB_FIGURES})
    return out


def score_predictions(
    pred: PredictionFile,
    gold: Gold,
    *,
    name: str | None = None,
    missing_as_unparsable: bool = False,
    n_resamples: int = 1000,
    seed: int = 0,
) -> DetectionScore:
    """Score `pred` against `gold`. Raises ValueError when no row can be scored."""
    problems = list(gold.problems) + list(pred.problems)
    scored = []
    for row in pred.rows:
        if row.id not in gold.samples:
            problems.append(RowError(row.where, "id", f"id {row.id!r} is not in the gold set {gold.name}; row skipped", id=row.id))
            continue
        scored.append(row)
    have = {r.id for r in scored}
    missing = tuple(i for i in gold.samples if i not in have)
    if missing_as_unparsable:
        scored_items = [(i, None, None) for i in missing]
    else:
        scored_items = []
    scored_items = [(r.id, r.prediction, r.p_fake) for r in scored] + scored_items
    if not scored_items:
        raise InputError(
            f"--pred {pred.path}: no row can be scored against {gold.name} "
            f"({len(pred.rows)} usable rows, {len(problems)} problems); check that the ids match the gold set"
        )
    ids = [i for i, _, _ in scored_items]
    labels = [gold.samples[i].label for i in ids]
    preds = [p for _, p, _ in scored_items]
    probs = [p for _, _, p in scored_items]
    p_fake = probs if any(p is not None for p in probs) else None
    metrics = detection_report(labels, preds, p_fake)
    ci = bootstrap_cis(
        _ci_figures if p_fake is not None else (lambda g, p: _ci_figures(g, p, None)),
        labels,
        preds,
        *([p_fake] if p_fake is not None else []),
        n_resamples=n_resamples,
        seed=seed,
    )
    kinds = [KINDS[label] for label in labels]
    sources = [gold.samples[i].source or "(none)" for i in ids]
    by_kind = detection_breakdown(labels, preds, kinds, p_fake)
    by_kind = {k: by_kind[k] for k in ("real", "t2i", "edited") if k in by_kind}
    by_source = dict(sorted(detection_breakdown(labels, preds, sources, p_fake).items()))
    return DetectionScore(
        name=name or pred.path.stem,
        pred=str(pred.path),
        gold=gold.name,
        ids=tuple(ids),
        metrics=metrics,
        ci=ci,
        by_kind=by_kind,
        by_source=by_source,
        problems=tuple(problems),
        missing=missing,
        run_errors=pred.run_errors,
        missing_as_unparsable=missing_as_unparsable,
    )


# -- tables ---------------------------------------------------------------------------------------


def _with_ci(value: float | None, ci: BootstrapCI | None, fmt=pct) -> str:
    if value is None:
        return MISSING
    if ci is None or ci.n_used == 0:
        return fmt(value)
    return f"{fmt(value)} [{fmt(ci.low)}, {fmt(ci.high)}]"


def score_markdown(score: DetectionScore) -> str:
    """The per-file report: overall with 95% CIs, per kind, per source; probability figures."""
    m, ci = score.metrics, score.ci
    head = ["subset", "n", "Real F1", "Fake F1", "Overall Acc.", "Macro F1", "Unparsable"]
    rows = [[
        "all", m.n, _with_ci(m.real_f1, ci.get("real_f1")), _with_ci(m.fake_f1, ci.get("fake_f1")),
        _with_ci(m.accuracy, ci.get("accuracy")), _with_ci(m.macro_f1, ci.get("macro_f1")),
        f"{m.n_unparsable} ({pct(m.unparsable_rate)}%)",
    ]]
    for prefix, group in (("kind", score.by_kind), ("source", score.by_source)):
        for key, g in group.items():
            # Within one gold class the other class's F1 is 0 or undefined: accuracy says it all.
            both = g.n_real > 0 and g.n_fake > 0
            f1 = [pct(g.real_f1), pct(g.fake_f1), pct(g.macro_f1)] if both else ["", "", ""]
            rows.append([f"{prefix}: {key}", g.n, f1[0], f1[1], pct(g.accuracy), f1[2], str(g.n_unparsable)])
    parts = [
        f"Detection: {score.name} ({score.pred}) vs {score.gold}. F1 and accuracy in %, "
        f"95% bootstrap CI ({_n_resamples(ci)} resamples) in brackets; unparsable answers count as misses "
        f"in both F1s and as wrong in accuracy (policy {UNPARSABLE_AS_MISS}); "
        "per kind and source F1 only where both classes occur.",
        "",
        markdown_table(head, rows),
        "",
        f"Unparsable policies ({m.n_unparsable} unparsable of {m.n}): {UNPARSABLE_AS_MISS} (headline) counts "
        f"an unparsable answer as a miss for its true class; {PARSED_ONLY} computes the F1s over the "
        f"{m.n - m.n_unparsable} parsed answers only. Accuracy is over all items under both.",
        "",
        markdown_table(["policy", "Real F1", "Fake F1", "Overall Acc.", "Macro F1", "Unparsable"],
                       [[policy + (" (headline)" if policy == UNPARSABLE_AS_MISS else ""),
                         *(_with_ci(getattr(score.under(policy), k), score.ci_under(policy).get(k))
                           for k in ("real_f1", "fake_f1", "accuracy", "macro_f1")),
                         m.n_unparsable] for policy in POLICIES]),
    ]
    (rr, rf, rn), (fr, ff, fn) = m.confusion
    parts += ["", markdown_table(["gold \\ predicted", "real", "fake", "unparsable"],
                                 [["real", rr, rf, rn], ["fake (t2i + edited)", fr, ff, fn]])]
    if m.probability is not None:
        p = m.probability
        parts += ["", f"p_fake on {p.n} rows ({p.n_missing} without one):", "",
                  markdown_table(["ROC-AUC", "AP", "EER", "Brier", "ECE (15 bins)"],
                                 [[_with_ci(getattr(p, k), ci.get(k), num) for k in PROB_FIGURES]])]
    notes = []
    if score.missing:
        how = "scored as unparsable" if score.missing_as_unparsable else "not scored (--missing-as-unparsable scores them as misses)"
        notes.append(f"{len(score.missing)} gold ids have no usable prediction: {how}.")
    if score.problems:
        notes.append(f"{len(score.problems)} problem rows skipped (listed on stderr).")
    if notes:
        parts += [""] + notes
    return "\n".join(parts)


def _n_resamples(ci: Mapping[str, BootstrapCI]) -> int:
    return next(iter(ci.values())).n_resamples if ci else 0


COMPARE_COLUMNS = ("detector", "n", "real_f1", "fake_f1", "accuracy", "macro_f1", "unparsable",
                   "acc_real", "acc_t2i", "acc_edited", "roc_auc",
                   "parsed_only_real_f1", "parsed_only_fake_f1", "parsed_only_macro_f1")


def compare_rows(scores: Sequence[DetectionScore]) -> list[dict[str, Any]]:
    """One row per detector (figures as fractions, None where undefined). The F1s are those of
    the headline policy (unparsable-as-miss); `parsed_only_*` are those of parsed-only."""
    out = []
    for s in scores:
        m = s.metrics
        parsed = s.under(PARSED_ONLY)
        out.append({
            "detector": s.name, "n": m.n, "real_f1": m.real_f1, "fake_f1": m.fake_f1,
            "accuracy": m.accuracy, "macro_f1": m.macro_f1, "unparsable": m.n_unparsable,
            **{f"acc_{k}": (s.by_kind[k].accuracy if k in s.by_kind else None) for k in ("real", "t2i", "edited")},
            "roc_auc": m.probability.roc_auc if m.probability else None,
            **{f"parsed_only_{k}": getattr(parsed, k) for k in ("real_f1", "fake_f1", "macro_f1")},
        })
    return out


def compare_markdown(scores: Sequence[DetectionScore]) -> str:
    """The paper's DFJ-Detect layout (Model | Real F1 | Fake F1 | Overall Acc., in %), extended
    with macro F1, unparsable answers, accuracy per kind, ROC-AUC and the F1s under parsed-only."""
    head = ["Model", "n", "Real F1", "Fake F1", "Overall Acc.", "Macro F1", "Unparsable",
            "Acc. real", "Acc. t2i", "Acc. edited", "ROC-AUC", "Real F1 (parsed-only)", "Fake F1 (parsed-only)"]
    rows = [[r["detector"], r["n"], pct(r["real_f1"]), pct(r["fake_f1"]), pct(r["accuracy"]), pct(r["macro_f1"]),
             r["unparsable"], pct(r["acc_real"]), pct(r["acc_t2i"]), pct(r["acc_edited"]), num(r["roc_auc"]),
             pct(r["parsed_only_real_f1"]), pct(r["parsed_only_fake_f1"])]
            for r in compare_rows(scores)]
    return "\n".join([
        markdown_table(head, rows), "",
        f"F1 in % under {UNPARSABLE_AS_MISS} (an unparsable answer is a miss for its true class; the headline) "
        f"and, in the last two columns, under {PARSED_ONLY} (F1 over parsed answers only); accuracy over all items.",
    ])


def compare_csv(scores: Sequence[DetectionScore]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=COMPARE_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for row in compare_rows(scores):
        writer.writerow({k: "" if v is None else v for k, v in row.items()})
    return buf.getvalue()
