"""Frozen records passed between modules.

A `Sample` is one canonical dataset row; verdicts are what judges return. Everything that crosses
a module boundary is one of these, so a reader never has to guess the shape of a dict.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Mapping

if TYPE_CHECKING:
    from upath import UPath  # the `remote-images` extra: only URL images are UPaths

Label = Literal["real", "fake", "edited"]
LABELS: tuple[str, ...] = ("real", "fake", "edited")
Choice = Literal["A", "B"]
SCORES: tuple[str, ...] = ("1", "2", "3", "4", "5")
CHOICES: tuple[str, ...] = ("A", "B")


@dataclass(frozen=True)
class Box:
    """Axis-aligned box in pixels of the original image, [x0, y0, x1, y1], x0 < x1, y0 < y1."""

    x0: float
    y0: float
    x1: float
    y1: float

    def as_list(self) -> list[float]:
        return [self.x0, self.y0, self.x1, self.y1]


@dataclass(frozen=True)
class Artifact:
    """One annotated artifact: a category from the taxonomy, an optional box and a referring expression."""

    category: str
    bbox: Box | None = None
    expression: str = ""


@dataclass(frozen=True)
class Sample:
    """One canonical dataset row.

    `image` is a local path, resolved against the data file's folder, or a URL (`s3://…`,
    `http(s)://…`, any protocol fsspec reads) kept as a `upath.UPath`, read where the model runs
    (`data/urls.py`; `data.urls.is_url` tells them apart). Fields a task does not need are None;
    `extra` keeps unknown fields so that they pass through untouched. `where` is "file:line"
    for error messages.

    `prompt` is the user text of an official ms-swift row, sent to a judge as written (see
    data/msswift.py); `prompt_swapped` is that text with response A and B exchanged. `label` is
    None only for an ms-swift row whose prompt matched no template, loaded `verbatim`.
    """

    id: str
    image: Path | UPath
    label: Label
    source: str | None = None
    artifacts: tuple[Artifact, ...] = ()
    rationale: str | None = None
    response: str | None = None
    score: int | None = None
    response_a: str | None = None
    response_b: str | None = None
    preferred: Choice | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)
    where: str = ""
    prompt: str | None = None
    prompt_swapped: str | None = None


@dataclass(frozen=True)
class RowError:
    """A row that could not be used, and why. `id` is None when the row has no usable id."""

    where: str
    field: str
    message: str
    id: str | None = None

    def __str__(self) -> str:
        return f"{self.where}: field '{self.field}': {self.message}"


@dataclass(frozen=True)
class PointwiseVerdict:
    """A 1..5 judgement of one candidate explanation.

    `probs` is the judge's distribution over "1".."5" at the score position, renormalised over
    those five tokens; `choice_mass` is how much of the full next-token distribution they held
    (low mass means the model was not really answering with a score). Both are None when the
    backend exposes no log-probs or the output has no score token: never invented.
    """

    id: str
    score: int | None
    reasoning: str | None
    probs: tuple[float, ...] | None
    expected_score: float | None
    choice_mass: float | None
    raw: str | None


@dataclass(frozen=True)
class PairwiseOrder:
    """One pass of a pairwise judge with the two responses in a given order."""

    swapped: bool
    choice: Choice | None  # as the judge wrote it, in the positions it saw
    p_a: float | None  # probability of "A" in the positions it saw
    raw: str | None


@dataclass(frozen=True)
class PairwiseVerdict:
    """Which of two explanations is better, in the caller's A/B positions.

    With both orders, `p_a` is the order-debiased probability that the caller's A is better
    (the mean of A-first and A-second), `choice` follows it (or, without probabilities, the two
    parsed answers when they agree), and `agree` says whether the two passes chose the same
    response. With one order, `agree` is None.
    """

    id: str
    choice: Choice | None
    p_a: float | None
    agree: bool | None
    orders: tuple[PairwiseOrder, ...]
