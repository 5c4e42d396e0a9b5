"""Our figures for the paper's tables, computed from results files with the project's own metric
code (`metaeval`, `detect.scoring`, `reason`), laid beside the published ones.

Protocols as published, and what we add beside them:
- Pointwise meta-evaluation: RMSE and Pearson of the parsed 1-5 score against the gold score
  (an unparsable answer is left out of both and counted).
- Pairwise meta-evaluation: accuracy of the judge's answer with the responses in the data's
  order (A, B), unparsable = wrong: the published protocol. Beside it, the accuracy of the
  both-orders verdict (A, B and B, A, debiased) and how often the two orders agree.
- DFJ-Detect: accuracy over all images; the published F1s fit F1 over parsed answers, so the
  paper is compared with the "parsed-only" policy, and our headline ("unparsable-as-miss") F1s
  are shown beside it.
- DFJ-Reason: BLEU-3 and BERTScore of each explanation against the gold rationale, and the DFJ
  score, the mean 1-5 score the 3B pointwise judge gives the explanations. The published
  BERTScores fit bert-score's baseline rescaling, so ours is the rescaled figure where a baseline
  exists for the model (raw beside it, the setting in a note), raw otherwise (and said so).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from ..metaeval import Bootstrap, evaluate_pairwise, evaluate_pointwise
from ..metrics import PARSED_ONLY, UNPARSABLE_AS_MISS, with_policy
from ..prompts import Template
from ..results import read_rows, summary_path
from ..tables import MISSING, markdown_table, num, pct
from .paper import PAPER, TABLES, paper_name, paper_row

# metric -> (column label, formatter)
METRICS: dict[str, tuple[str, Any]] = {
    "rmse": ("RMSE ↓", lambda x: num(x, 2)),
    "pearson": ("Pearson ↑", lambda x: num(x, 2)),
    "accuracy": ("Acc. %", pct),
    "real_f1": ("Real F1 %", pct),
    "fake_f1": ("Fake F1 %", pct),
    "bleu3": ("BLEU-3", lambda x: num(x, 3)),
    "bertscore": ("BERTScore", lambda x: num(x, 2)),
    "dfj_score": ("DFJ score", lambda x: num(x, 2)),
}


@dataclass(frozen=True)
class Row:
    """One model's row: our figures (None: undefined or not computed) beside the paper's."""

    model: str
    paper_model: str | None  # the paper's row this is compared with, if any
    n: int
    ours: dict[str, float | None]
    paper: dict[str, float] | None
    extra: dict[str, Any] = field(default_factory=dict)  # counts, second policies, both orders...


@dataclass(frozen=True)
class Comparison:
    table: str  # key into paper.TABLES
    rows: tuple[Row, ...]
    extra_columns: tuple[tuple[str, str], ...] = ()  # (key in Row.extra, column label)
    notes: tuple[str, ...] = ()


def _value(result: Any, key: str) -> float | None:
    figure = result.figure(key)
    return None if figure is None else figure.value


def _counts(result: Any) -> dict[str, Any]:
    c = result.counts
    return {"joined": c["joined"], "unparsable": len(result.unparsable), "judge_errors": c.get("errors", 0),
            "gold_rows": c.get("gold_rows", 0), "gold_unreadable": c.get("gold_unreadable", 0),
            "without_prediction": c.get("missing_prediction", 0)}


RUN_SETTINGS = ("template", "template_sha256", "template_official", "mode", "protocol", "decoding", "max_new_tokens")


def _run_settings(results: Path) -> dict[str, Any]:
    """How the judge ran (prompt, protocol, decoding), from its run summary: provenance per row."""
    settings = (_summary(results) or {}).get("settings") or {}
    return {k: settings[k] for k in RUN_SETTINGS if k in settings}


def pointwise_row(model: str, paper_model: str | None, table: str, pred: Path, gold: Path,
                  templates: tuple[Template, ...], boot: Bootstrap, checkpoint: str | None = None) -> Row:
    result = evaluate_pointwise(str(pred), str(gold), templates, boot)
    ours = {"rmse": _value(result, "rmse"), "pearson": _value(result, "pearson")}
    extra = {**_counts(result), "rmse_expected": _value(result, "rmse_expected"),
             "pearson_expected": _value(result, "pearson_expected"),
             "ci": {k: _ci(result, k) for k in ("rmse", "pearson")}, "run": _run_settings(pred),
             "judge_model": checkpoint}
    return Row(model, paper_model, result.counts["joined"], ours, _paper(table, paper_model), extra)


def one_order_rows(pred: Path, out: Path) -> Path:
    """A results file holding, per pair, the answer of the first pass (the responses in the data's
    order, A then B): the published one-order protocol, read off a both-orders run."""
    rows = []
    for row in read_rows(pred):
        if "error" in row:
            rows.append(row)
            continue
        orders = row.get("orders") or []
        first = next((o for o in orders if not o.get("swapped")), None)
        rows.append({"id": row["id"], "choice": first.get("choice") if first else row.get("choice"),
                     "p_a": first.get("p_a") if first else row.get("p_a")})
    out.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return out


def pairwise_row(model: str, paper_model: str | None, table: str, pred: Path, gold: Path,
                 templates: tuple[Template, ...], boot: Bootstrap, checkpoint: str | None = None) -> Row:
    first = one_order_rows(pred, pred.with_name(pred.stem + ".one-order.jsonl"))
    one = evaluate_pairwise(str(first), str(gold), templates, boot)
    both = evaluate_pairwise(str(pred), str(gold), templates, boot)
    extra = {**_counts(one), "accuracy_both_orders": _value(both, "accuracy"),
             "consistency": _value(both, "consistency"), "unparsable_both_orders": len(both.unparsable),
             "ci": {"accuracy": _ci(one, "accuracy"), "accuracy_both_orders": _ci(both, "accuracy")},
             "run": _run_settings(pred), "judge_model": checkpoint}
    return Row(model, paper_model, one.counts["joined"], {"accuracy": _value(one, "accuracy")},
               _paper(table, paper_model), extra)


def detect_row(name: str, pred_path: Path, gold_path: Path, boot: Bootstrap, limit: int | None) -> Row:
    from ..detect import read_predictions, score_predictions
    from ..detect.predictions import load_gold

    gold = _first(load_gold(gold_path), limit)
    pred = _only(read_predictions(pred_path), gold)
    score = score_predictions(pred, gold, name=name, n_resamples=boot.resamples, seed=boot.seed)
    headline, parsed = score.metrics, with_policy(score.metrics, PARSED_ONLY)
    ours = {"real_f1": parsed.real_f1, "fake_f1": parsed.fake_f1, "accuracy": headline.accuracy}
    extra = {"policy": PARSED_ONLY, "headline_policy": UNPARSABLE_AS_MISS,
             "headline_real_f1": headline.real_f1, "headline_fake_f1": headline.fake_f1,
             "unparsable": headline.n_unparsable, "without_prediction": len(score.missing),
             "problems": len(score.problems), "pred": str(pred_path)}
    return Row(name, paper_name("dfj-detect", name), headline.n, ours, paper_row("dfj-detect", name), extra)


def reason_row(name: str, pred_path: Path, gold_path: Path, judge_results: Path | None, limit: int | None,
               text_models: dict[str, Any]) -> Row:
    """BLEU-3 and BERTScore from `reason.score_reasoning` (no judge there), and the DFJ score from
    the summary of the pointwise judge's run over the same explanations."""
    from ..detect import read_predictions
    from ..detect.predictions import load_gold
    from ..reason import ReasonConfig, score_reasoning

    gold = _first(load_gold(gold_path), limit)
    pred = _only(read_predictions(pred_path), gold)
    config = ReasonConfig(judge=None, reference=False, judge_missing="computed from the judge run", **text_models)
    report = score_reasoning(pred, gold, config, name)
    summary = _summary(judge_results) if judge_results is not None else None
    dfj = None if summary is None else summary.get("mean_score")
    ours = {"bleu3": report.bleu3.value, "bertscore": report.bertscore.value, "dfj_score": dfj}
    setting = report.bertscore_setting
    extra = {"bleu3_sentence": report.bleu3_sentence.value, "bertscore_missing": report.bertscore.missing,
             "bertscore_raw": report.bertscore_raw.value,
             "bertscore_rescaled": None if setting is None else setting.rescaled,
             "bertscore_setting": None if setting is None else setting.describe(),
             "bleu3_signature": report.bleu3_signature,
             "bleu3_missing": report.bleu3.missing, "judge_scored": None if summary is None else summary.get("judged"),
             "judge_unparsable": None if summary is None else summary.get("unparsable"),
             "judge_errors": None if summary is None else summary.get("errors"),
             "problems": len(report.problems), "notes": list(report.notes), "pred": str(pred_path)}
    return Row(name, paper_name("dfj-reason", name), report.n, ours, paper_row("dfj-reason", name), extra)


