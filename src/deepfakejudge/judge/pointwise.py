"""Pointwise judging: one explanation, one 1..5 score with a justification."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Iterable, Iterator, Literal, Sequence

from ..backends.base import Backend, BackendError, ChatRequest, GenerationConfig
from ..data.images import MAX_IMAGE_PIXELS, LoadedImage
from ..errors import UsageError
from ..parsing import find_score, parse_reasoning
from ..prompts import SCORE_PREFIX, Template, default_template
from ..records import SCORES, PointwiseVerdict, RowError, Sample
from .common import (
    Prepared,
    call_isolated,
    distribution_at,
    generate_answers,
    judge_batches,
    model_error,
    normalise,
    prompt_length,
)
from .protocol import protocol

Mode = Literal["generate", "score-only"]
MODES: tuple[str, ...] = ("generate", "score-only")


def check_mode(mode: str) -> None:
    if mode not in MODES:
        raise UsageError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")


def expected_value(probs: Sequence[float]) -> float:
    return sum((k + 1) * p for k, p in enumerate(probs))


@dataclass
class PointwiseJudge:
    """Score candidate explanations 1..5 with a VLM judge.

    mode "generate": greedy generation of `<reasoning>…</reasoning><score>N</score>`; the score
    distribution is read at the generated score token when the backend gives log-probs.
    mode "score-only": one forward pass with the answer prefilled up to the score tag, after an
    empty reasoning; the score is the most likely digit and there is no justification. The judge
    reasons before scoring in training, so this is an approximation (protocol
    "score-only-no-reasoning"; see judge/protocol.py).

    In generate mode each output stops at its score tag (`stop_at_answer`; the text after it is
    never read) and batches are regrouped by prompt length.
    """

    backend: Backend
    template: Template = field(default_factory=lambda: default_template("pointwise"))
    mode: Mode = "generate"
    generation: GenerationConfig = field(default_factory=GenerationConfig)
    score_prefix: str = SCORE_PREFIX["pointwise"]
    max_image_pixels: int = MAX_IMAGE_PIXELS
    stop_at_answer: bool = True

    def __post_init__(self) -> None:
        check_mode(self.mode)
        if self.template.kind != "pointwise":
            raise UsageError(f"PointwiseJudge needs a pointwise template, got a {self.template.kind} one")

    @property
    def protocol(self) -> str:
        return protocol("pointwise", self.mode, self.template.text, self.score_prefix)

    def request(self, sample: Sample, image: LoadedImage) -> ChatRequest:
        text = sample.prompt if sample.prompt is not None else self.template.fill(
            ground_truth_label=sample.label, candidate_response=sample.response or "")
        prefix = self.score_prefix if self.mode == "score-only" else ""
        return ChatRequest(text=text, image=image.image, prefix=prefix, image_key=image.sha256,
                           image_bytes=image.data or None)

    def score(self, samples: Iterable[Sample], batch_size: int = 8) -> list[PointwiseVerdict | RowError]:
        """Judge every sample; the result has one entry per sample, in order."""
        return [r for batch in self.iter_batches(samples, batch_size) for r in batch]

    def iter_batches(
        self, samples: Iterable[Sample], batch_size: int = 8
    ) -> Iterator[list[PointwiseVerdict | RowError]]:
        length = None if self.mode == "score-only" else lambda p: prompt_length(self.request(p.sample, p.image))
        return judge_batches(samples, batch_size, ("response",), self.max_image_pixels, self._judge, length)

    def judge_prepared(self, items: Sequence[Prepared]) -> list[PointwiseVerdict | RowError]:
        """Judge items whose image is already decoded (`dfj serve`): one entry per item."""
        return call_isolated(items, self._judge)

    def _judge(self, items: Sequence[Prepared]) -> list[PointwiseVerdict | RowError]:
        requests = [self.request(item.sample, item.image) for item in items]
        if self.mode == "score-only":
            dists = self.backend.choice_probs_each(requests, SCORES)
            return [
                model_error(item, d) if isinstance(d, BackendError) else self._from_probs(item.sample.id, d)
                for item, d in zip(items, dists)
            ]
        config = replace(self.generation, stop_at_answer="score" if self.stop_at_answer else None)
        generations = generate_answers(self.backend, requests, config, find_score)
        out: list[PointwiseVerdict | RowError] = []
        for item, gen in zip(items, generations):
            if isinstance(gen, BackendError):
                out.append(model_error(item, gen))
                continue
            match = find_score(gen.text)
            dist = distribution_at(gen, match.start, match.end, SCORES) if match else None
            probs = tuple(dist[0][c] for c in SCORES) if dist else None
            out.append(
                PointwiseVerdict(
                    id=item.sample.id,
                    score=int(match.value) if match else None,
                    reasoning=parse_reasoning(gen.text),
                    probs=probs,
                    expected_score=expected_value(probs) if probs else None,
                    choice_mass=dist[1] if dist else None,
                    raw=gen.text,
                )
            )
        return out

    @staticmethod
    def _from_probs(sample_id: str, raw_probs: dict[str, float]) -> PointwiseVerdict:
        dist = normalise(raw_probs, SCORES)
        if dist is None:
            return PointwiseVerdict(sample_id, None, None, None, None, 0.0, None)
        probs = tuple(dist[0][c] for c in SCORES)
        best = max(range(5), key=lambda k: probs[k])
        return PointwiseVerdict(
            id=sample_id,
            score=best + 1,
            reasoning=None,
            probs=probs,
            expected_score=expected_value(probs),
            choice_mass=dist[1],
            raw=None,
        )
