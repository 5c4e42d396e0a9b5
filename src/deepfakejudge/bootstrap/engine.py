"""The loop that drives every unit's state machine: one step = the next call of many units.

Each step collects the next action of open units, in data order, up to `batch_size` calls; builds
their requests; sends them grouped by backend and sampling settings (one `generate_each` /
`choice_probs_each` per group, so an HTTP backend runs them concurrently within its own bound on
requests in flight, and the generator's and the evaluator's groups run side by side when they are
different backends); turns each answer into a journal event; writes the step's events (fsync)
and only then folds them into the state. A kill loses at most the step in flight.

A failed request (`BackendError`) becomes a `fail` event for its unit only; `BackendUnavailable`
(a server that is down) stops the run after the step's finished calls are journaled.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from typing import Any, Literal

from ..backends.base import (
    Backend,
    BackendError,
    BackendUnavailable,
    ChatRequest,
    Generation,
    GenerationConfig,
)
from ..data import InputError, LoadedImage, open_image
from ..data.images import MAX_IMAGE_PIXELS
from ..errors import UsageError
from ..judge.common import distribution_at, normalise
from ..parsing import find_score, parse_reasoning
from ..records import SCORES, RowError, Sample
from .journal import Journal
from .prompts import SCORE_ONLY_PREFIX, RolePrompts, parse_explanation, strip_tags
from .state import GENERATOR_ROLES, Action, Settings, Unit

EvaluatorMode = Literal["generate", "score-only"]
TRUNCATED = "cut off at the token limit"


@dataclass(frozen=True)
class CallSettings:
    """Sampling for each side. The generator samples (diversity; seeded), the evaluator is greedy.
    `generator.top_logprobs` 1 only serves to count generated tokens where the engine returns them."""

    generator: GenerationConfig = field(
        default_factory=lambda: GenerationConfig(max_new_tokens=384, temperature=0.7, top_logprobs=1)
    )
    evaluator: GenerationConfig = field(default_factory=lambda: GenerationConfig(max_new_tokens=256))
    evaluator_mode: EvaluatorMode = "generate"
    batch_size: int = 64

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise UsageError(f"--batch-size must be >= 1, got {self.batch_size}")
        if self.evaluator_mode not in ("generate", "score-only"):
            raise UsageError(f"--evaluator-mode must be generate or score-only, got {self.evaluator_mode!r}")

    def for_generator(self, action: Action) -> GenerationConfig:
        """Base settings; a repeated prompt (after malformed output) gets its own seed, and is
        sampled even when the base is greedy (greedy would repeat itself)."""
        base = self.generator
        if action.retry == 0:
            return base
        temperature = base.temperature if base.temperature > 0 else base.reask_temperature
        return replace(base, temperature=temperature, seed=base.seed + action.retry)


@dataclass(frozen=True)
class Rating:
    score: int | None
    feedback: str | None
    raw: str | None
    expected: float | None
    calls: int
    tokens: int | None
    prompt_tokens: int | None = None


@dataclass
class RunCounters:
    calls: Counter = field(default_factory=Counter)  # role -> model calls made in this run
    tokens: Counter = field(default_factory=Counter)  # role -> generated tokens (where counted)
    prompt_tokens: Counter = field(default_factory=Counter)  # role -> prompt tokens (where counted)
    steps: int = 0
    seconds: float = 0.0
    cached: int = 0  # of those calls, answered by the request cache (never sent to the model)


def _tokens(g: Generation) -> int | None:
    """Generated tokens: the engine's count, else one per returned log-prob step, else unknown."""
    if g.completion_tokens is not None:
        return g.completion_tokens
    return len(g.steps) if g.steps else None


def _add(a: int | None, b: int | None) -> int | None:
    # A sum over several calls is known only if every call's count is: a partial sum would
    # pass for a whole one.
    return None if a is None or b is None else a + b


def rate_generation(g: Generation, calls: int = 1) -> Rating:
    match = find_score(g.text)
    reasoning = parse_reasoning(g.text)
    dist = distribution_at(g, match.start, match.end, SCORES) if match else None
    expected = sum((k + 1) * dist[0][c] for k, c in enumerate(SCORES)) if dist else None
    return Rating(
        score=int(match.value) if match else None,
        feedback=strip_tags(reasoning) if reasoning else None,
        raw=None if match else g.text,  # kept only when unparsable: the journal stays small
        expected=None if expected is None else round(expected, 4),
        calls=calls,
        tokens=_tokens(g),
        prompt_tokens=g.prompt_tokens,
    )


def rate_probs(probs: dict[str, float]) -> Rating:
    dist = normalise(probs, SCORES)
    if dist is None:
        return Rating(None, None, "no probability mass on 1..5", None, 1, None)
    p = [dist[0][c] for c in SCORES]
    best = max(range(5), key=lambda k: p[k])
    return Rating(best + 1, None, None, round(sum((k + 1) * v for k, v in enumerate(p)), 4), 1, None)


