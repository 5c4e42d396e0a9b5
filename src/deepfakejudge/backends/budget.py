"""The prompt-length budget: a request whose prompt cannot fit is refused before any model call.

One 10 MB `response` would otherwise become a multi-million-token sequence and take the machine
down (the out-of-memory killer ends the run, and a rerun meets the same row again). The budget
is in tokens: the prompt's text (template filled with the row's fields, plus any assistant
prefix) counted with the model's tokenizer, plus the most tokens the image can take at the
pixel budget. Counting is cheap where it matters: text longer than `limit` times the longest
token (in characters) is over without tokenizing it.

A refused request is a `PromptTooLong` in place of its result (a `BackendError`, so it travels
like any failed request), which the judges turn into an *input* error row naming the field, its
length and the limit: `--retry-errors` does not ask it again, since it would fail the same way.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..errors import UsageError
from .base import BackendError, ChatRequest

# Without the model's tokenizer (remote servers), only prompts certainly too long are refused: more
# than this many characters per token of the limit (real text runs at about 4). The server itself
# refuses what is over its exact limit.
CHARS_PER_TOKEN_BOUND = 8
# Default for servers that report no context length: Qwen2.5-VL's.
REMOTE_DEFAULT_LIMIT = 128_000
PIXELS_PER_TOKEN = 28 * 28  # Qwen2-VL: one visual token per merged 28x28 patch


class PromptTooLong(BackendError):
    """The prompt is over the budget; nothing was sent to the model."""

    def __init__(self, chars: int, tokens: int | None, limit: int) -> None:
        size = (f"{tokens} tokens ({chars} characters)," if tokens is not None
                else f"{chars} characters, certainly")
        super().__init__(
            f"the prompt is {size} over the limit of {limit} tokens (--max-prompt-tokens; the model's "
            "context length by default); shorten the field or raise the limit"
        )
        self.chars, self.tokens, self.limit = chars, tokens, limit


@dataclass(frozen=True)
class PromptBudget:
    """`limit` tokens per prompt. `count(text)` is the exact token count (None: no tokenizer,
    only the character bound applies); `max_token_chars` bounds the characters of one token;
    `image_tokens` is the most tokens one image takes at the backend's pixel budget."""

    limit: int
    count: Callable[[str], int] | None = None
    max_token_chars: int = CHARS_PER_TOKEN_BOUND
    image_tokens: int = 0

    def __post_init__(self) -> None:
        if self.limit < 1:
            raise UsageError(f"--max-prompt-tokens must be >= 1, got {self.limit}")

    def check(self, request: ChatRequest) -> PromptTooLong | None:
        """None when `request` fits, else why not."""
        text = request.text + request.prefix
        room = self.limit - (self.image_tokens if request.image is not None else 0)
        if len(text) > max(room, 0) * self.max_token_chars:
            return PromptTooLong(len(text), None, self.limit)
        # Every token covers at least one byte of the text (one more for a tokenizer's added
        # leading space): a text with fewer bytes than `room` fits without being tokenized.
        if self.count is None or len(text.encode("utf-8")) < room:
            return None
        tokens = self.count(text)
        if tokens > room:
            return PromptTooLong(len(text), tokens + self.limit - room, self.limit)
        return None


def tokenizer_budget(tokenizer: Any, limit: int, max_pixels: int) -> PromptBudget:
    """A budget that counts with `tokenizer` (a transformers fast tokenizer)."""
    special = set(tokenizer.all_special_ids) | set(getattr(tokenizer, "added_tokens_decoder", {}))
    # Byte-level BPE keeps one character per byte in its vocabulary, so this also bounds bytes.
    longest = max((len(t) for t, i in tokenizer.get_vocab().items() if i not in special), default=1)

    def count(text: str) -> int:
        return len(tokenizer(text, add_special_tokens=False, split_special_tokens=True,
                             return_attention_mask=False)["input_ids"])

    return PromptBudget(limit, count, max(longest, 1), max_pixels // PIXELS_PER_TOKEN)


def context_length(config: Any) -> int | None:
    """The model's context length from its config (`text_config` first, as in Qwen2.5-VL)."""
    for cfg in (getattr(config, "text_config", None), config):
        value = getattr(cfg, "max_position_embeddings", None) if cfg is not None else None
        if isinstance(value, int) and value > 0:
            return value
    return None


def longest_field(sample: Any, names: tuple[str, ...] = ("response", "response_a", "response_b", "rationale")) -> tuple[str, int]:
    """(name, length) of the longest text field of a sample: the one that made its prompt too long."""
    lengths = [(name, len(getattr(sample, name, None) or "")) for name in names]
    return max(lengths, key=lambda item: item[1])
