"""The part every model task shares (PointwiseJudge, PairwiseJudge, Detector): the fields, the
mode and template checks, the request with its prefilled answer prefix, the stop at the answer
tag and the batch loop, which runs the task's `Job` (as `--mode compare` does, judge/compare.py)."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Callable, ClassVar, Generic, Iterable, Iterator, Sequence, TypeVar

from ..backends.base import Backend, ChatRequest, GenerationConfig
from ..data.images import MAX_IMAGE_PIXELS, LoadedImage
from ..errors import UsageError
from ..prompts import SCORE_PREFIX, Template, default_template
from ..records import RowError, Sample
from ..tasks import MAX_NEW_TOKENS, Mode, check_mode
from .common import Prepared, judge_batches, prompt_length
from .protocol import protocol

R = TypeVar("R")


@dataclass(frozen=True)
class Job(Generic[R]):
    """One task's work over prepared items, as its batch loop and `--mode compare` both run it:
    the fields an item needs (`common.missing_field`), the call that judges a batch, and the item's
    (first) request, by whose length generate batches are regrouped."""

    required: tuple[str, ...]
    call: Callable[[Sequence[Prepared]], list[R]]
    request: Callable[[Prepared], ChatRequest]

    def length(self, item: Prepared) -> int:
        """The prompt length of `item`'s request (see `judge_batches`)."""
        return prompt_length(self.request(item))


@dataclass
class Task:
    """A model task over one backend. A subclass names its `kind` (the template kind and the key
    of the per-kind defaults) and `answer` (what generation stops after, see `GenerationConfig`).

    mode "generate": the model writes reasoning then its answer, each output stopped at its
    answer tag (`stop_at_answer`); mode "score-only": one forward pass with the answer prefilled up
    to `answer_prefix`. `template` and `generation` default to the kind's own (None here)."""

    kind: ClassVar[str]
    answer: ClassVar[str]

    backend: Backend
    template: Template = None  # type: ignore[assignment]  # the kind's default template
    mode: Mode = "generate"
    generation: GenerationConfig = None  # type: ignore[assignment]  # MAX_NEW_TOKENS of the kind
    answer_prefix: str = None  # type: ignore[assignment]  # SCORE_PREFIX of the kind
    max_image_pixels: int = MAX_IMAGE_PIXELS
    stop_at_answer: bool = True

    def __post_init__(self) -> None:
        check_mode(self.mode)
        if self.template is None:
            self.template = default_template(self.kind)
        if self.generation is None:
            self.generation = GenerationConfig(max_new_tokens=MAX_NEW_TOKENS[self.kind])
        if self.answer_prefix is None:
            self.answer_prefix = SCORE_PREFIX[self.kind]
        if self.template.kind != self.kind:
            raise UsageError(f"{type(self).__name__} needs a {self.kind} template, got a {self.template.kind} one")

    @property
    def protocol(self) -> str:
        """The run's protocol name (see judge/protocol.py): "generate", "score-only-exact" or
        "score-only-no-reasoning"."""
        return protocol(self.kind, self.mode, self.template.text, self.answer_prefix)

    def chat(self, text: str, image: LoadedImage) -> ChatRequest:
        """The request for `text` on `image`, prefilled with the answer prefix in score-only mode."""
        prefix = self.answer_prefix if self.mode == "score-only" else ""
        return ChatRequest(text=text, image=image.image, prefix=prefix, image_key=image.sha256,
                           image_bytes=image.data or None)

    def generate_config(self) -> GenerationConfig:
        """`generation`, stopping each output at its answer tag unless `stop_at_answer` is off."""
        return replace(self.generation, stop_at_answer=self.answer if self.stop_at_answer else None)

    def batches(self, samples: Iterable[Sample], batch_size: int, job: Job[R]) -> Iterator[list[R | RowError]]:
        """`judge_batches` running `job`: in generate mode batches are regrouped by the length of
        each item's request; in score-only mode (one forward pass each) they are not."""
        length = None if self.mode == "score-only" else job.length
        return judge_batches(samples, batch_size, job.required, self.max_image_pixels, job.call, length)
