"""Explanation text: what a detector's response says, split into sentences."""

from __future__ import annotations

import re

from ..parsing import parse_reasoning

_TAGS = re.compile(r"<\s*/?\s*(?:reasoning|answer|think)\s*>", re.IGNORECASE)
_ANSWER = re.compile(r"<\s*answer\s*>[^<]*<\s*/\s*answer\s*>", re.IGNORECASE)
# A sentence ends at . ! ? or ; followed by space. Colons are kept inside: "X is wrong: the sun
# sits…" is one claim, and splitting it would leave a claim without its evidence.
_SENTENCE_END = re.compile(r"(?<=[.!?;])\s+(?=\S)")
_ABBREVIATIONS = re.compile(r"\b(?:e\.g|i\.e|etc|vs|approx|fig)\.$", re.IGNORECASE)


def explanation(response: str | None) -> str:
    """The explanation in a detector response: the `<reasoning>` body when there is one, else the
    text with answer tags removed (detectors that do not follow the tag format). "" if none."""
    if not response:
        return ""
    reasoning = parse_reasoning(response)
    if reasoning is not None:
        return reasoning
    return " ".join(_TAGS.sub(" ", _ANSWER.sub(" ", response)).split())


def sentences(text: str) -> list[str]:
    """Sentences of `text`, in order, without empty ones; abbreviations do not end a sentence."""
    out: list[str] = []
    for piece in _SENTENCE_END.split(" ".join(text.split())):
        if out and _ABBREVIATIONS.search(out[-1]):
            out[-1] = f"{out[-1]} {piece}"
        elif piece.strip():
            out.append(piece.strip())
    return out
