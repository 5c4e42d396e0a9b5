"""One `Comparison` per paper table from the results under a `dfj reproduce` folder: which rows,
which extra columns, which notes. The figures themselves come from `report`'s row functions."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..metaeval import Bootstrap
from ..prompts import Template
from .paper import judge_row, paper_name
from .report import Comparison, detect_row, pairwise_row, pointwise_row, reason_row

MISSING_RESULTS = "no results yet for {} (run without --report-only)"


@dataclass(frozen=True)
class MetaRun:
    """One judge on one meta-evaluation set: where its results are and what it is compared with."""

    size: str
    kind: str
    set: str  # "dfj-meta" | "dfj-meta-human"
    model: str
    results: Path
    gold: Path
    templates: Callable[[], tuple[Template, ...]]  # what the gold rows are read with

    @property
    def table(self) -> str:
        return f"{self.kind}-{self.set}"


def meta_comparisons(runs: Sequence[MetaRun], boot: Bootstrap, limit: int | None) -> list[Comparison]:
    """The pointwise and pairwise tables, in the paper's order, one row per judge size."""
    out = []
    for table in dict.fromkeys(r.table for r in sorted(runs, key=lambda r: (r.kind != "pointwise", r.set))):
        rows, notes = [], []
        for run in (r for r in runs if r.table == table):
            if not run.results.is_file():
                notes.append(MISSING_RESULTS.format(run.results))
                continue
            label = judge_row(run.size)
            row_fn = pointwise_row if run.kind == "pointwise" else pairwise_row
            row = row_fn(label, paper_name(table, label), table, run.results, run.gold, run.templates(), boot, run.model)
            rows.append(row)
            if row.extra.get("gold_unreadable"):
                notes.append(f"{label}: {row.extra['gold_unreadable']} gold rows of {run.gold} could not be read with "
                             f"the judge's template and are left out (list them: dfj data validate {run.gold} "
                             "--template ...)")
        kind = table.split("-", 1)[0]
        extra = ((("unparsable", "unparsable"), ("judge_errors", "errors")) if kind == "pointwise" else
                 (("accuracy_both_orders", "Acc. % both orders"), ("consistency", "order agreement %"),
                  ("unparsable", "unparsable"), ("judge_errors", "errors")))
        if limit is not None:
            notes.append(f"--limit {limit}: the first {limit} items only")
        out.append(Comparison(table, tuple(rows), extra + (("judge_model", "checkpoint"),), tuple(notes)))
    return out


def detect_comparison(preds: Mapping[str, Path], gold: Path | None, boot: Bootstrap, limit: int | None) -> Comparison:
    rows, notes = [], []
    for name, pred in preds.items():
        if not pred.is_file():
            notes.append(MISSING_RESULTS.format(pred))
            continue
        rows.append(detect_row(name, pred, gold, boot, limit))  # type: ignore[arg-type] - set when preds are
    if not preds:
        notes.append("nothing to score: give --detect-pred NAME=FILE or --detector-model M")
    notes.append("ours: F1 over parsed answers (policy parsed-only, which the published figures fit), accuracy over "
                 "all images; our headline F1s (an unparsable answer is a miss) beside them")
    return Comparison("dfj-detect", tuple(rows), (("headline_real_f1", "Real F1 % headline"),
                      ("headline_fake_f1", "Fake F1 % headline"), ("unparsable", "unparsable")), tuple(notes))


def reason_comparison(preds: Mapping[str, Path], gold: Path | None, judged: Mapping[str, Path], judge: str,
                      limit: int | None, text_models: dict[str, Any]) -> Comparison:
    """`judged[name]`: the pointwise judge's results over detector `name`'s explanations."""
    rows, notes = [], []
    for name, pred in preds.items():
        if not pred.is_file():
            notes.append(MISSING_RESULTS.format(pred))
            continue
        results = judged.get(name)
        row = reason_row(name, pred, gold, results if results is not None and results.is_file() else None,  # type: ignore[arg-type]
                         limit, text_models)
        rows.append(row)
        for what, label in (("bleu3_missing", "BLEU-3"), ("bertscore_missing", "BERTScore")):
            if row.extra.get(what):
                notes.append(f"{name}: {label} n/a: {row.extra[what]}")
        if row.extra.get("bertscore_setting"):
            notes.append(row.extra["bertscore_setting"])
        if row.extra.get("bleu3_signature"):
            notes.append(f"BLEU-3: sacrebleu signature {row.extra['bleu3_signature']}")
    if not preds:
        notes.append("nothing to score: give --reason-pred NAME=FILE or --detector-model M")
    notes.append(f"DFJ score: mean parsed score of the pointwise judge {judge}")
    return Comparison("dfj-reason", tuple(rows), (("bertscore_raw", "BERTScore raw"),
                      ("judge_unparsable", "judge unparsable")), tuple(notes))
