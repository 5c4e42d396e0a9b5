"""The OpenAI chat-completions protocol, apart from how it is sent (`http.py`).

What a request body holds (`chat_messages`), which servers continue a prefilled assistant message
and the extra body each takes for it (`PREFILL_SERVERS`), how a choice's first token is asked for
(`heal_split`), and how a response's `logprobs` and `usage` become `TokenStep`s and token counts.
Pure functions of their arguments: `openai.OpenAIBackend` holds the state (the server's kind,
whether it refused log-probs) and the transport.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from .base import ChatRequest, TokenStep

# `owned_by` in /v1/models of servers that continue a final assistant message, and the extra
# body each takes for it (vLLM refuses continue_final_message together with its default
# add_generation_prompt=true; SGLang has no add_generation_prompt field).
PREFILL_SERVERS: dict[str, dict[str, Any]] = {
    "vllm": {"continue_final_message": True, "add_generation_prompt": False},
    "sglang": {"continue_final_message": True},
    "deepfakejudge": {"continue_final_message": True, "add_generation_prompt": False},
}


def chat_messages(request: ChatRequest, prefix: str, image_url: bytes | None) -> list[dict[str, Any]]:
    """The request as chat messages: the image (a data URL) then the text from the user, and the
    prefix, where there is one, as a final assistant message for the server to continue."""
    content: list[dict[str, Any]] = []
    if image_url is not None:
        content.append({"type": "image_url", "image_url": {"url": image_url}})
    content.append({"type": "text", "text": request.text})
    messages: list[dict[str, Any]] = [{"role": "user", "content": content}]
    if prefix:
        messages.append({"role": "assistant", "content": prefix})
    return messages


def heal_split(prefix: str, choices: Sequence[str]) -> tuple[str, str]:
    """(context to send, head the choice tokens start with).

    Qwen-style pre-tokenisers glue one punctuation character onto the letters after it (">A",
    " real"), so after `<answer>` the model wrote ">A" as one token. Sending the prefix without
    that character and reading the tokens ">A"/">B" asks the question the model was trained on.
    Digits are never glued, so `<score>` is sent whole.
    """
    if prefix and all(c[:1].isalpha() for c in choices):
        last = prefix[-1]
        if last not in "\r\n" and not last.isalnum():
            return prefix[:-1], last
    return prefix, ""


def pieces_from_bytes(chunks: Sequence[bytes]) -> list[str]:
    """Text per token from each token's UTF-8 bytes: a token that ends inside a character gets
    "" and the token that completes the character gets all of it."""
    pieces, pending = [], b""
    for chunk in chunks:
        pending += chunk
        try:
            pieces.append(pending.decode("utf-8"))
            pending = b""
        except UnicodeDecodeError:
            pieces.append("")
    if pending:
        pieces[-1] += pending.decode("utf-8", errors="replace")
    return pieces


def steps_from_logprobs(text: str, entries: Sequence[dict[str, Any]]) -> tuple[TokenStep, ...] | None:
    """TokenSteps from a chat completion's `logprobs.content`, or None when the tokens do not
    rebuild `text` (a server that trims, or returns special tokens): no offsets are guessed."""
    pieces = [str(e.get("token", "")) for e in entries]
    if "".join(pieces) != text and all(isinstance(e.get("bytes"), list) for e in entries):
        pieces = pieces_from_bytes([bytes(e["bytes"]) for e in entries])
    joined = "".join(pieces)
    if joined != text and joined.startswith(text):
        # A trailing stop token decoded as text ("<|im_end|>"): keep the steps that wrote `text`.
        total, keep = 0, 0
        while keep < len(pieces) and total < len(text):
            total += len(pieces[keep])
            keep += 1
        if total == len(text):
            entries, pieces = entries[:keep], pieces[:keep]
            joined = text
    if joined != text:
        return None
    steps, offset = [], 0
    for entry, piece in zip(entries, pieces):
        top = tuple((str(t.get("token", "")), float(t["logprob"])) for t in entry.get("top_logprobs") or ())
        steps.append(TokenStep(offset=offset, token=piece, logprob=float(entry["logprob"]), top=top))
        offset += len(piece)
    return tuple(steps)


def usage_count(usage: dict[str, Any], key: str) -> int | None:
    """A token count from a response's `usage`, or None where the server gives none."""
    value = usage.get(key)
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None