def evaluate(backend: Backend, requests: Sequence[ChatRequest], mode: EvaluatorMode,
             config: GenerationConfig) -> list[Rating | BackendError]:
    """Rate each request; in generate mode an output without a score is asked again (sampled at
    `config.reask_temperature`, seed `config.seed + k`) up to `config.reasks` times."""
    if mode == "score-only":
        return [d if isinstance(d, BackendError) else rate_probs(d) for d in backend.choice_probs_each(requests, SCORES)]
    out: list[Rating | BackendError] = [
        g if isinstance(g, BackendError) else rate_generation(g) for g in backend.generate_each(requests, config)
    ]
    for attempt in range(1, config.reasks + 1):
        todo = [i for i, r in enumerate(out) if isinstance(r, Rating) and r.score is None]
        if not todo:
            break
        again = replace(config, temperature=config.reask_temperature, seed=config.seed + attempt, reasks=0)
        for i, g in zip(todo, backend.generate_each([requests[i] for i in todo], again), strict=True):
            prev = out[i]
            assert isinstance(prev, Rating)
            ok = isinstance(g, Generation)
            tokens = _add(prev.tokens, _tokens(g) if ok else None)
            prompt_tokens = _add(prev.prompt_tokens, g.prompt_tokens if ok else None)
            rating = rate_generation(g) if ok else prev
            keep = rating if rating.score is not None else prev
            out[i] = replace(keep, calls=prev.calls + 1, tokens=tokens, prompt_tokens=prompt_tokens)
    return out


