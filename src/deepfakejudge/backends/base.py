"""How a model is called. One small base class; each engine is one module beside this one.

A backend takes chat requests (one image and one text in a single user turn, the way the
released judges were trained, plus an optional assistant prefix) and either generates text or
reads the next-token distribution over a few choices. Judges never touch an engine directly.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass, field
from typing import Any, Sequence

from PIL import Image

from ..errors import UsageError

# The released judges were trained with this image budget (ms-swift defaults for Qwen2.5-VL).
MIN_PIXELS = 4 * 28 * 28  # 3136
MAX_PIXELS = 1280 * 28 * 28  # 1003520


@dataclass(frozen=True)
class ChatRequest:
    """One user turn: `image` first, then `text`; `prefix` is prefilled assistant text.

    `image_key` identifies the image's content (a hash of its bytes) so that backends may cache
    per-image work; it is optional. `image_bytes` is the file the image was decoded from (its
    SHA-256 is `image_key`), where known: a remote backend may send it as is, or ship it to a
    worker process instead of the decoded pixels.
    """

    text: str
    image: Image.Image | None = None
    prefix: str = ""
    image_key: str | None = None
    image_bytes: bytes | None = field(default=None, repr=False, compare=False)


@dataclass(frozen=True)
class TokenStep:
    """One generated token: its text, where it starts in the generated text, its log-prob, and
    the top alternatives at that step as (token text, log-prob), most likely first."""

    offset: int
    token: str
    logprob: float
    top: tuple[tuple[str, float], ...] = ()


@dataclass(frozen=True)
class Generation:
    """Text generated for one request (prefix not included); `steps` is empty when the engine
    exposes no log-probs. `prompt_tokens` / `completion_tokens` are the engine's own counts (an
    HTTP server's `usage`), None where it reports none."""

    text: str
    steps: tuple[TokenStep, ...] = ()
    finish_reason: str | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None


@dataclass(frozen=True)
class GenerationConfig:
    """Sampling settings shared by every backend so that "the same judge" scores the same way.
    Temperature 0 (the default) is the backend's deterministic decoding: the checkpoint's own
    generation config or plain greedy, as `LoadOptions.decoding` says."""

    max_new_tokens: int = 512
    temperature: float = 0.0
    top_logprobs: int = 20
    seed: int = 0
    # Re-asks are a judge setting, not an engine one (backends ignore them): an output with no
    # parsable answer is asked again, at most `reasks` more times, sampled at
    # `reask_temperature` with seed `seed + attempt` (greedy would only repeat itself), and
    # replaced only by an output that parses. 0 (the default) keeps every run greedy.
    reasks: int = 0
    reask_temperature: float = 0.7
    # The answer tag ("score", "choice" or "prediction") after which a sequence may stop: its
    # later tokens are never read (backends/stopping.py). Engines that cannot stop on it (remote
    # servers) generate to the end; the answer read is the same unless a second tag follows.
    stop_at_answer: str | None = None


@dataclass(frozen=True)
class Capabilities:
    logprobs: bool
    choice_probs: bool


