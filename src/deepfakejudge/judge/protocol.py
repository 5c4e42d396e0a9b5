"""Which protocol produced a verdict, by name, so that results say what they are.

- "generate": the model writes its reasoning and then its answer, as the released judges were
  trained and as the paper evaluates them; the answer is parsed from the text.
- "score-only-exact": one forward pass with the answer tag prefilled, and the output format has
  no reasoning before the answer (the released pairwise judges write `<answer>A</answer>` and
  nothing else). The first answer token is then the first token the model writes, so its
  distribution after the prefilled tag is the one generation samples from: greedy generation
  writes its argmax, and the probability read is the one generation would read at that token.
- "score-only-no-reasoning": one forward pass after a prefilled *empty* reasoning
  (`<reasoning></reasoning>` then the tag): the pointwise judge and the VLM detector, which
  reason first. The model never answers after an empty reasoning in training or in the paper,
  so this is an approximation; `--mode compare` measures how far it is from generate on your
  data.
"""

from __future__ import annotations

import re
from typing import Any

PROTOCOLS: dict[str, str] = {
    "generate": "reasoning then answer, parsed from the generated text (the paper's protocol)",
    "score-only-exact": "answer distribution after the prefilled answer tag; exact, as the output format "
    "has no reasoning before the answer",
    "score-only-no-reasoning": "answer distribution after a prefilled empty reasoning: an approximation of "
    "generate (the model never answers without reasoning in training)",
}

_REASONING_TAG = re.compile(r"<\s*reasoning\s*>", re.IGNORECASE)


def protocol(task: str, mode: str, template_text: str, answer_prefix: str) -> str:
    """The protocol name of a run of `task` ("pointwise", "pairwise", "detect") in `mode`.

    Score-only is exact only when neither the prompt's answer format nor the prefilled prefix
    holds a reasoning block: then nothing the model would write comes before the answer.
    """
    if mode == "generate":
        return "generate"
    if mode != "score-only":
        raise ValueError(f"mode must be generate or score-only, got {mode!r}")
    reasons = _REASONING_TAG.search(template_text) or _REASONING_TAG.search(answer_prefix)
    return "score-only-no-reasoning" if reasons else "score-only-exact"


def describe(name: str) -> dict[str, Any]:
    """The summary's `protocol` entry: the name, whether it is the paper's protocol or exactly
    equivalent to it, and one line saying what it is."""
    return {"name": name, "exact": name != "score-only-no-reasoning", "meaning": PROTOCOLS[name]}
