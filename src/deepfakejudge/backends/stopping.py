"""Stopping a generated answer at its answer tag.

The judges and the detector read one value from their output: the `<score>`/`<answer>` tag after
the reasoning. Once that tag is complete, the tokens a model writes after it are never read, so a
backend may stop the sequence there (`GenerationConfig.stop_at_answer`). The rule is the parser's
own (`parsing.find_*`), applied to the text generated so far, with one more condition: no
`<reasoning>` block is still open, since a tag inside reasoning that is later closed is not an
answer. The only difference from reading the full output is a second valid tag after the first
(the parser reads the last one; a stopped sequence has only the first).
"""

from __future__ import annotations

import re
from typing import Any, Callable, Sequence

from ..parsing import Match, find_choice, find_prediction, find_score

ANSWER_FINDERS: dict[str, Callable[[str | None], Match | None]] = {
    "score": find_score,
    "choice": find_choice,
    "prediction": find_prediction,
}

_CLOSED_REASONING = re.compile(r"<\s*reasoning\s*>.*?<\s*/\s*reasoning\s*>", re.IGNORECASE | re.DOTALL)
_OPEN_REASONING = re.compile(r"<\s*reasoning\s*>", re.IGNORECASE)


def check_answer_kind(kind: str | None) -> None:
    if kind is not None and kind not in ANSWER_FINDERS:
        raise ValueError(f"stop_at_answer must be one of {', '.join(ANSWER_FINDERS)} or None, got {kind!r}")


def answer_complete(kind: str, text: str) -> bool:
    """Whether `text` already holds a complete, parsable answer tag of `kind` outside reasoning."""
    match = ANSWER_FINDERS[kind](text)
    if match is None:
        return False
    before = _CLOSED_REASONING.sub(lambda m: " " * len(m.group(0)), text[: match.start])
    return _OPEN_REASONING.search(before) is None


class AnswerStop:
    """A transformers stopping criterion: a row is done once its generated text (after
    `prompt_length`) holds a complete answer tag. `stopped[row]` is the number of generated tokens
    at that point (None for rows it never stopped).

    The text is decoded only after a token whose text contains ">" (every tag ends with one), so
    the check costs one short decode per tag, not one per token.
    """

    def __init__(self, kind: str, prompt_length: int, batch_size: int, decode: Callable[[list[int]], str],
                 piece: Callable[[int], str]) -> None:
        check_answer_kind(kind)
        self.kind = kind
        self.prompt_length = prompt_length
        self.decode = decode
        self.piece = piece
        self.stopped: list[int | None] = [None] * batch_size

    def __call__(self, input_ids: Any, scores: Any = None, **kwargs: Any) -> Any:
        import torch

        generated = input_ids.shape[1] - self.prompt_length
        if generated < 1:
            return torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)
        last = input_ids[:, -1].tolist()
        for row, token in enumerate(last):
            if self.stopped[row] is not None or ">" not in self.piece(token):
                continue
            ids = input_ids[row, self.prompt_length :].tolist()
            if answer_complete(self.kind, self.decode(ids)):
                self.stopped[row] = generated
        # One tensor per step (not one device write per stopped row).
        return torch.tensor([s is not None for s in self.stopped], dtype=torch.bool, device=input_ids.device)


def cut_at(ids: Sequence[int], stopped: int | None) -> tuple[list[int], bool]:
    """The generated ids up to the answer tag (all of them when the row did not stop there)."""
    return (list(ids[:stopped]), True) if stopped is not None else (list(ids), False)
