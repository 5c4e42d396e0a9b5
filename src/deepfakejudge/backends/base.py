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

# The released judges were trained with this image budget (ms-swift defaults for Qwen2.5-VL).
MIN_PIXELS = 4 * 28 * 28  # 3136
MAX_PIXELS = 1280 * 28 * 28  # 1003520


@dataclass(frozen=True)
class ChatRequest:
    """One user turn: `image` first, then `text`; `prefix` is prefilled assistant text.

    `image_key` identifies the image's content (a hash of its bytes) so that backends may cache
    per-image work; it is optional.
    """

    text: str
    image: Image.Image | None = None
    prefix: str = ""
    image_key: str | None = None


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
    exposes no log-probs."""

    text: str
    steps: tuple[TokenStep, ...] = ()
    finish_reason: str | None = None


@dataclass(frozen=True)
class GenerationConfig:
    """Sampling settings shared by every backend so that "the same judge" scores the same way.
    Greedy by default, as the released judges were used."""

    max_new_tokens: int = 512
    temperature: float = 0.0
    top_logprobs: int = 20
    seed: int = 0


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
    they never return an error message in place of model output.
    """

    name: str = "base"
    capabilities: Capabilities = Capabilities(logprobs=False, choice_probs=False)

    @abc.abstractmethod
    def generate(self, requests: Sequence[ChatRequest], config: GenerationConfig) -> list[Generation]:
        ...

    def choice_probs(self, requests: Sequence[ChatRequest], choices: Sequence[str]) -> list[dict[str, float]]:
        raise NotImplementedError(
            f"backend '{self.name}' cannot read choice probabilities; use --mode generate"
        )

    @abc.abstractmethod
    def describe(self) -> dict[str, Any]:
        ...

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release resources (GPU memory, connections)."""


class BackendError(RuntimeError):
    """A model call failed for one batch or request (out of memory, server error...)."""


@dataclass(frozen=True)
class PixelBudget:
    min_pixels: int = MIN_PIXELS
    max_pixels: int = MAX_PIXELS

    def __post_init__(self) -> None:
        if self.min_pixels < 1 or self.max_pixels < self.min_pixels:
            raise ValueError(
                f"pixel budget: need 1 <= min_pixels <= max_pixels, got "
                f"min_pixels={self.min_pixels}, max_pixels={self.max_pixels}"
            )


@dataclass(frozen=True)
class LoadOptions:
    """How to load a local model: path or hub id, optional LoRA adapter, device and dtype."""

    model: str
    adapter: str | None = None
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    dtype: str = "auto"  # auto | float32 | bfloat16 | float16
    budget: PixelBudget = field(default_factory=PixelBudget)
    attn_implementation: str | None = None  # None: sdpa on GPU, eager-free default on CPU
