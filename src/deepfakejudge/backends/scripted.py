"""A loaded model made to write a known reply: for tests and benchmarks that need known outputs
through the real generation path (batching, padding, vision cache, stopping, log-probs).

`script_model(backend, reply, dist)` wraps the model's forward: the model runs as usual (same
cost, same shapes) and then the last position's logits are replaced, per row, so that greedy
decoding writes `reply(prompt_text)` token by token and then `filler` for ever (or stops, if the
reply ends with `<|im_end|>`). Where `dist(prompt_text, assistant_text_so_far)` returns a
distribution ({token text: probability}, single tokens), the next token follows it instead (its
most likely entry must be what the reply writes there, for greedy decoding to stay on the reply).
A forward pass that continues a prefilled answer (choice probabilities) is asked the same way, so
a script can answer differently after an empty reasoning than after a written one.
"""

from __future__ import annotations

import functools
import math
from typing import Any, Callable

_FLOOR = -1e4  # logit of every token a script does not name: probability ~0, still finite


def script_model(
    backend: Any,
    reply: Callable[[str], str],
    dist: Callable[[str, str], dict[str, float] | None] | None = None,
    filler: str = " more",
) -> Callable[[], None]:
    """Make `backend.model` (an `HFBackend`'s) follow the script; returns a function that undoes it."""
    import torch

    model = backend.model
    tok = backend.processor.tokenizer
    original = model.forward
    im_start = tok.convert_tokens_to_ids("<|im_start|>")
    head = tok.encode("assistant\n", add_special_tokens=False)
    filler_id = tok.encode(filler, add_special_tokens=False)[0]
    vocab = model.config.get_text_config().vocab_size
    state: dict[str, Any] = {"ids": None, "replies": None, "prompts": None}

    def token(text: str) -> int:
        ids = tok.encode(text, add_special_tokens=False)
        if len(ids) != 1:
            raise ValueError(f"script: {text!r} is {len(ids)} tokens; a distribution names single tokens")
        return ids[0]

    def split(row_ids: list[int]) -> tuple[list[int], list[int]]:
        start = len(row_ids) - 1 - row_ids[::-1].index(im_start)
        prompt, assistant = row_ids[:start], row_ids[start + 1 :]
        return prompt, assistant[len(head) :]

    def next_logits(row: int, row_ids: list[int]) -> Any:
        prompt, said = split(row_ids)
        replies, prompts = state["replies"], state["prompts"]
        if replies[row] is None:
            prompts[row] = tok.decode(prompt, skip_special_tokens=True)
            replies[row] = tok.encode(reply(prompts[row]), add_special_tokens=False)
        target = replies[row]
        logits = torch.full((vocab,), _FLOOR)
        probs = None if dist is None else dist(prompts[row], tok.decode(said, skip_special_tokens=True))
        if probs is not None:
            for text, p in probs.items():
                logits[token(text)] = math.log(p) if p > 0 else _FLOOR
            return logits
        on_script = len(said) < len(target) and said == target[: len(said)]
        logits[target[len(said)] if on_script else filler_id] = 0.0
        return logits

    @functools.wraps(original)  # transformers checks generate's kwargs against forward's signature
    def forward(*args: Any, **kwargs: Any) -> Any:
        ids = kwargs.get("input_ids")
        # transformers 5 passes the KV cache as `cache` (4.x: `past_key_values`); an empty one is a prefill.
        past = kwargs.get("cache", kwargs.get("past_key_values"))
        fresh = state["ids"] is None or past is None or past.get_seq_length() == 0
        out = original(*args, **kwargs)
        if fresh:
            state["ids"], state["replies"], state["prompts"] = ids.tolist(), [None] * len(ids), [None] * len(ids)
        else:
            for row, new in enumerate(ids.tolist()):
                state["ids"][row].extend(new)
        scripted = torch.stack([next_logits(r, row) for r, row in enumerate(state["ids"])])
        out.logits[:, -1, :] = scripted.to(out.logits.device, out.logits.dtype)
        return out

    model.forward = forward

    def undo() -> None:
        model.forward = original

    return undo
