"""Does a metric rank a ladder of explanations of one image (gold → hallucinated) in order?

The input is pointwise rows (image, label, artifacts, rationale, response, intended `score` 1..5),
like `examples/pointwise.jsonl`: each row is its own gold record. Per image, the Spearman rank
correlation between the intended levels and the metric; the mean over images; and every pair of
levels the metric puts the wrong way round, with the reference check's components, so that a
reader sees where and why it fails. BLEU-3 and BERTScore (against the gold rationale) can be run
on the same ladder for comparison.
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass
from typing import Any, Callable, Sequence

from scipy.stats import spearmanr

from ..parsing import parse_prediction
from ..records import Sample
from ..tables import markdown_table, num
from .models import SentenceEncoder
from .reference import ReferenceCheck, check_many
from .text import explanation


@dataclass(frozen=True)
class Inversion:
    image: str
    higher: str  # id of the item with the higher intended level
    lower: str
    levels: tuple[int, int]
    scores: tuple[float, float]


@dataclass(frozen=True)
class LadderResult:
    metric: str
    per_image: dict[str, float | None]  # Spearman rho; None when the metric is constant there
    mean_rho: float | None
    inversions: tuple[Inversion, ...]

    def to_dict(self) -> dict[str, Any]:
        return {
            "metric": self.metric, "mean_spearman": self.mean_rho, "per_image": self.per_image,
            "inversions": [i.__dict__ for i in self.inversions],
        }


def ladders(samples: Sequence[Sample]) -> dict[str, list[Sample]]:
    """Rows with a response and an intended score, grouped by image (file name), highest first."""
    groups: dict[str, list[Sample]] = defaultdict(list)
    for s in samples:
        if s.response and s.score is not None:
            groups[s.image.name].append(s)
    return {k: sorted(v, key=lambda s: -int(s.score or 0)) for k, v in groups.items() if len(v) > 1}


def rank_agreement(metric: str, groups: dict[str, list[Sample]], value: Callable[[Sample], float]) -> LadderResult:
    per_image: dict[str, float | None] = {}
    inversions = []
    for image, items in groups.items():
        levels = [int(s.score or 0) for s in items]
        values = [value(s) for s in items]
        rho = spearmanr(levels, values).statistic if len(set(values)) > 1 else math.nan
        per_image[image] = None if math.isnan(rho) else float(rho)
        for a in range(len(items)):
            for b in range(a + 1, len(items)):
                if levels[a] > levels[b] and values[a] <= values[b]:
                    inversions.append(Inversion(image, items[a].id, items[b].id, (levels[a], levels[b]),
                                                (values[a], values[b])))
    defined = [r for r in per_image.values() if r is not None]
    return LadderResult(metric, per_image, sum(defined) / len(defined) if defined else None, tuple(inversions))


def reference_ladder(samples: Sequence[Sample], encoder: SentenceEncoder) -> tuple[LadderResult, dict[str, ReferenceCheck]]:
    groups = ladders(samples)
    flat = [s for g in groups.values() for s in g]
    checks = {c.id: c for c in check_many([(s, s.response, parse_prediction(s.response), s.id) for s in flat], encoder)}
    return rank_agreement("reference_score", groups, lambda s: checks[s.id].score), checks


def overlap_ladders(samples: Sequence[Sample], bleu: Callable, bertscore: Callable | None) -> list[LadderResult]:
    """BLEU-3 (sentence level) and, when given, BERTScore F1 of each explanation vs its rationale."""
    groups = ladders(samples)
    flat = [s for g in groups.values() for s in g if s.rationale]
    cands = [explanation(s.response) for s in flat]
    refs = [s.rationale or "" for s in flat]
    out = []
    b = dict(zip((s.id for s in flat), bleu(cands, refs).sentences))
    out.append(rank_agreement("bleu3_sentence", groups, lambda s: b.get(s.id, 0.0)))
    if bertscore is not None:
        f = dict(zip((s.id for s in flat), bertscore(cands, refs)))
        out.append(rank_agreement("bertscore_f1", groups, lambda s: f.get(s.id, 0.0)))
    return out


@dataclass(frozen=True)
class LadderReport:
    """The reference check's ladder (first result) and, when asked, the overlap metrics' on the
    same rows; `missing`: metrics that could not be run, with the reason."""

    data: str  # the data file, as read
    results: tuple[LadderResult, ...]
    checks: dict[str, ReferenceCheck]
    missing: dict[str, str]

    @property
    def images(self) -> int:
        return len(self.results[0].per_image)

    def to_dict(self) -> dict[str, Any]:
        return {"data": self.data, "images": self.images, "results": [r.to_dict() for r in self.results],
                "missing": self.missing, "checks": {k: c.brief() for k, c in self.checks.items()}}

    def markdown(self, data_name: str | None = None) -> str:
        """The summary table (mean rho, images ranked perfectly, inverted pairs per metric), the
        missing metrics, and where the reference check inverts two levels, with its components."""
        lines = [f"Ladder: {self.images} images of {data_name or self.data}; Spearman rho between intended level "
                 "and metric.", ""]
        lines.append(markdown_table(["metric", "mean rho", "images ranked perfectly", "inverted pairs"],
                                    [[r.metric, num(r.mean_rho, 3), f"{perfect(r)}/{len(r.per_image)}",
                                      len(r.inversions)] for r in self.results]))
        lines += [f"- {name} n/a: {why}" for name, why in self.missing.items()]
        reference = self.results[0]
        if reference.inversions:
            lines += ["", "Where the reference check fails (higher level scored at or below a lower one):", ""]
            rows = [[inv.image, f"L{inv.levels[0]} {num(inv.scores[0], 2)} vs L{inv.levels[1]} {num(inv.scores[1], 2)}",
                     components(self.checks[inv.higher]), components(self.checks[inv.lower])]
                    for inv in reference.inversions]
            lines.append(markdown_table(["image", "scores", "higher level: components", "lower level: components"], rows))
        return "\n".join(lines)


def perfect(result: LadderResult) -> int:
    """Images whose ladder the metric ranks exactly in order (rho = 1)."""
    return sum(v is not None and v > 0.999 for v in result.per_image.values())


def components(c: ReferenceCheck) -> str:
    """The reference check's components in one cell."""
    comp = c.components
    return (f"label {comp['label']:.0f}, recall {comp['recall']:.2f}, precision {comp['precision']:.2f} "
            f"({c.unsupported}/{c.claims} unsupported), commitment {comp['commitment']:.2f}, "
            f"spatial {comp['spatial']:.2f}")


def ladder_report(data: str, samples: Sequence[Sample], encoder: SentenceEncoder, *, overlap: bool = False,
                  bleu: Callable | None = None, bertscore: Callable | None = None,
                  missing: dict[str, str] | None = None) -> LadderReport:
    """The reference check's ladder on `samples` and, with `overlap`, BLEU-3 (`bleu`) and
    BERTScore F1 (`bertscore`, None when its model is `missing`) on the same rows."""
    reference, checks = reference_ladder(samples, encoder)
    results = [reference]
    if overlap:
        results += overlap_ladders(samples, bleu, bertscore)
    return LadderReport(data, tuple(results), checks, dict(missing or {}))
