"""Pointwise judging: one explanation, one 1..5 score with a justification."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Iterator, Sequence

from ..backends.base import BackendError, ChatRequest
from ..data.images import LoadedImage
from ..parsing import find_score, parse_reasoning
from ..records import SCORES, PointwiseVerdict, RowError, Sample
from .base import Job, Task
from .common import Prepared, call_isolated, distribution_at, generate_answers, model_error, normalise


def expected_value(probs: Sequence[float]) -> float:
    return sum((k + 1) * p for k, p in enumerate(probs))


@dataclass
class PointwiseJudge(Task):
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

    kind = "pointwise"
    answer = "score"

    @property
    def score_prefix(self) -> str:
        """The prefilled text before the score digit (`answer_prefix`, by its pointwise name)."""
        return self.answer_prefix

    def request(self, sample: Sample, image: LoadedImage) -> ChatRequest:
        text = sample.prompt if sample.prompt is not None else self.template.fill(
            ground_truth_label=sample.label, candidate_response=sample.response or "")
        return self.chat(text, image)

    def score(self, samples: Iterable[Sample], batch_size: int = 8) -> list[PointwiseVerdict | RowError]:
        """Judge every sample; the result has one entry per sample, in order."""
        return [r for batch in self.iter_batches(samples, batch_size) for r in batch]

    def iter_batches(
        self, samples: Iterable[Sample], batch_size: int = 8
    ) -> Iterator[list[PointwiseVerdict | RowError]]:
        return self.batches(samples, batch_size, self.job())

    def job(self) -> Job[PointwiseVerdict | RowError]:
        """What judging prepared items takes (see `Job`)."""
        return Job(("response",), self._judge, lambda p: self.request(p.sample, p.image))

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
        generations = generate_answers(self.backend, requests, self.generate_config(), find_score)
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