class Engine:
    def __init__(
        self,
        samples: dict[str, Sample],
        units: list[Unit],
        prompts: RolePrompts,
        settings: Settings,
        calls: CallSettings,
        generator: Backend,
        evaluator: Backend,
        journal: Journal,
        max_image_pixels: int = MAX_IMAGE_PIXELS,
        on_step: Callable[[list[Unit]], None] | None = None,
    ) -> None:
        self.samples = samples
        self.units = {u.key: u for u in units}
        self.order = units
        self.prompts = prompts
        self.settings = settings
        self.calls = calls
        self.generator = generator
        self.evaluator = evaluator
        self.journal = journal
        self.max_image_pixels = max_image_pixels
        self.on_step = on_step
        self.by_image: dict[str, list[Unit]] = {}
        for u in units:
            self.by_image.setdefault(u.image_id, []).append(u)
        self.images: dict[str, LoadedImage] = {}
        self.image_errors: dict[str, RowError] = {}
        self.counters = RunCounters()

    # -- images ----------------------------------------------------------------------------------

    def _image(self, image_id: str) -> LoadedImage | None:
        if image_id in self.image_errors:
            return None
        if image_id not in self.images:
            sample = self.samples[image_id]
            try:
                self.images[image_id] = open_image(sample, self.max_image_pixels)
            except InputError as exc:
                self.image_errors[image_id] = RowError(sample.where, exc.field, exc.message, id=sample.id)
                return None
        return self.images[image_id]

    def _release_finished_images(self) -> None:
        for image_id in list(self.images):
            if all(u.finished(self.settings) for u in self.by_image[image_id]):
                del self.images[image_id]

    # -- the loop --------------------------------------------------------------------------------

    def run(self) -> RunCounters:
        started = time.perf_counter()
        try:
            while self.step():
                pass
        finally:
            self.counters.seconds += time.perf_counter() - started
        return self.counters

    def pending(self) -> list[Action]:
        actions: list[Action] = []
        for unit in self.order:
            if unit.finished(self.settings) or unit.image_id in self.image_errors:
                continue
            todo = unit.next_actions(self.settings)
            if todo and self._image(unit.image_id) is None:
                continue
            actions.extend(todo)
            if len(actions) >= self.calls.batch_size:
                break
        return actions

    def step(self) -> bool:
        actions = self.pending()
        if not actions:
            return False
        requests = [self.request(a) for a in actions]
        events, down = self.execute(actions, requests)
        self.journal.append(events)
        touched = []
        for event in events:
            unit = self.units[event["u"]]
            unit.apply(event)
            touched.append(unit)
            self.counters.calls[event["role"]] += event.get("calls", 1)
            self.counters.tokens[event["role"]] += event.get("tokens") or 0
            self.counters.prompt_tokens[event["role"]] += event.get("prompt_tokens") or 0
        self.counters.steps += 1
        self._release_finished_images()
        if self.on_step is not None:
            self.on_step(touched)
        if down is not None:
            raise down
        return True

    # -- requests --------------------------------------------------------------------------------

    def request(self, action: Action) -> ChatRequest:
        unit = self.units[action.unit]
        sample = self.samples[unit.image_id]
        image = self._image(unit.image_id)
        assert image is not None  # pending() skips units whose image cannot be opened
        size, level, p = image.size, unit.level, self.prompts
        if action.role == "generate":
            text = p.generate_text(sample, level, size)
        elif action.role == "refine":
            base = unit.refine_base()
            text = p.refine_text(sample, level, size, parse_reasoning(base.response) or "", base.score, base.feedback)
        elif action.role == "paraphrase":
            accepted = unit.accepted_try(self.settings)
            assert accepted is not None and accepted.response is not None
            text = p.paraphrase_text(sample, level, parse_reasoning(accepted.response) or "", action.slot)
            # A rewording needs no pixels: the text says where everything is.
            return ChatRequest(text=text)
        else:
            tried = unit.rounds[action.round] if action.role == "evaluate" else unit.slots[action.slot].tries[action.attempt]
            assert tried.response is not None
            text = p.evaluate_text(sample, tried.response, size)
            prefix = SCORE_ONLY_PREFIX if self.calls.evaluator_mode == "score-only" else ""
            return ChatRequest(text=text, image=image.image, prefix=prefix, image_key=image.sha256,
                               image_bytes=image.data or None)
        return ChatRequest(text=text, image=image.image, image_key=image.sha256,
                           image_bytes=image.data or None)

    # -- calls -----------------------------------------------------------------------------------

    def execute(self, actions: list[Action], requests: list[ChatRequest]) -> tuple[list[dict[str, Any]], BackendUnavailable | None]:
        """Run the step's calls; events in action order. Groups for different backends run in
        parallel threads; a backend's own groups run one after another."""
        groups: dict[tuple[str, GenerationConfig], list[int]] = {}
        for i, a in enumerate(actions):
            if a.role in GENERATOR_ROLES:
                key = ("generator", self.calls.for_generator(a))
            else:
                key = ("evaluator", self.calls.evaluator)
            groups.setdefault(key, []).append(i)
        by_backend: dict[int, list[tuple[str, GenerationConfig, list[int]]]] = {}
        for (side, config), idx in groups.items():
            backend = self.generator if side == "generator" else self.evaluator
            by_backend.setdefault(id(backend), []).append((side, config, idx))
        results: dict[int, Any] = {}
        down: list[BackendUnavailable] = []

        def run_groups(todo: list[tuple[str, GenerationConfig, list[int]]]) -> None:
            for side, config, idx in todo:
                batch = [requests[i] for i in idx]
                try:
                    if side == "generator":
                        out = self.generator.generate_each(batch, config)
                    else:
                        out = evaluate(self.evaluator, batch, self.calls.evaluator_mode, config)
                except BackendUnavailable as exc:
                    down.append(exc)
                    return
                results.update(zip(idx, out, strict=True))

        lanes = list(by_backend.values())
        if len(lanes) == 1:
            run_groups(lanes[0])
        else:
            with ThreadPoolExecutor(max_workers=len(lanes), thread_name_prefix="dfj-bootstrap") as pool:
                for future in [pool.submit(run_groups, lane) for lane in lanes]:
                    future.result()
        events = [self.event(actions[i], requests[i], results[i]) for i in range(len(actions)) if i in results]
        return events, (down[0] if down else None)

    def event(self, action: Action, request: ChatRequest, result: Any) -> dict[str, Any]:
        unit = self.units[action.unit]
        where: dict[str, Any] = {"u": unit.key, "role": action.role}
        if action.role in ("paraphrase", "recheck"):
            where.update(slot=action.slot, attempt=action.attempt)
        else:
            where.update(round=action.round)
        if isinstance(result, BackendError):
            return {"e": "fail", **where, "error": f"model call failed: {result}", "calls": 1}
        if isinstance(result, Rating):
            return {
                "e": "eval" if action.role == "evaluate" else "recheck", **where,
                "score": result.score, "feedback": result.feedback, "expected_score": result.expected,
                **({"raw": result.raw} if result.raw is not None else {}),
                "calls": result.calls, "tokens": result.tokens, "prompt_tokens": result.prompt_tokens,
                "prompt_chars": len(request.text),
            }
        assert isinstance(result, Generation)
        label = self.samples[unit.image_id].label
        parsed = parse_explanation(result.text, label, unit.level)
        malformed = parsed.malformed
        if action.role == "paraphrase" and parsed.response is not None:
            original = unit.accepted_try(self.settings)
            if original is not None and _same(parsed.response, original.response):
                malformed = "the same text as the original"
        if result.finish_reason == "length" and not self.settings.keep_truncated:
            # Named before any other fault: a cut-off text is often unclosed too, but the limit is the cause.
            malformed = (f"{TRUNCATED} ({self.calls.generator.max_new_tokens} tokens): raise "
                         "--generator-max-new-tokens, or pass --keep-truncated to keep such outputs")
        return {
            "e": "para" if action.role == "paraphrase" else "gen", **where,
            "response": None if malformed else parsed.response,
            "malformed": malformed,
            **({"raw": result.text} if malformed else {}),
            "finish": result.finish_reason,
            "calls": 1, "tokens": _tokens(result), "prompt_tokens": result.prompt_tokens,
            "prompt_chars": len(request.text),
        }


def _same(a: str | None, b: str | None) -> bool:
    return a is not None and b is not None and " ".join(a.split()).lower() == " ".join(b.split()).lower()
