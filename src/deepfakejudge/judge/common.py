"""What pointwise and pairwise judging share: preparing items, calling the backend in batches with
per-item failure isolation, and reading a choice distribution out of generated log-probs."""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any, Callable, Iterable, Iterator, Sequence, TypeVar

from ..backends.base import Backend, BackendError, ChatRequest, Generation, GenerationConfig
from ..backends.budget import PromptTooLong, longest_field
from ..data import InputError, LoadedImage
from ..data.images import MAX_IMAGE_PIXELS, open_images
from ..errors import UsageError
from ..records import RowError, Sample
from ..results import MODEL_ERROR_FIELD

T = TypeVar("T")
R = TypeVar("R")


@dataclass(frozen=True)
class Prepared:
    sample: Sample
    image: LoadedImage


_NO_SWAP = ("matches no known template, so it is judged as written and the responses cannot be swapped "
            "for the second order: judge with --one-order (the paper's protocol), or pass the template the "
            "data was built with (--template PATH, or --template official)")


def missing_field(sample: Sample, required: Sequence[str]) -> RowError | None:
    """The error row of a sample lacking a field the task needs, else None. A row with its own
    `prompt` (an official ms-swift row) is sent as written: the prompt stands in for the fields
    it was filled from, and only `prompt*` names in `required` apply to it."""
    for name in required:
        if name.startswith("prompt") != (sample.prompt is not None):
            continue
        value = getattr(sample, name)
        if name == "prompt_swapped" and not value:
            return RowError(sample.where, "messages[user].content", _NO_SWAP, id=sample.id)
        if value is None or not str(value).strip():
            return RowError(sample.where, name, "is empty: nothing to judge", id=sample.id)
    return None


def prepare_all(samples: Sequence[Sample], required: Sequence[str], max_image_pixels: int = MAX_IMAGE_PIXELS) -> list[Prepared | RowError]:
    """Per sample, in order: its `Prepared` (fields checked, image opened), or the `RowError` of
    what is wrong. The images are opened together (`open_images`: distinct URLs in parallel, once
    each)."""
    checked = [missing_field(s, required) for s in samples]
    todo = [s for s, error in zip(samples, checked) if error is None]
    opened = iter(open_images(todo, max_image_pixels))
    out: list[Prepared | RowError] = []
    for sample, entry in zip(samples, checked):
        if entry is None:
            image = next(opened)
            entry = (RowError(sample.where, image.field, image.message, id=sample.id) if isinstance(image, InputError)
                     else Prepared(sample, image))
        out.append(entry)
    return out


def batched(items: Iterable[T], size: int) -> Iterator[list[T]]:
    if size < 1:
        raise ValueError(f"batch_size must be >= 1, got {size}")
    batch: list[T] = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


# Batches taken together and regrouped by prompt length when a task sorts (generate mode).
SORT_POOL_BATCHES = 4


def judge_batches(
    samples: Iterable[Sample],
    batch_size: int,
    required: Sequence[str],
    max_image_pixels: int,
    call: Callable[[Sequence[Prepared]], list[R]],
    length: Callable[[Prepared], int] | None = None,
) -> Iterator[list[R | RowError]]:
    """The loop every task shares: per batch, prepare each sample (a bad one becomes its
    `RowError`), call the model on the rest with failure isolation, and yield one entry per
    sample, in order.

    With `length` (a prompt-length estimate), `SORT_POOL_BATCHES` batches are read at once and
    the model is called on batches of similar length: a left-padded batch costs as much as its
    longest prompt. Rows still come out in input order, one list per pool.
    """
    pool = batch_size * (SORT_POOL_BATCHES if length is not None else 1)
    for chunk in batched(samples, pool):
        prepared = prepare_all(chunk, required, max_image_pixels)
        ready = [i for i, p in enumerate(prepared) if isinstance(p, Prepared)]
        if length is not None:
            ready.sort(key=lambda i: length(prepared[i]))
        out: list[Any] = list(prepared)
        for group in batched(ready, batch_size) if ready else ():
            for i, result in zip(group, call_isolated([prepared[i] for i in group], call)):
                out[i] = result
        yield out


