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
