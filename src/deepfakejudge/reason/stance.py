"""Does a sentence assert an artifact, assert that things are normal, or neither?

A small lexicon, not a model: a sentence *claims an artifact* when it has an anomaly cue that is
not negated ("the letters are warped") or a normality cue that is negated ("the shadows do not
match"); it *asserts normality* on the opposite ("the lighting is consistent", "no seams").
Verdict words (fake, edited, generated, real…) name a class, not evidence, and are not cues: a
sentence "The image was edited." claims nothing checkable. A negator reaches up to six words
forward within its clause (a list "no warping, seams or repetition" stays negated; "but",
"although"… start a new clause).
"""

from __future__ import annotations

import re
from typing import Literal

Stance = Literal["anomaly", "normal", "neutral"]

ANOMALY = frozenset("""
    abrupt abruptly absent alike aliased aliasing anomalies anomaly artifact artifacts blocky blurrier
    blurry checkerboard clone-stamp copies cut distorted distortion deformed deformation duplicate
    duplicated duplication erased errors exaggerated floats fused garbled gibberish glitch grid halo
    identical illegible impossible implausible inconsistent inconsistency inconsistencies jagged
    melting misplaced mismatch mismatched missing nonsense odd oddly pixelated problems removed
    repeat repeated repeating repeats repetition saturated seam seams similar smear smeared smudged
    stair-step stair-steps stub strange suspicious suspiciously tiled tiling too unnatural
    unnaturally unreadable unusual unusually warped warping weird wrong
""".split())
NORMALITY = frozenset("""
    agree agrees belong belongs bend coherent consistent consistently continuous continuously
    correct correctly exist exists fine fit fits match matches matching natural naturally normal
    normally occur plausible realistic stable unbroken
""".split())
NEGATORS = frozenset("no not nothing never without none neither nor cannot can't don't doesn't didn't "
                     "isn't aren't wasn't weren't won't free".split())
CLAUSE_BREAKS = frozenset("but however although though while whereas yet except".split())
_WINDOW = 6
_WORD = re.compile(r"[a-z]+(?:[-'][a-z]+)*")


def words(text: str) -> list[str]:
    return _WORD.findall(text.lower().replace("’", "'"))


def cues(text: str) -> tuple[list[str], list[str]]:
    """(anomaly assertions, normality assertions) found in `text`, each as the cue word, with
    negation applied (a negated normality cue is an anomaly assertion and vice versa)."""
    anomaly: list[str] = []
    normal: list[str] = []
    tokens = words(text)
    last_negator = -(10**6)
    for i, w in enumerate(tokens):
        if w in CLAUSE_BREAKS:
            last_negator = -(10**6)
            continue
        if w in NEGATORS or w.endswith("n't"):
            last_negator = i
            continue
        negated = i - last_negator <= _WINDOW
        if w in ANOMALY:
            (normal if negated else anomaly).append(w)
        elif w in NORMALITY:
            (anomaly if negated else normal).append(w)
    return anomaly, normal


def stance(text: str) -> Stance:
    """'anomaly' if the sentence asserts any artifact (even beside normal observations),
    'normal' if it only asserts normality, 'neutral' otherwise."""
    anomaly, normal = cues(text)
    if anomaly:
        return "anomaly"
    return "normal" if normal else "neutral"


_HEDGE = re.compile(
    r"\b(?:might|may|maybe|perhaps|possibly|could|unsure|guess|probably|likely|lean towards?|"
    r"not (?:fully |entirely |completely )?(?:sure|certain)|hard to (?:say|tell))\b",
    re.IGNORECASE,
)


def hedged(text: str) -> bool:
    """Whether the sentence hedges ("might", "could be", "probably", "not sure", "hard to say")."""
    return _HEDGE.search(text) is not None