def prompt_length(request: ChatRequest, max_pixels: int = 1280 * 28 * 28) -> int:
    """A prompt's size in rough tokens for sorting: characters / 4 plus visual tokens (one per
    28x28 pixels within the default budget)."""
    visual = 0
    if request.image is not None:
        w, h = request.image.size
        visual = min(w * h, max_pixels) // (28 * 28)
    return len(request.text) // 4 + visual


def call_isolated(
    items: Sequence[Prepared],
    call: Callable[[Sequence[Prepared]], list[R]],
) -> list[R | RowError]:
    """Run `call` on the whole batch; if the backend fails, retry item by item so that one bad
    item (or an out-of-memory batch) costs only its own row."""
    try:
        return list(call(items))
    except BackendError as exc:
        if len(items) == 1:
            return [model_error(items[0], exc)]
    out: list[R | RowError] = []
    for item in items:
        out.extend(call_isolated([item], call))
    return out


def model_error(item: Prepared, exc: BackendError) -> RowError:
    """The error row of an item whose model call failed, or, for a prompt over the budget, the
    input error row naming the field that made it too long (a rerun does not ask it again)."""
    if isinstance(exc, PromptTooLong):
        name, length = longest_field(item.sample)
        return RowError(item.sample.where, name, f"is {length} characters: {exc}", id=item.sample.id)
    return RowError(item.sample.where, MODEL_ERROR_FIELD, f"model call failed: {exc}", id=item.sample.id)


def generate_answers(
    backend: Backend,
    requests: Sequence[ChatRequest],
    config: GenerationConfig,
    find: Callable[[str], Any],
) -> list[Generation | BackendError]:
    """Generate one answer per request (a failed request gives its `BackendError`), re-asking
    those whose text `find` cannot parse up to `config.reasks` times.

    Re-ask k samples at `config.reask_temperature` with seed `config.seed + k` (greedy would
    repeat itself, and a fixed seed keeps reruns and caches deterministic); its output replaces
    the original only if it parses, so a re-ask never turns a greedy answer into another one.
    """
    if config.reasks < 0:
        raise UsageError(f"--reasks must be >= 0, got {config.reasks}")
    out = list(backend.generate_each(requests, config))
    for attempt in range(1, config.reasks + 1):
        todo = [i for i, g in enumerate(out) if isinstance(g, Generation) and find(g.text) is None]
        if not todo:
            break
        again = replace(config, temperature=config.reask_temperature, seed=config.seed + attempt, reasks=0)
        for i, g in zip(todo, backend.generate_each([requests[i] for i in todo], again)):
            if isinstance(g, Generation) and find(g.text) is not None:
                out[i] = g
    return out


def distribution_at(
    generation: Generation, start: int, end: int, choices: Sequence[str]
) -> tuple[dict[str, float], float] | None:
    """The probability of each choice at the generated token that wrote text[start:end].

    Tokenisers may merge the value with neighbouring characters (">A" as one token), so each
    choice is looked up as the same token with the value swapped. Returns the distribution
    renormalised over the choices and the raw mass they held, or None when the engine gave no
    log-probs or the value is split across tokens.
    """
    for step in generation.steps:
        lo, hi = step.offset, step.offset + len(step.token)
        if lo <= start < hi:
            break
    else:
        return None
    if end > hi:
        return None
    head, tail = step.token[: start - lo], step.token[end - lo :]
    logprobs = dict(step.top)
    logprobs.setdefault(step.token, step.logprob)
    probs = {c: math.exp(logprobs[head + c + tail]) if head + c + tail in logprobs else 0.0 for c in choices}
    mass = sum(probs.values())
    if mass <= 0.0:
        return None
    return {c: p / mass for c, p in probs.items()}, mass


def normalise(probs: dict[str, float], choices: Sequence[str]) -> tuple[dict[str, float], float] | None:
    mass = sum(probs[c] for c in choices)
    if not mass > 0.0:
        return None
    return {c: probs[c] / mass for c in choices}, mass