def _summary(results: Path) -> dict[str, Any] | None:
    path = summary_path(results)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _first(gold: Any, limit: int | None) -> Any:
    """The gold set cut to its first `limit` items (the items a `--limit` run judged)."""
    if limit is None:
        return gold
    return replace(gold, samples=dict(list(gold.samples.items())[:limit]))


def _only(pred: Any, gold: Any) -> Any:
    """Prediction rows of the gold ids only (with --limit, the others were never meant to count)."""
    return replace(pred, rows=tuple(r for r in pred.rows if r.id in gold.samples))


def _ci(result: Any, key: str) -> list[float] | None:
    f = result.figure(key)
    return None if f is None or f.low is None else [f.low, f.high]


def _paper(table: str, model: str | None) -> dict[str, float] | None:
    return None if model is None else paper_row(table, model)


# -- rendering ------------------------------------------------------------------------------------


def render_markdown(comparisons: list[Comparison], header: list[str]) -> str:
    lines = ["# DeepfakeJudge: our figures beside the paper's", "", f"Paper: {PAPER}.", "", *header]
    for comp in comparisons:
        t = TABLES[comp.table]
        lines += ["", f"## {t.title}", "", f"Data: `{t.dataset}`. The paper's figures: its table \"{t.title}\""
                  + (f" ({t.note})" if t.note else "") + ".", ""]
        head = ["Model", "n"]
        for m in t.metrics:
            label = METRICS[m][0]
            head += [f"{label} paper", f"{label} ours"]
        head += [label for _, label in comp.extra_columns]
        rows = []
        for r in comp.rows:
            cells: list[Any] = [r.model + (f" (paper: {r.paper_model})" if r.paper_model and r.paper_model != r.model
                                           else ""), r.n]
            for m in t.metrics:
                fmt = METRICS[m][1]
                cells += [fmt(r.paper.get(m)) if r.paper and m in r.paper else MISSING, fmt(r.ours.get(m))]
            for key, _ in comp.extra_columns:
                cells.append(_cell(key, r.extra.get(key)))
            rows.append(cells)
        if rows:
            lines.append(markdown_table(head, rows, "lr" + "r" * (len(head) - 2)))
        for note in dict.fromkeys(comp.notes):  # once each, in order
            lines.append(f"- {note}")
    return "\n".join(lines) + "\n"


def _cell(key: str, value: Any) -> str:
    if value is None:
        return MISSING
    if isinstance(value, float):
        if key.startswith(("accuracy", "consistency", "headline_")):
            return pct(value)
        return num(value, 3)
    return str(value)


def to_json(comparisons: list[Comparison], settings: dict[str, Any]) -> dict[str, Any]:
    return {
        "paper": PAPER,
        "settings": settings,
        "tables": [
            {"table": c.table, "title": TABLES[c.table].title, "source": TABLES[c.table].source,
             "dataset": TABLES[c.table].dataset, "metrics": list(TABLES[c.table].metrics),
             "rows": [{"model": r.model, "paper_model": r.paper_model, "n": r.n, "ours": r.ours, "paper": r.paper,
                       **r.extra} for r in c.rows],
             "notes": list(c.notes)}
            for c in comparisons
        ],
    }
