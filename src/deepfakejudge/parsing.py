"""The one place that turns model text into scores, choices and labels.

Rules (docs/design.md, "Parsing"):
- read only the model's own output (callers never pass the prompt);
- tags are matched case-insensitively and may carry spaces (`< Score >`);
- tags inside a closed `<reasoning>…</reasoning>` block are ignored, so a judge that quotes a
  candidate's `<score>5</score>` or `<answer>A</answer>` in its reasoning is not read as answering;
- of the remaining well-formed tags the last *valid* one counts: a tag whose content is exactly
  one allowed value after trimming whitespace. A later invalid tag (a zero-shot model echoing the
  template's `<score>{integer score from 1 to 5}</score>` after its answer, an out-of-range
  `<score>6</score>`) does not hide an earlier valid answer. No valid tag at all is None: never a
  guess, never a default.

`find_*` return the value and the span of the value in the text so that callers can locate the
token that produced it (for the probability at the score position).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

_REASONING = re.compile(r"<\s*reasoning\s*>.*?<\s*/\s*reasoning\s*>", re.IGNORECASE | re.DOTALL)
_REASONING_BODY = re.compile(
    r"<\s*reasoning\s*>(?P<body>.*?)<\s*/\s*reasoning\s*>", re.IGNORECASE | re.DOTALL
)


def _tag(name: str) -> re.Pattern[str]:
    # Content may not contain another '<' so that `<score><score>4</score>` reads the inner one.
    return re.compile(
        rf"<\s*{name}\s*>(?P<body>[^<]*)<\s*/\s*{name}\s*>", re.IGNORECASE
    )


_SCORE = _tag("score")
_ANSWER = _tag("answer")


@dataclass(frozen=True)
class Match:
    """A parsed value and the [start, end) span of its text in the model output."""

    value: str
    start: int
    end: int


def _blank_reasoning(text: str) -> str:
    # Replace closed reasoning blocks by spaces of the same length: offsets stay valid.
    return _REASONING.sub(lambda m: " " * len(m.group(0)), text)


def _last_tag(text: str, pattern: re.Pattern[str], allowed: dict[str, str]) -> Match | None:
    visible = _blank_reasoning(text)
    found = None
    for tag in pattern.finditer(visible):
        body = tag.group("body")
        value = allowed.get(body.strip())
        if value is not None:
            start = tag.start("body") + (len(body) - len(body.lstrip()))
            found = Match(value=value, start=start, end=start + len(body.strip()))
    return found


_SCORE_VALUES = {str(k): str(k) for k in range(1, 6)}
_CHOICE_VALUES = {"A": "A", "B": "B", "a": "A", "b": "B"}
_LABEL_VALUES = {
    **{v: "real" for v in ("real", "Real", "REAL")},
    **{v: "fake" for v in ("fake", "Fake", "FAKE")},
    # A detector that answers "edited" says the image was manipulated: that is a fake verdict.
    **{v: "fake" for v in ("edited", "Edited", "EDITED")},
}


def find_score(text: str | None) -> Match | None:
    """The last valid `<score>N</score>` outside reasoning, N an ASCII digit 1..5."""
    if not text:
        return None
    return _last_tag(text, _SCORE, _SCORE_VALUES)


def find_choice(text: str | None) -> Match | None:
    """The last valid `<answer>A|B</answer>` outside reasoning."""
    if not text:
        return None
    return _last_tag(text, _ANSWER, _CHOICE_VALUES)


def find_prediction(text: str | None) -> Match | None:
    """The last valid `<answer>real|fake</answer>` outside reasoning ("edited" reads as fake)."""
    if not text:
        return None
    return _last_tag(text, _ANSWER, _LABEL_VALUES)


def parse_score(text: str | None) -> int | None:
    m = find_score(text)
    return int(m.value) if m else None


def parse_choice(text: str | None) -> Literal["A", "B"] | None:
    m = find_choice(text)
    return m.value if m else None  # type: ignore[return-value]


def parse_prediction(text: str | None) -> Literal["real", "fake"] | None:
    m = find_prediction(text)
    return m.value if m else None  # type: ignore[return-value]


def parse_reasoning(text: str | None) -> str | None:
    """The body of the last closed `<reasoning>` block, trimmed; None when there is none."""
    if not text:
        return None
    last = None
    for last in _REASONING_BODY.finditer(text):  # noqa: B007 - the loop leaves the last match in `last`
        pass
    return last.group("body").strip() if last else None