class Backend(abc.ABC):
    """A model behind a uniform interface.

    - `generate(requests, config)` returns one `Generation` per request, in order. Where
      `capabilities.logprobs`, each generation carries per-step top log-probs.
    - `choice_probs(requests, choices)` returns, per request, the probability the model gives
      to each choice as the next thing it writes after the request's prefix (full-vocabulary
      probabilities, not renormalised). Choices are short strings ("1".."5", "A"/"B",
      "real"/"fake"); a backend must account for tokenisers that merge the end of the prefix
      with the choice.
    - `describe()` returns provenance (model id/path, adapter, dtype, device, pixel budget).

    Backends raise `ValueError` for bad arguments and `BackendError` for a request that failed;
    they never return an error message in place of model output. `BackendUnavailable` means
    the engine cannot be reached at all (a server that is down): it stops the run, which a
    rerun resumes.

    `generate_each` / `choice_probs_each` are the per-request forms: one result per request,
    a failed request giving its `BackendError` in place of a result. The defaults make one
    call for the whole batch (a failure fails the batch); engines whose requests fail
    independently (HTTP) override them so that one failure costs one row.
    """

    name: str = "base"
    capabilities: Capabilities = Capabilities(logprobs=False, choice_probs=False)
    # True where `generate_each` / `choice_probs_each` take `on_result(index, result)`, called
    # as each request's answer arrives (HTTP engines): the request cache then writes each
    # answer at once, so a killed run re-asks only the requests that were in flight.
    streams_results: bool = False
    # True where `GenerationConfig.stop_at_answer` cuts the output at the answer tag: the request
    # cache then keys on it, so a run without the stop never gets a cut output from the cache.
    honours_stop_at_answer: bool = False
    # Requests over this budget are refused before any model call (see backends/budget.py);
    # None: no budget. Engines set it when they load.
    prompt_budget: Any = None

    @abc.abstractmethod
    def generate(self, requests: Sequence[ChatRequest], config: GenerationConfig) -> list[Generation]:
        ...

    def choice_probs(self, requests: Sequence[ChatRequest], choices: Sequence[str]) -> list[dict[str, float]]:
        raise NotImplementedError(
            f"backend '{self.name}' cannot read choice probabilities; use --mode generate"
        )

    def generate_each(
        self, requests: Sequence[ChatRequest], config: GenerationConfig
    ) -> list[Generation | BackendError]:
        return self.within_budget(requests, lambda fit: self.generate(fit, config))

    def choice_probs_each(
        self, requests: Sequence[ChatRequest], choices: Sequence[str]
    ) -> list[dict[str, float] | BackendError]:
        return self.within_budget(requests, lambda fit: self.choice_probs(fit, choices))

    def over_budget(self, request: ChatRequest) -> BackendError | None:
        """The request's `PromptTooLong` when it is over `prompt_budget`, else None."""
        return None if self.prompt_budget is None else self.prompt_budget.check(request)

    def within_budget(self, requests: Sequence[ChatRequest], call: Any) -> list[Any]:
        """`call` on the requests that fit the prompt budget; the others get their
        `PromptTooLong` in place of a result, and never reach the model."""
        over = [self.over_budget(r) for r in requests]
        if not any(over):
            return list(call(requests))
        fit = [r for r, o in zip(requests, over) if o is None]
        results = iter(call(fit) if fit else [])
        return [o if o is not None else next(results) for o in over]

    @abc.abstractmethod
    def describe(self) -> dict[str, Any]:
        ...

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release resources (GPU memory, connections)."""


class BackendError(RuntimeError):
    """A model call failed for one batch or request (out of memory, server error...)."""


class BackendUnavailable(RuntimeError):
    """The engine cannot be reached at all (connection refused, rate limit never lifted).

    Not a `BackendError`: per-item isolation must not turn a dead server into an error row for
    every item. The run stops; rerunning the same command resumes it. `partial` holds the
    results that did arrive (aligned with the requests, None where missing) so that a cache
    can keep them.
    """

    def __init__(self, message: str, partial: Sequence[Any] | None = None) -> None:
        super().__init__(message)
        self.partial = list(partial) if partial is not None else None


def raise_failures(results: Sequence[Any]) -> list[Any]:
    """`results` of a `*_each` call, or the first `BackendError` in them raised (the
    all-or-nothing form of the contract)."""
    failed = [r for r in results if isinstance(r, BackendError)]
    if failed:
        raise BackendError(f"{len(failed)} of {len(results)} requests failed; first: {failed[0]}") from failed[0]
    return list(results)


@dataclass(frozen=True)
class PixelBudget:
    min_pixels: int = MIN_PIXELS
    max_pixels: int = MAX_PIXELS

    def __post_init__(self) -> None:
        if self.min_pixels < 1 or self.max_pixels < self.min_pixels:
            raise UsageError(
                f"pixel budget: need 1 <= min_pixels <= max_pixels, got "
                f"min_pixels={self.min_pixels}, max_pixels={self.max_pixels}"
            )


DECODINGS: tuple[str, ...] = ("checkpoint", "greedy")


@dataclass(frozen=True)
class LoadOptions:
    """How to load a local model: path or hub id, optional LoRA adapter, device and dtype."""

    model: str
    adapter: str | None = None
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    dtype: str = "auto"  # auto | float32 | bfloat16 | float16
    budget: PixelBudget = field(default_factory=PixelBudget)
    attn_implementation: str | None = None  # None: sdpa on GPU, eager-free default on CPU
    # Visual embeddings kept per image (content hash + budget) so each image is encoded once;
    # 0 keeps none across calls (images are still encoded once per call).
    vision_cache_mb: int = 1024
    # The vision tower's attention (see backends/vision_attention.py): "grouped", a few batched
    # calls per layer; "loop", transformers' call per window; "auto", grouped on GPU (where the
    # loop is launch-bound) and the loop on CPU (where a window's call is compute-bound already).
    vision_attention: str = "auto"
    # "checkpoint": the model's own generation config (generation_config.json), as
    # `model.generate(**inputs, max_new_tokens=N)` uses it; "greedy": plain argmax without the
    # checkpoint's repetition penalty. Local backends only: a server applies its own defaults.
    decoding: str = "checkpoint"
    remote: RemoteOptions = field(default_factory=lambda: RemoteOptions())
    # Longest prompt, in tokens (text plus the image's tokens); None: the model's context length
    # (a remote server's: REMOTE_DEFAULT_LIMIT in backends/budget.py).
    max_prompt_tokens: int | None = None


@dataclass(frozen=True)
class RemoteOptions:
    """How to reach an OpenAI-compatible server (`--backend openai`); local backends ignore it.

    The API key is never held here: only the name of the environment variable that has it, so
    options can be logged and recorded without leaking it.
    """

    # One server's URL, or several serving the same model (a replica pool: backends/replicas.py).
    base_url: str | tuple[str, ...] | None = None
    api_key_env: str = "OPENAI_API_KEY"
    concurrency: int = 8
    timeout: float = 120.0
    max_retries: int = 5
    top_logprobs: int = 20  # alternatives asked for when reading choice probabilities
    prefill: str = "auto"  # auto | on | off: continue a prefilled assistant message
    backoff_base: float = 0.5  # seconds; doubled per retry, with jitter, capped at backoff_cap
    backoff_cap: float = 30.0
    # How images travel: "png", resized here to the budget (exact with any server); "original",
    # the file's bytes, for a server that resizes with the same budget (backends/image_payload.py).
    image_transport: str = "png"
    image_workers: int | None = None  # processes preparing images; None: one per core, 0: in-process

    @property
    def base_urls(self) -> tuple[str, ...]:
        """The server URLs, one or several; () when none is given."""
        if self.base_url is None:
            return ()
        return (self.base_url,) if isinstance(self.base_url, str) else tuple(self.base_url)

    def __post_init__(self) -> None:
        for name, low in (("concurrency", 1), ("max_retries", 0), ("top_logprobs", 1)):
            if getattr(self, name) < low:
                raise UsageError(f"--{name.replace('_', '-')} must be >= {low}, got {getattr(self, name)}")
        if not self.timeout > 0:
            raise UsageError(f"--timeout must be > 0 seconds, got {self.timeout}")
        if self.prefill not in ("auto", "on", "off"):
            raise UsageError(f"--prefill must be auto, on or off, got {self.prefill!r}")
        if self.image_transport not in ("png", "original"):
            raise UsageError(f"--image-transport must be png or original, got {self.image_transport!r}")
        if self.image_workers is not None and self.image_workers < 0:
            raise UsageError(f"--image-workers must be >= 0 (0: prepare images in this process), got {self.image_workers}")
