"""What every model task (pointwise and pairwise judging, detection) shares by name: the modes it
runs in and its default generation length. Neutral ground: the CLI, `dfj serve` and the tasks
import it, and it imports nothing of theirs."""

from __future__ import annotations

from typing import Literal

from .errors import UsageError

Mode = Literal["generate", "score-only"]
MODES: tuple[str, ...] = ("generate", "score-only")

# Generation length limit per task kind in generate mode: the official inference scripts' values
# for the judges (a pointwise judge writes its reasoning; a pairwise one only `<answer>X</answer>`).
MAX_NEW_TOKENS: dict[str, int] = {"pointwise": 512, "pairwise": 128, "detect": 512}


def check_mode(mode: str) -> None:
    if mode not in MODES:
        raise UsageError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
