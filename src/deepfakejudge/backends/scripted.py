"""A loaded model made to write a known reply: for tests and benchmarks that need known outputs
through the real generation path (batching, padding, vision cache, stopping, log-probs).

`script_model(backend, reply, dists)` wraps the model's forward: the model runs as usual (same
cost, same shapes) and then the last position's logits are replaced, per row, so that greedy
decoding writes `reply(prompt_text)` token by token and then `filler` for ever (or stops, if the
reply ends with `<|im_end|>`). Where the assistant text so far ends with a key of `dists`, the
next token follows that distribution instead (its most likely entry must be what the reply
writes there, for greedy decoding to stay on the reply). The assistant text of a forward pass
that continues a prefilled answer (choice probabilities) is matched the same way, so a script can
answer differently after an empty reasoning than after a written one.
"""

from __future__ import annotations

import functools
import math
from typing import Any, Callable, Sequence

_FLOOR = -1e4  # logit of every token a script does not name: probability ~0, still finite


def script_model(
    backend: Any,
    reply: Callable[[str], str],
    dists: Sequence[tuple[str, dict[str, float]]] = (),
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
    # Each distribution as (key, [(token id, logit)]); choices must be single tokens.
    table = []
    for key, probs in dists:
        entries = []
        for text, p in probs.items():
            ids = tok.encode(text, add_special_tokens=False)
            if len(ids) != 1:
                raise ValueError(f"dists[{key!r}]: {text!r} is {len(ids)} tokens; script single tokens")
            entries.append((ids[0], math.log(p) if p > 0 else _FLOOR))
        table.append((key, entries))
    state: dict[str, Any] = {"ids": None, "replies": None}

    def split(row_ids: list[int]) -> tuple[list[int], list[int]]:
        start = len(row_ids) - 1 - row_ids[::-1].index(im_start)
        prompt, assistant = row_ids[:start], row_ids[start + 1 :]
        return prompt, assistant[len(head) :]

    def next_logits(row: int, row_ids: list[int]) -> Any:
        prompt, said = split(row_ids)
        replies = state["replies"]
        if replies[row] is None:
            replies[row] = tok.encode(reply(tok.decode(prompt, skip_special_tokens=True)), add_special_tokens=False)
        target = replies[row]
        logits = torch.full((vocab,), _FLOOR)
        text = tok.decode(said, skip_special_tokens=True)
        for key, entries in table:
            if text.endswith(key):
                for token, logit in entries:
                    logits[token] = logit
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
            state["ids"], state["replies"] = ids.tolist(), [None] * ids.shape[0]
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
