"""Ask a VLM whether each image is real or fake, and why: one prompt, one parser, any backend.

mode "generate": greedy `<reasoning>…</reasoning> <answer>real|fake</answer>`; the prediction is
parsed from the model's own text (`parse_prediction`, "edited" reads as fake) and `p_fake` is read
from the distribution at the generated answer token, over every spelling the parser accepts
(real/Real/REAL vs fake/Fake/FAKE/edited/…), when the backend gives log-probs and the answer is
one token. Otherwise `p_fake` is None: never invented.
Each output stops at its answer tag (the text after it is never read).
mode "score-only": one forward pass with the answer prefilled up to `<answer>` after an empty
reasoning; `p_fake` is the next-token probability of "fake" renormalised over "real"/"fake", the
prediction its argmax, and there is no response text. A detector reasons before answering, so
this is an approximation of generate (protocol "score-only-no-reasoning", judge/protocol.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Iterator, Sequence

from ..backends.base import BackendError, ChatRequest
from ..data.images import LoadedImage
from ..errors import UsageError
from ..judge.base import Job, Task
from ..judge.common import Prepared, distribution_at, generate_answers, model_error, normalise
from ..parsing import find_prediction
from ..records import RowError, Sample

CHOICES: tuple[str, ...] = ("real", "fake")
# Every spelling `parse_prediction` reads, grouped by the verdict it reads as: p_fake at the
# answer token is the mass of the fake spellings among all of them.
SPELLINGS: dict[str, tuple[str, ...]] = {
    "real": ("real", "Real", "REAL"),
    "fake": ("fake", "Fake", "FAKE", "edited", "Edited", "EDITED"),
}
_ALL_SPELLINGS = SPELLINGS["real"] + SPELLINGS["fake"]


@dataclass(frozen=True)
class DetectVerdict:
    """One detector answer. `prediction` is None when the output holds no parsable answer;
    `p_fake` and `choice_mass` (how much of the full next-token distribution the answer
    spellings held) are None when the backend could not give them; `response` is the raw text
    (None in score-only mode)."""

    id: str
    prediction: str | None
    p_fake: float | None
    response: str | None
    choice_mass: float | None = None


def p_fake_at_answer(generation, start: int, end: int) -> tuple[float, float] | None:
    """(p_fake, mass) at the generated token that wrote the answer, or None when unavailable."""
    dist = distribution_at(generation, start, end, _ALL_SPELLINGS)
    if dist is None:
        return None
    probs, mass = dist
    return sum(probs[c] for c in SPELLINGS["fake"]), mass


@dataclass
class Detector(Task):
    """Run a VLM as a real/fake detector over samples (only `image` is used; `label` is not
    shown to the model). Score-only reads p_fake after an empty reasoning (protocol
    "score-only-no-reasoning", judge/protocol.py)."""

    kind = "detect"
    answer = "prediction"

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.mode == "score-only" and not self.backend.capabilities.choice_probs:
            raise UsageError(
                f"--mode score-only: backend '{self.backend.name}' cannot read next-token "
                "probabilities; use --mode generate"
            )

    def request(self, image: LoadedImage) -> ChatRequest:
        return self.chat(self.template.fill(), image)

    def detect(self, samples: Iterable[Sample], batch_size: int = 8) -> list[DetectVerdict | RowError]:
        """One entry per sample, in order."""
        return [r for batch in self.iter_batches(samples, batch_size) for r in batch]

    def iter_batches(
        self, samples: Iterable[Sample], batch_size: int = 8
    ) -> Iterator[list[DetectVerdict | RowError]]:
        return self.batches(samples, batch_size, self.job())

    def job(self) -> Job[DetectVerdict | RowError]:
        """What detecting on prepared items takes (see `Job`): the image alone."""
        return Job((), self._detect, lambda p: self.request(p.image))

    def _detect(self, items: Sequence[Prepared]) -> list[DetectVerdict | RowError]:
        requests = [self.request(item.image) for item in items]
        if self.mode == "score-only":
            return [
                model_error(item, p) if isinstance(p, BackendError) else self._from_probs(item.sample.id, p)
                for item, p in zip(items, self._choice_probs(requests))
            ]
        out: list[DetectVerdict | RowError] = []
        for item, gen in zip(items, generate_answers(self.backend, requests, self.generate_config(), find_prediction)):
            if isinstance(gen, BackendError):
                out.append(model_error(item, gen))
                continue
            match = find_prediction(gen.text)
            read = p_fake_at_answer(gen, match.start, match.end) if match else None
            out.append(
                DetectVerdict(
                    id=item.sample.id,
                    prediction=match.value if match else None,
                    p_fake=read[0] if read else None,
                    response=gen.text,
                    choice_mass=read[1] if read else None,
                )
            )
        return out

    def _choice_probs(self, requests: list[ChatRequest]) -> list[dict[str, float] | BackendError]:
        try:
            return self.backend.choice_probs_each(requests, CHOICES)
        except ValueError as exc:
            # No first-token fallback: if "real" is split as "re"+"al", P("re") also holds every
            # other word starting with "re" ("retouched"), so it is not P("real").
            raise UsageError(
                f"--mode score-only: this model's tokenizer cannot give 'real' and 'fake' one "
                f"next token each after {self.answer_prefix!r}, so p_fake cannot be read from one "
                f"forward pass ({exc}); use --mode generate"
            ) from exc

    @staticmethod
    def _from_probs(sample_id: str, raw: dict[str, float]) -> DetectVerdict:
        dist = normalise(raw, CHOICES)
        if dist is None:
            return DetectVerdict(sample_id, None, None, None, 0.0)
        p_fake = dist[0]["fake"]
        prediction = "fake" if p_fake > 0.5 else "real" if p_fake < 0.5 else None
        return DetectVerdict(sample_id, prediction, p_fake, None, dist[1])


def detect_counts(ok_rows: list[dict]) -> dict:
    """Summary figures of a detection results file (rows without an error)."""
    predictions = [r.get("prediction") for r in ok_rows]
    with_p = [r["p_fake"] for r in ok_rows if r.get("p_fake") is not None]
    return {
        "unparsable": predictions.count(None),
        "predicted": {"real": predictions.count("real"), "fake": predictions.count("fake")},
        "with_p_fake": len(with_p),
        "mean_p_fake": round(sum(with_p) / len(with_p), 4) if with_p else None,
    }
