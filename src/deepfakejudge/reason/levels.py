"""Level tables: each metric's score for the graded explanations of one image, side by side.

`dfj demo`'s verdict. For every image of a ladder (pointwise rows with an intended `score` 1..5,
like `examples/pointwise.jsonl`): the intended level (5 → 1), the reference-grounded check's
score, sentence-level BLEU-3 against the gold rationale and, when given, a judge's score; and per
metric the Spearman correlation with the level (`ladder.rank_agreement`, scipy), per image and as
the mean over images. A metric that cannot be computed is reported missing with the reason.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Sequence

from ..errors import InputError, MissingExtra
from ..parsing import parse_prediction
from ..records import Sample
from ..tables import markdown_table, num
from .ladder import LadderResult, ladders, perfect, rank_agreement, reference_ladder
from .models import SentenceEncoder
from .overlap import bleu3
from .reference import ReferenceCheck
from .text import explanation

METRICS = {"reference_score": "reference", "bleu3": "BLEU-3", "judge": "judge"}


@dataclass(frozen=True)
class LevelRow:
    id: str
    image: str
    label: str
    level: int
    prediction: str | None  # the explanation's own verdict (real/fake), None if unparsable
    reference_score: float
    bleu3: float | None
    judge: float | None

    def to_dict(self, check: ReferenceCheck | None = None) -> dict[str, Any]:
        row = {"id": self.id, "image": self.image, "label": self.label, "level": self.level,
               "prediction": self.prediction, "reference_score": self.reference_score, "bleu3": self.bleu3,
               "judge": self.judge}
        if check is not None:
            row["reference"] = check.brief()
        return row


@dataclass(frozen=True)
class LevelTables:
    rows: tuple[LevelRow, ...]  # grouped by image, levels highest first
    orderings: dict[str, LadderResult]  # metric -> Spearman with the level, per image and mean
    missing: dict[str, str]  # metric -> why it is not there
    checks: dict[str, ReferenceCheck]
    bleu_signature: str | None

    def images(self) -> list[str]:
        return list(dict.fromkeys(r.image for r in self.rows))


def level_tables(samples: Sequence[Sample], encoder: SentenceEncoder,
                 judge: Mapping[str, float | None] | None = None, judge_missing: str = "no judge ran") -> LevelTables:
    """The level tables of `samples`; `judge` maps item id -> the judge's score (None: unparsable)."""
    groups = ladders(samples)
    if not groups:
        raise InputError("level tables: no image has two or more rows with a `response` and an intended `score`")
    reference, checks = reference_ladder(samples, encoder)
    orderings, missing = {"reference_score": reference}, {}
    flat = [s for g in groups.values() for s in g]
    bleu, signature = {}, None
    with_ref = [s for s in flat if s.rationale and s.rationale.strip()]
    try:
        if not with_ref:
            raise MissingExtra("no row has a gold rationale")
        b = bleu3([explanation(s.response) for s in with_ref], [s.rationale or "" for s in with_ref])
        bleu, signature = dict(zip((s.id for s in with_ref), b.sentences)), b.signature
        orderings["bleu3"] = rank_agreement("bleu3", _only(groups, bleu), lambda s: bleu[s.id])
    except MissingExtra as exc:
        missing["bleu3"] = str(exc)
    scores = {k: v for k, v in (judge or {}).items() if v is not None}
    if scores:
        orderings["judge"] = rank_agreement("judge", _only(groups, scores), lambda s: scores[s.id])
    else:
        missing["judge"] = judge_missing if judge is None else "the judge gave no parsable score"
    rows = tuple(
        LevelRow(s.id, s.image.name, s.label, int(s.score or 0), parse_prediction(s.response),
                 checks[s.id].score, bleu.get(s.id), scores.get(s.id))
        for s in flat
    )
    return LevelTables(rows, orderings, missing, checks, signature)


def _only(groups: dict[str, list[Sample]], values: Mapping[str, float]) -> dict[str, list[Sample]]:
    """The groups restricted to items with a value, images with fewer than two of them left out."""
    kept = {image: [s for s in items if s.id in values] for image, items in groups.items()}
    return {image: items for image, items in kept.items() if len(items) > 1}


def ordering_line(tables: LevelTables) -> str:
    """One line: how well each metric orders the levels (mean Spearman over images)."""
    parts = []
    for key, name in METRICS.items():
        result = tables.orderings.get(key)
        if result is None:
            parts.append(f"{name} n/a")
            continue
        n = len(result.per_image)
        tied = sum(v is None for v in result.per_image.values())
        extra = f"; undefined on {tied}: one score throughout" if tied else ""
        parts.append(f"{name} {num(result.mean_rho, 2)} ({perfect(result)}/{n} images in perfect order{extra})")
    return "Spearman with the level, mean over images: " + ", ".join(parts)


def image_tables(tables: LevelTables) -> list[str]:
    """One compact markdown table per image, levels 5 → 1; the judge column only when a judge ran."""
    with_judge = "judge" in tables.orderings
    head = ["level", "reference", "BLEU-3", "verdict"] + (["judge"] if with_judge else [])
    out = []
    for image in tables.images():
        rows = [r for r in tables.rows if r.image == image]
        rho = ", ".join(f"{METRICS[k]} {num(res.per_image.get(image), 2)}" for k, res in tables.orderings.items()
                        if image in res.per_image)
        body = []
        for r in rows:
            line = [r.level, num(r.reference_score, 2), num(r.bleu3, 3), r.prediction or "?"]
            if with_judge:
                line.append(str(r.judge) if isinstance(r.judge, int) else num(r.judge, 2))
            body.append(line)
        out += [f"{image} ({rows[0].label}); Spearman: {rho}", "",
                markdown_table(head, body, align="r" * 3 + "l" + ("r" if with_judge else "")), ""]
    return out
