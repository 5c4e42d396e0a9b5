"""DFJ-Reason: score one detector's explanations against gold records, metric by metric.

A metric whose model cannot be had (bert-score's default model offline, no `--judge`, MiniLM not
installed) is reported as missing with the reason; the others are still computed. Which rows count:
a prediction row whose id is in the gold set and whose explanation is non-empty; other rows are
problems (file:line, field, message), counted and left out. BLEU-3 and BERTScore need the gold
rationale; items without one are left out of those two and counted.

BERTScore is reported rescaled with bert-score's baseline when one exists for the model and layer
(the figure published BERTScores are), the raw F1 beside it, and the model, layer and rescaling in
the table's footnote; without a baseline the headline is the raw F1 and the footnote says why.
BLEU-3 carries sacrebleu's signature.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..data import InputError as DataInputError
from ..data.reader import confine
from ..detect.predictions import Gold, PredictionFile
from ..errors import InputError, MissingExtra
from ..judge import PointwiseJudge
from ..records import RowError, Sample
from .judge_score import judge_scores
from .models import BertScoreSetting, bert_scorer, sentence_encoder
from .overlap import bertscore, bleu3
from .reference import ReferenceCheck, check_many
from .text import explanation


@dataclass(frozen=True)
class ReasonItem:
    id: str
    gold: Sample
    response: str
    prediction: str | None
    explanation: str
    where: str


@dataclass(frozen=True)
class Metric:
    """A figure, or why it is missing."""

    value: float | None
    n: int = 0
    missing: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"value": self.value, "n": self.n, "missing": self.missing}


@dataclass
class ReasonConfig:
    """Which models the metrics use. `judge` is a ready PointwiseJudge (or an engine running one,
    engine/: anything with `score(samples, batch_size)`) or None (then the DFJ score is missing
    for `judge_missing`)."""

    bertscore_model: str | None = None
    bertscore_layers: int | None = None
    bertscore_baseline: str | None = None  # a LAYER,P,R,F file or a hub name bert-score ships one for
    similarity_model: str | None = None
    device: str = "cpu"
    judge: PointwiseJudge | None = None
    judge_missing: str = "no --judge given"
    batch_size: int = 8
    # Folders the judge may read gold images from (`data.reader.allowed_roots`: the gold file's
    # folder and --image-root); None: not confined. Only the judge reads images: the text metrics
    # score every item whatever its image.
    image_roots: tuple[Path, ...] | None = None
    reference: bool = True


@dataclass(frozen=True)
class ReasonReport:
    name: str
    pred: str
    gold: str
    n: int
    bleu3: Metric
    bleu3_sentence: Metric
    bertscore: Metric
    judge: Metric
    reference: Metric
    reference_components: dict[str, float | None]
    checks: tuple[ReferenceCheck, ...]
    items: tuple[dict[str, Any], ...]
    problems: tuple[RowError, ...]
    judge_unparsable: int = 0
    notes: tuple[str, ...] = field(default_factory=tuple)
    bertscore_raw: Metric = Metric(None, 0, "not computed")
    bertscore_setting: BertScoreSetting | None = None
    bleu3_signature: str | None = None
    bleu3_sentence_signature: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name, "pred": self.pred, "gold": self.gold, "n": self.n,
            "bleu3": self.bleu3.to_dict(), "bleu3_sentence": self.bleu3_sentence.to_dict(),
            "bleu3_signature": self.bleu3_signature, "bleu3_sentence_signature": self.bleu3_sentence_signature,
            "bertscore_f1": self.bertscore.to_dict(), "bertscore_f1_raw": self.bertscore_raw.to_dict(),
            "bertscore": None if self.bertscore_setting is None else self.bertscore_setting.to_dict(),
            "dfj_score": self.judge.to_dict(),
            "judge_unparsable": self.judge_unparsable,
            "reference_score": self.reference.to_dict(), "reference_components": self.reference_components,
            "problems": {"count": len(self.problems), "rows": [
                {"where": e.where, "field": e.field, "id": e.id, "message": e.message} for e in self.problems]},
            "notes": list(self.notes),
            "items": list(self.items),
        }


def reason_items(pred: PredictionFile, gold: Gold) -> tuple[list[ReasonItem], list[RowError]]:
    items, problems = [], list(gold.problems) + list(pred.problems)
    for row in pred.rows:
        if row.id not in gold.samples:
            problems.append(RowError(row.where, "id", f"id {row.id!r} is not in the gold set {gold.name}; row skipped", id=row.id))
            continue
        text = explanation(row.response)
        if not text.strip():
            what = "no `response`" if row.response is None else "an empty explanation"
            problems.append(RowError(row.where, "response", f"{what}: nothing to score; row skipped", id=row.id))
            continue
        items.append(ReasonItem(row.id, gold.samples[row.id], row.response or "", row.prediction, text, row.where))
    return items, problems


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


def score_reasoning(pred: PredictionFile, gold: Gold, config: ReasonConfig, name: str | None = None) -> ReasonReport:
    items, problems = reason_items(pred, gold)
    if not items:
        raise InputError(
            f"--pred {pred.path}: no explanation can be scored against {gold.name} "
            f"({len(pred.rows)} usable rows, {len(problems)} problems); check the ids and the `response` field"
        )
    per = [{"id": it.id, "prediction": it.prediction, "gold_label": it.gold.label} for it in items]
    notes = []

    with_ref = [k for k, it in enumerate(items) if it.gold.rationale and it.gold.rationale.strip()]
    if len(with_ref) < len(items):
        notes.append(f"{len(items) - len(with_ref)} items have no gold rationale: left out of BLEU-3 and BERTScore")
    cands = [items[k].explanation for k in with_ref]
    refs = [items[k].gold.rationale or "" for k in with_ref]

    bleu = bleu_s = Metric(None, 0, "no item has a gold rationale")
    bleu_sig = bleu_s_sig = None
    if with_ref:
        try:
            b = bleu3(cands, refs)
            bleu, bleu_s = Metric(b.corpus, len(cands)), Metric(b.sentence_mean, len(cands))
            bleu_sig, bleu_s_sig = b.signature, b.sentence_signature
            for k, v in zip(with_ref, b.sentences):
                per[k]["bleu3"] = v
        except MissingExtra as exc:
            bleu = bleu_s = Metric(None, 0, str(exc))

    bert = bert_raw = Metric(None, 0, "no item has a gold rationale")
    bert_setting = None
    if with_ref:
        try:
            scorer = bert_scorer(config.bertscore_model, config.bertscore_layers, config.device, config.bertscore_baseline)
            scores = bertscore(scorer, cands, refs)
            bert_setting = scores.setting
            bert = Metric(_mean(list(scores.headline)), len(cands))
            bert_raw = Metric(_mean(list(scores.raw)), len(cands))
            for k, head, raw in zip(with_ref, scores.headline, scores.raw):
                per[k]["bertscore_f1"] = head
                per[k]["bertscore_f1_raw"] = raw
        except MissingExtra as exc:
            bert = bert_raw = Metric(None, 0, str(exc))

    judge, judge_unparsable = Metric(None, 0, config.judge_missing), 0
    if config.judge is not None:
        samples, judged = [], []  # judged: the item index of each sample
        for k, it in enumerate(items):
            sample = Sample(id=it.id, image=it.gold.image, label=it.gold.label, response=it.response,
                            artifacts=it.gold.artifacts, where=it.where)
            if config.image_roots is not None:
                try:
                    confine(sample, config.image_roots)
                except DataInputError as exc:  # an image outside: no judge score, a problem row
                    problems.append(RowError(it.gold.where or it.where, exc.field, exc.message, id=it.id))
                    per[k]["dfj_score"] = None
                    continue
            samples.append(sample)
            judged.append(k)
        js = judge_scores(config.judge, samples, config.batch_size)
        problems.extend(js.errors)
        judge_unparsable = js.unparsable
        scored = [s for s in js.scores if s is not None]
        judge = Metric(js.mean, len(scored), None if scored else "the judge gave no parsable score")
        for k, s in zip(judged, js.scores):
            per[k]["dfj_score"] = s

    reference, components, checks = Metric(None, 0, "turned off (--no-reference-check)"), {}, ()
    if config.reference:
        try:
            encoder = sentence_encoder(config.similarity_model, config.device)
            checks = tuple(check_many([(it.gold, it.response, it.prediction, it.id) for it in items], encoder))
            reference = Metric(_mean([c.score for c in checks]), len(checks))
            components = _component_means(checks)
            for k, c in enumerate(checks):
                per[k]["reference"] = c.brief()
        except MissingExtra as exc:
            reference = Metric(None, 0, str(exc))
    return ReasonReport(
        name=name or pred.path.stem, pred=str(pred.path), gold=gold.name, n=len(items), bleu3=bleu,
        bleu3_sentence=bleu_s, bertscore=bert, judge=judge, reference=reference,
        reference_components=components, checks=checks, items=tuple(per), problems=tuple(problems),
        judge_unparsable=judge_unparsable, notes=tuple(notes), bertscore_raw=bert_raw,
        bertscore_setting=bert_setting, bleu3_signature=bleu_sig, bleu3_sentence_signature=bleu_s_sig,
    )


def _component_means(checks: tuple[ReferenceCheck, ...]) -> dict[str, float | None]:
    recalls = [c.evidence_recall for c in checks if c.evidence_recall is not None]
    claims = sum(c.claims for c in checks)
    spatial_checked = sum(c.spatial_checked for c in checks)
    return {
        "label_agreement": _mean([float(c.label_agreement) for c in checks]),
        "evidence_recall": _mean(recalls),
        "claims": claims,
        "unsupported": sum(c.unsupported for c in checks),
        "unsupported_share": sum(c.unsupported for c in checks) / claims if claims else None,
        "hedged_share": _mean([c.hedged / max(1, len(c.sentences)) for c in checks]),
        "spatial_checked": spatial_checked,
        "spatial_consistency": sum(c.spatial_consistent for c in checks) / spatial_checked if spatial_checked else None,
    }


# -- tables ---------------------------------------------------------------------------------------

TABLE_COLUMNS = ("detector", "n", "bleu3", "bleu3_sentence", "bertscore_f1", "bertscore_f1_raw", "dfj_score",
                 "reference_score", "label_agreement", "evidence_recall", "unsupported_share",
                 "spatial_consistency", "bertscore_rescaled")


def table_rows(reports: list[ReasonReport]) -> list[dict[str, Any]]:
    out = []
    for r in reports:
        c = r.reference_components
        out.append({
            "detector": r.name, "n": r.n, "bleu3": r.bleu3.value, "bleu3_sentence": r.bleu3_sentence.value,
            "bertscore_f1": r.bertscore.value, "bertscore_f1_raw": r.bertscore_raw.value,
            "bertscore_rescaled": None if r.bertscore_setting is None else r.bertscore_setting.rescaled,
            "dfj_score": r.judge.value, "reference_score": r.reference.value,
            "label_agreement": c.get("label_agreement"), "evidence_recall": c.get("evidence_recall"),
            "unsupported_share": c.get("unsupported_share"), "spatial_consistency": c.get("spatial_consistency"),
        })
    return out


def markdown(reports: list[ReasonReport]) -> str:
    """The paper's DFJ-Reason layout (Model | BLEU-3 | BERTScore | DFJ Score) plus the reference
    check and its components; a missing metric shows "n/a" and a footnote says why."""
    from ..tables import markdown_table, num, pct

    head = ["Model", "n", "BLEU-3", "BLEU-3 (sent.)", "BERTScore", "BERTScore (raw)", "DFJ Score", "Ref. score",
            "Label agr.", "Evidence recall", "Unsupported", "Spatial"]

    def cell(metric: Metric, digits: int = 2) -> str:
        return "n/a" if metric.value is None else num(metric.value, digits)

    rows = []
    for r, t in zip(reports, table_rows(reports)):
        rows.append([r.name, r.n, cell(r.bleu3, 3), cell(r.bleu3_sentence, 3), cell(r.bertscore),
                     cell(r.bertscore_raw), cell(r.judge),
                     cell(r.reference), pct(t["label_agreement"]), num(t["evidence_recall"], 2),
                     pct(t["unsupported_share"]), pct(t["spatial_consistency"])])
    lines = [markdown_table(head, rows), ""]
    lines.append("BLEU-3 on a 0–1 scale (sacrebleu / 100); BERTScore F1 (rescaled where a baseline exists, "
                 "raw beside it); DFJ Score = mean judge score 1–5; Ref. score = reference-guided check 1–5; "
                 "label agreement, unsupported-claim share and spatial consistency in %.")
    seen = set()
    for line in _provenance(reports):
        lines.append(f"- {line}")
    for r in reports:
        for label, metric in (("BLEU-3", r.bleu3), ("BERTScore", r.bertscore), ("DFJ Score", r.judge),
                              ("Ref. score", r.reference)):
            if metric.missing and (label, metric.missing) not in seen:
                seen.add((label, metric.missing))
                lines.append(f"- {label} n/a: {metric.missing}")
        for note in r.notes:
            lines.append(f"- {r.name}: {note}")
        if r.judge_unparsable:
            lines.append(f"- {r.name}: the judge gave no parsable score for {r.judge_unparsable} items (left out of the mean)")
    return "\n".join(lines)


def _provenance(reports: list[ReasonReport]) -> list[str]:
    """How each figure was computed, once per distinct setting: sacrebleu's signatures and the
    BERTScore model, layer and rescaling."""
    out: list[str] = []
    for r in reports:
        if r.bleu3_signature:
            out.append(f"BLEU-3: sacrebleu {r.bleu3_signature} (sentence level: {r.bleu3_sentence_signature})")
        if r.bertscore_setting is not None:
            out.append(r.bertscore_setting.describe())
    return list(dict.fromkeys(out))


def csv_text(reports: list[ReasonReport]) -> str:
    import csv
    import io

    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=TABLE_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for row in table_rows(reports):
        writer.writerow({k: "" if v is None else v for k, v in row.items()})
    return buf.getvalue()
