"""What a dataset holds: rows, images, and counts per label, source, score, preference and artifact
category. `dfj data stats` prints these; its `--json` output is `DatasetStats.to_dict()`."""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass
from typing import Any

from .reader import Dataset

SCORES = range(1, 6)


@dataclass(frozen=True)
class DatasetStats:
    data: str  # the file read
    rows: int  # usable rows
    errors: int  # rows that could not be read (each is one of the dataset's RowErrors)
    images: int  # distinct image paths
    label: dict[str, int]
    source: dict[str, int]  # most common first; "(none)" counts rows without a source
    score: dict[str, int]  # "1".."5" -> rows, every level listed; empty when no row has a score
    pointwise_rows: int  # rows with a `response`
    pairwise_rows: int  # rows with both `response_a` and `response_b`
    preferred: dict[str, int]
    artifact_category: dict[str, int]  # annotated artifacts per category, most common first

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def dataset_stats(dataset: Dataset) -> DatasetStats:
    samples = dataset.samples
    return DatasetStats(
        data=str(dataset.path),
        rows=len(samples),
        errors=len(dataset.errors),
        images=len({s.image for s in samples}),
        label=dict(Counter(s.label for s in samples)),
        source=dict(Counter(s.source or "(none)" for s in samples).most_common()),
        score={str(k): sum(s.score == k for s in samples) for k in SCORES} if any(s.score for s in samples) else {},
        pointwise_rows=sum(s.response is not None for s in samples),
        pairwise_rows=sum(s.response_a is not None and s.response_b is not None for s in samples),
        preferred=dict(Counter(s.preferred for s in samples if s.preferred)),
        artifact_category=dict(Counter(a.category for s in samples for a in s.artifacts).most_common()),
    )
