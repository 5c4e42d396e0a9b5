"""The per-(image, level) state machine, rebuilt by replaying journal events.

A unit is one annotated image at one intended quality level. Its life:

    open --generate--> generated --evaluate--> rated --(aligned)--> accepted --paraphrase x P--> done
                          ^                      |
                          +------refine----------+ (misaligned, round < R)
    rated, misaligned at round R -> rejected;  evaluator output without a score -> rejected;
    generator output malformed -> the next round asks again (sampled); all rounds malformed -> rejected;
    a model call that failed -> failed (an error entry; `retry_failed` reopens it).

Every generator call is a round: round 0 is the first explanation, rounds 1..R the refinements
(or re-asks after malformed output). A gold unit (level 5 by default) has no generator call: its
round 0 is the annotated rationale, rated once by the evaluator (for the judge's target and the
report) and accepted whatever the rating, then paraphrased and re-checked like any other. Each accepted unit then has P paraphrase slots; a slot tries
up to 1 + `paraphrase_retries` times and keeps the first rewording that is well formed, differs
from the original and (with `recheck`) is rated within tolerance by the evaluator.

The status is never stored: it is derived from the events (`apply`) and the settings, so a kill
between any two writes leaves nothing to reconcile. Events are idempotent: one that repeats a
finished call (same round / slot / try) is ignored, so a unit finishes exactly once.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from ..errors import InputError, UsageError

Role = Literal["generate", "refine", "paraphrase", "evaluate", "recheck"]
Level5 = Literal["gold", "generated"]
LEVEL5: tuple[str, ...] = ("gold", "generated")
ROLES: tuple[str, ...] = ("generate", "refine", "paraphrase", "evaluate", "recheck")
GENERATOR_ROLES = frozenset({"generate", "refine", "paraphrase"})
Status = Literal["open", "accepted", "done", "rejected", "failed"]


@dataclass(frozen=True)
class Settings:
    """What decides a unit's path (all part of the run's fingerprint)."""

    rounds: int = 3
    tolerance: int = 0
    paraphrases: int = 4
    recheck: bool = True
    paraphrase_retries: int = 1
    # A generator output cut off at its token limit is malformed unless kept: a truncated
    # explanation is not a valid training target.
    keep_truncated: bool = False
    # Level 5: the annotated rationale itself ("gold", the paper's table labels it so) or a
    # generated explanation ("generated", as this project did before).
    level5: Level5 = "gold"

    def __post_init__(self) -> None:
        if self.level5 not in LEVEL5:
            raise UsageError(f"--level5 must be one of {', '.join(LEVEL5)}, got {self.level5!r}")
        for name, low in (("rounds", 0), ("tolerance", 0), ("paraphrases", 0), ("paraphrase_retries", 0)):
            if getattr(self, name) < low:
                raise UsageError(f"--{name.replace('_', '-')} must be >= {low}, got {getattr(self, name)}")
        if self.tolerance > 4:
            raise UsageError(f"--tolerance must be 0..4 (levels are 1..5), got {self.tolerance}")

    def aligned(self, score: int | None, level: int) -> bool:
        return score is not None and abs(score - level) <= self.tolerance


@dataclass
class Try:
    """One generator call (and the evaluator's rating of it, once rated)."""

    response: str | None  # the candidate response; None when the output was malformed
    malformed: str | None
    raw: str
    score: int | None = None
    feedback: str | None = None
    rated: bool = False


@dataclass
class Slot:
    tries: list[Try] = field(default_factory=list)
    failure: str | None = None


@dataclass(frozen=True)
class Action:
    """The next call a unit needs. `retry` counts earlier calls with the same prompt (they get
    another seed); `slot`/`attempt` address a paraphrase."""

    unit: str
    role: Role
    round: int = 0
    slot: int = 0
    attempt: int = 0
    retry: int = 0


def unit_key(image_id: str, level: int) -> str:
    return f"{image_id}#{level}"


@dataclass
class Unit:
    image_id: str
    level: int
    rounds: list[Try] = field(default_factory=list)
    kinds: list[str] = field(default_factory=list)  # "generate" | "refine", per round
    slots: dict[int, Slot] = field(default_factory=dict)
    failure: str | None = None
    failure_role: str | None = None
    gold: str | None = None  # the gold candidate: round 0 is this text, never generated
    # Paraphrase slots of this unit; None: settings.paraphrases. 0 for a test image in the
    # released layout, which keeps no paraphrase.
    paraphrases: int | None = None

    def __post_init__(self) -> None:
        if self.gold is not None and not self.rounds:
            self.rounds.append(Try(self.gold, None, ""))
            self.kinds.append("gold")

    @property
    def key(self) -> str:
        return unit_key(self.image_id, self.level)

    # -- replay ----------------------------------------------------------------------------------

    def apply(self, event: dict[str, Any], retry_failed: bool = False) -> bool:
        """Fold one journal event into the state; False when it repeats a finished call."""
        kind = event["e"]
        if kind == "fail":
            if retry_failed:
                return True
            if event.get("slot"):
                slot = self.slots.setdefault(int(event["slot"]), Slot())
                slot.failure = slot.failure or event["error"]
            elif self.failure is None:
                self.failure, self.failure_role = event["error"], event["role"]
            return True
        if kind == "gen":
            if event["round"] != len(self.rounds):
                return False
            self.rounds.append(Try(event.get("response"), event.get("malformed"), event.get("raw", "")))
            self.kinds.append(event["role"])
            return True
        if kind == "eval":
            r = event["round"]
            if r >= len(self.rounds) or self.rounds[r].rated or self.rounds[r].response is None:
                return False
            t = self.rounds[r]
            t.score, t.feedback, t.rated = event.get("score"), event.get("feedback"), True
            return True
        if kind == "para":
            slot = self.slots.setdefault(int(event["slot"]), Slot())
            if event["attempt"] != len(slot.tries):
                return False
            slot.tries.append(Try(event.get("response"), event.get("malformed"), event.get("raw", "")))
            return True
        if kind == "recheck":
            slot = self.slots.get(int(event["slot"]))
            a = event["attempt"]
            if slot is None or a >= len(slot.tries) or slot.tries[a].rated or slot.tries[a].response is None:
                return False
            t = slot.tries[a]
            t.score, t.feedback, t.rated = event.get("score"), event.get("feedback"), True
            return True
        raise InputError(f"journal: unknown event {kind!r}")

    # -- derived status --------------------------------------------------------------------------

    def accepted_try(self, settings: Settings) -> Try | None:
        if self.gold is not None:  # the annotation is the reference: rated for the record, never refused
            return self.rounds[0] if self.rounds[0].rated else None
        for t in self.rounds:
            if t.rated and settings.aligned(t.score, self.level):
                return t
        return None

    def last_rated(self) -> Try | None:
        for t in reversed(self.rounds):
            if t.rated:
                return t
        return None

    def first_rated(self) -> Try | None:
        return next((t for t in self.rounds if t.rated), None)

    def main_status(self, settings: Settings) -> tuple[Status, str | None]:
        """("open"|"accepted"|"rejected"|"failed", reason) ignoring paraphrases."""
        if self.failure is not None:
            return "failed", self.failure
        if self.accepted_try(settings) is not None:
            return "accepted", None
        if not self.rounds:
            return "open", None
        last = self.rounds[-1]
        n = len(self.rounds)
        if last.response is None:
            if n > settings.rounds:
                return "rejected", f"generator output malformed in the last round ({last.malformed}) after {n} calls"
            return "open", None
        if not last.rated:
            return "open", None
        if last.score is None:
            return "rejected", "the evaluator gave no parsable score"
        if n > settings.rounds:
            scores = [t.score for t in self.rounds if t.rated]
            return "rejected", (f"evaluator rated {last.score}, intended {self.level}, after {n - 1} "
                                f"refinement round(s) (ratings {scores})")
        return "open", None

    def n_paraphrases(self, settings: Settings) -> int:
        return settings.paraphrases if self.paraphrases is None else self.paraphrases

    def slot_state(self, j: int, settings: Settings) -> tuple[str, Try | None]:
        """("todo" | "kept" | "dropped" | "failed", the kept try)."""
        slot = self.slots.get(j)
        if slot is None:
            return "todo", None
        if slot.failure is not None:
            return "failed", None
        for t in slot.tries:
            if t.response is not None and (not settings.recheck or (t.rated and settings.aligned(t.score, self.level))):
                return "kept", t
        if not slot.tries:
            return "todo", None
        last = slot.tries[-1]
        if last.response is not None and settings.recheck and not last.rated:
            return "todo", None
        return ("todo" if len(slot.tries) <= settings.paraphrase_retries else "dropped"), None

    def status(self, settings: Settings) -> tuple[Status, str | None]:
        main, reason = self.main_status(settings)
        if main != "accepted":
            return main, reason
        if all(self.slot_state(j, settings)[0] != "todo" for j in range(1, self.n_paraphrases(settings) + 1)):
            return "done", None
        return "accepted", None

    def finished(self, settings: Settings) -> bool:
        return self.status(settings)[0] in ("done", "rejected", "failed")

    def rounds_used(self, settings: Settings) -> int:
        """Refinement rounds spent: the accepted round, or all of them."""
        t = self.accepted_try(settings)
        return self.rounds.index(t) if t is not None else max(0, len(self.rounds) - 1)

    # -- what to call next -----------------------------------------------------------------------

    def next_actions(self, settings: Settings) -> list[Action]:
        main, _ = self.main_status(settings)
        if main in ("rejected", "failed"):
            return []
        if main == "open":
            if not self.rounds:
                return [Action(self.key, "generate", 0)]
            last, r = self.rounds[-1], len(self.rounds) - 1
            if last.response is None:
                # Ask the same question again with another seed: a malformed refine keeps its base.
                retry = 1
                while retry <= r and self.rounds[r - retry].response is None:
                    retry += 1
                role = self.kinds[-1]
                return [Action(self.key, role, r + 1, retry=retry)]  # type: ignore[arg-type]
            if not last.rated:
                return [Action(self.key, "evaluate", r)]
            return [Action(self.key, "refine", r + 1)]
        actions = []
        for j in range(1, self.n_paraphrases(settings) + 1):
            state, _ = self.slot_state(j, settings)
            if state != "todo":
                continue
            slot = self.slots.get(j)
            tries = slot.tries if slot else []
            if tries and tries[-1].response is not None and settings.recheck and not tries[-1].rated:
                actions.append(Action(self.key, "recheck", slot=j, attempt=len(tries) - 1))
            else:
                actions.append(Action(self.key, "paraphrase", slot=j, attempt=len(tries), retry=len(tries)))
        return actions

    def refine_base(self) -> Try:
        """The rated explanation a refinement revises: the most recent rated one."""
        base = self.last_rated()
        if base is None or base.response is None or base.score is None:
            raise RuntimeError(f"{self.key}: refine needs a rated explanation")  # the state machine forbids it
        return base
