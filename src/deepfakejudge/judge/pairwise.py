"""Pairwise judging: which of two explanations is better, optionally in both orders."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Iterator, Sequence

from ..backends.base import BackendError, ChatRequest
from ..data.images import LoadedImage
from ..parsing import find_choice
from ..records import CHOICES, PairwiseOrder, PairwiseVerdict, RowError, Sample
from .base import Job, Task
from .common import Prepared, call_isolated, distribution_at, generate_answers, model_error, normalise

_SWAP = {"A": "B", "B": "A"}


def combine(sample_id: str, orders: Sequence[PairwiseOrder]) -> PairwiseVerdict:
    """Merge one or two passes into a verdict in the caller's A/B positions."""
    first = orders[0]
    if len(orders) == 1:
        return PairwiseVerdict(sample_id, first.choice, first.p_a, None, tuple(orders))
    second = orders[1]
    # In the swapped pass "A" is the caller's B: map its answer back.
    c1 = first.choice
    c2 = _SWAP[second.choice] if second.choice else None
    agree = c1 is not None and c1 == c2
    if first.p_a is not None and second.p_a is not None:
        p_a = (first.p_a + (1.0 - second.p_a)) / 2.0
        choice = "A" if p_a > 0.5 else "B" if p_a < 0.5 else None
    else:
        p_a = None
        choice = c1 if agree else None
    return PairwiseVerdict(sample_id, choice, p_a, agree, tuple(orders))


@dataclass
class PairwiseJudge(Task):
    """Pick the better of two explanations (`response_a`, `response_b`) with a VLM judge.

    With `both_orders` (the default) every pair is judged as (A, B) and as (B, A) in one batch;
    the verdict's `p_a` is the mean of the two passes, which cancels the judge's position bias.
    Score-only with an answer-only format is exact (protocol "score-only-exact", judge/protocol.py).
    """

    kind = "pairwise"
    answer = "choice"

    def request(self, sample: Sample, image: LoadedImage, swapped: bool) -> ChatRequest:
        if sample.prompt is not None:  # an official ms-swift row: its own text, as written
            text = sample.prompt_swapped if swapped else sample.prompt
        else:
            a, b = (sample.response_b, sample.response_a) if swapped else (sample.response_a, sample.response_b)
            text = self.template.fill(ground_truth_label=sample.label, response_a=a or "", response_b=b or "")
        return self.chat(text, image)

    def compare(
        self, samples: Iterable[Sample], both_orders: bool = True, batch_size: int = 8
    ) -> list[PairwiseVerdict | RowError]:
        """Judge every pair; one entry per sample, in order."""
        return [r for batch in self.iter_batches(samples, both_orders, batch_size) for r in batch]

    def iter_batches(
        self, samples: Iterable[Sample], both_orders: bool = True, batch_size: int = 8
    ) -> Iterator[list[PairwiseVerdict | RowError]]:
        return self.batches(samples, batch_size, self.job(both_orders))

    def job(self, both_orders: bool = True) -> Job[PairwiseVerdict | RowError]:
        """What judging prepared pairs takes (see `Job`); batches are ordered by the first order's prompt."""
        return Job(self.required(both_orders), lambda items: self._judge(items, both_orders),
                   lambda p: self.request(p.sample, p.image, False))

    @staticmethod
    def required(both_orders: bool) -> tuple[str, ...]:
        """The fields a pair needs (see `common.missing_field`): a row with its own prompt needs its
        swapped text too when both orders are judged."""
        return ("response_a", "response_b", "prompt") + (("prompt_swapped",) if both_orders else ())

    def judge_prepared(self, items: Sequence[Prepared], both_orders: bool = True) -> list[PairwiseVerdict | RowError]:
        """Judge pairs whose image is already decoded (`dfj serve`): one entry per item."""
        return call_isolated(items, self.job(both_orders).call)

    def _judge(self, items: Sequence[Prepared], both_orders: bool) -> list[PairwiseVerdict | RowError]:
        passes = (False, True) if both_orders else (False,)
        keys = [(item, swapped) for item in items for swapped in passes]
        requests = [self.request(item.sample, item.image, swapped) for item, swapped in keys]
        results = self._run(requests)
        n = len(passes)
        out: list[PairwiseVerdict | RowError] = []
        for i, item in enumerate(items):
            mine = results[i * n : (i + 1) * n]
            failed = next((r for r in mine if isinstance(r, BackendError)), None)
            if failed is not None:  # one order failed: the pair has no verdict
                out.append(model_error(item, failed))
                continue
            orders = [self._order(swapped, r) for swapped, r in zip(passes, mine)]
            out.append(combine(item.sample.id, orders))
        return out

    def _run(
        self, requests: list[ChatRequest]
    ) -> list[tuple[str | None, dict[str, float] | None, str | None] | BackendError]:
        """(choice, distribution over A/B, raw text) per request, or the request's failure."""
        if self.mode == "score-only":
            out: list = []
            for probs in self.backend.choice_probs_each(requests, CHOICES):
                if isinstance(probs, BackendError):
                    out.append(probs)
                    continue
                dist = normalise(probs, CHOICES)
                choice = None if dist is None else max(CHOICES, key=lambda c: dist[0][c])
                out.append((choice, dist[0] if dist else None, None))
            return out
        out = []
        for gen in generate_answers(self.backend, requests, self.generate_config(), find_choice):
            if isinstance(gen, BackendError):
                out.append(gen)
                continue
            match = find_choice(gen.text)
            dist = distribution_at(gen, match.start, match.end, CHOICES) if match else None
            out.append((match.value if match else None, dist[0] if dist else None, gen.text))
        return out

    @staticmethod
    def _order(swapped: bool, result: tuple[str | None, dict[str, float] | None, str | None]) -> PairwiseOrder:
        choice, dist, raw = result
        return PairwiseOrder(swapped=swapped, choice=choice, p_a=dist["A"] if dist else None, raw=raw)
