"""The DFJ judge score of explanations: the mean 1..5 score of a pointwise judge (`--judge M`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from ..judge import PointwiseJudge
from ..records import RowError, Sample


@dataclass(frozen=True)
class JudgeScores:
    mean: float | None  # over parsed scores
    mean_expected: float | None  # over items with a score distribution
    scores: tuple[int | None, ...]  # per item, None when unparsable or failed
    unparsable: int
    errors: tuple[RowError, ...]


def judge_scores(judge: PointwiseJudge, items: Sequence[Sample], batch_size: int = 8) -> JudgeScores:
    """Judge each (gold image, gold label, candidate response) sample; one score per item."""
    verdicts = judge.score(items, batch_size=batch_size)
    scores, expected, errors = [], [], []
    for v in verdicts:
        if isinstance(v, RowError):
            errors.append(v)
            scores.append(None)
            continue
        scores.append(v.score)
        if v.expected_score is not None:
            expected.append(v.expected_score)
    parsed = [s for s in scores if s is not None]
    return JudgeScores(
        mean=sum(parsed) / len(parsed) if parsed else None,
        mean_expected=sum(expected) / len(expected) if expected else None,
        scores=tuple(scores),
        unparsable=len(verdicts) - len(errors) - len(parsed),
        errors=tuple(errors),
    )
