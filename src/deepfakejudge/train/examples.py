r"""Dataset rows -> supervised examples: the judge prompt (user turn) and the answer to learn.

The prompt is filled from the template exactly as the judges fill it at inference
(`PointwiseJudge.request` / `PairwiseJudge.request` in the given A/B order), and it is rendered
and tokenised by the same `ImageTextProcessor` (see `collate`), so train and inference prompts are
identical by construction; `tests/test_train_examples.py` checks it token by token.

The answer is, in order of preference:
- the row's own `target` (the assistant turn of an official ms-swift row, or a canonical row's
  `target` field): the full judge answer, which must parse to the row's gold score / preference;
- pointwise: `<reasoning>{rationale}</reasoning>\n<score>{score}</score>` from the row's
  `rationale` and gold `score`;
- pairwise: `<answer>{preferred}</answer>`.
A row that lacks what its kind needs is a `RowError` naming the missing field.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..data import InputError
from ..parsing import parse_choice, parse_score
from ..prompts import Template
from ..records import RowError, Sample


@dataclass(frozen=True)
class TrainExample:
    """One supervised example: `prompt` is the user text (the image goes first), `target` the
    assistant text the loss is computed on."""

    id: str
    image: Path
    prompt: str
    target: str
    where: str

    def to_row(self) -> dict[str, Any]:
        # "image_path", not "image": TRL treats a column named image/images as a request to run
        # its own vision collator, which needs torchvision; ours renders with ImageTextProcessor.
        return {"id": self.id, "image_path": str(self.image), "prompt": self.prompt, "target": self.target}

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> TrainExample:
        return cls(id=row["id"], image=Path(row["image_path"]), prompt=row["prompt"], target=row["target"], where="")


def pointwise_target(reasoning: str, score: int) -> str:
    return f"<reasoning>{reasoning}</reasoning>\n<score>{score}</score>"


def pairwise_target(preferred: str) -> str:
    return f"<answer>{preferred}</answer>"


def _required(sample: Sample, name: str, why: str) -> str:
    value = getattr(sample, name)
    if value is None or not str(value).strip():
        raise InputError(name, f"is empty: {why}")
    return value


def prompt_text(sample: Sample, template: Template) -> str:
    """The user text, filled as the judge fills it at inference (A/B in the row's order); an
    official ms-swift row's own prompt as written, as the judge sends it."""
    if sample.prompt is not None:
        return sample.prompt
    if template.kind == "pointwise":
        response = _required(sample, "response", "a pointwise example needs the candidate explanation")
        return template.fill(ground_truth_label=sample.label, candidate_response=response)
    a = _required(sample, "response_a", "a pairwise example needs both responses")
    b = _required(sample, "response_b", "a pairwise example needs both responses")
    return template.fill(ground_truth_label=sample.label, response_a=a, response_b=b)


def target_text(sample: Sample, kind: str) -> str:
    given = sample.extra.get("target")
    if given is not None and not isinstance(given, str):
        raise InputError("target", f"must be a string (the full judge answer), got {type(given).__name__}")
    if kind == "pointwise":
        if given:
            parsed = parse_score(given)
            if parsed is None:
                raise InputError("target", "has no <score>1..5</score> outside <reasoning>: not a pointwise answer")
            if sample.score is not None and parsed != sample.score:
                raise InputError("target", f"says score {parsed} but the row's score is {sample.score}")
            return given
        if sample.score is None:
            raise InputError("score", "is missing: a pointwise example needs the gold score 1..5 (or a `target`)")
        rationale = _required(
            sample, "rationale",
            "a pointwise example needs the reasoning to learn (`rationale`) or the full answer (`target`)",
        )
        return pointwise_target(rationale.strip(), sample.score)
    if given:
        parsed = parse_choice(given)
        if parsed is None:
            raise InputError("target", "has no <answer>A|B</answer>: not a pairwise answer")
        if sample.preferred is not None and parsed != sample.preferred:
            raise InputError("target", f"says {parsed} but the row's preferred is {sample.preferred}")
        return given
    if sample.preferred is None:
        raise InputError("preferred", "is missing: a pairwise example needs the gold preference A or B (or a `target`)")
    return pairwise_target(sample.preferred)


def build_example(sample: Sample, template: Template) -> TrainExample:
    """Raises InputError naming the field that makes the row unusable."""
    return TrainExample(
        id=sample.id,
        image=sample.image,
        prompt=prompt_text(sample, template),
        target=target_text(sample, template.kind),
        where=sample.where,
    )


def build_examples(samples: Iterable[Sample], template: Template) -> tuple[list[TrainExample], list[RowError]]:
    examples: list[TrainExample] = []
    errors: list[RowError] = []
    for sample in samples:
        try:
            examples.append(build_example(sample, template))
        except InputError as exc:
            errors.append(RowError(sample.where, exc.field, exc.message, id=sample.id))
    return examples, errors
