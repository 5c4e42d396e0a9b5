"""The run's report: acceptance per level, rounds, evaluator-vs-intended confusion, calls, tokens.

Everything is computed from the state and the journal (all runs together), plus this run's own
counters, so the report of a resumed run covers the whole dataset.
"""

from __future__ import annotations

from collections import Counter
from typing import Any, Iterable

from .engine import TRUNCATED
from .prompts import LEVELS
from .state import ROLES, Settings, Unit

_COLUMNS = [str(k) for k in LEVELS] + ["none"]


def _rate(num: int, den: int) -> float | None:
    return round(num / den, 4) if den else None


def _mean(values: list[float]) -> float | None:
    return round(sum(values) / len(values), 4) if values else None


def confusion(pairs: Iterable[tuple[int, int | None]]) -> dict[str, dict[str, int]]:
    """intended level -> evaluator score ("none": no parsable score) -> count."""
    table = {str(k): {c: 0 for c in _COLUMNS} for k in LEVELS}
    for intended, score in pairs:
        table[str(intended)]["none" if score is None else str(score)] += 1
    return table


def usage(events: Iterable[dict[str, Any]]) -> dict[str, Any]:
    """Calls and tokens per role. Token counts are the engine's own (an HTTP server's `usage`);
    without them generated tokens are counted from per-token log-probs and prompt tokens not at
    all. A call without a count is not in the totals but in `calls_without_*_tokens`."""
    calls, chars, failed = Counter(), Counter(), Counter()
    tokens = {"prompt": Counter(), "generated": Counter()}
    uncounted = {"prompt": Counter(), "generated": Counter()}
    for e in events:
        role = e["role"]
        n = e.get("calls", 1)
        calls[role] += n
        if e["e"] == "fail":
            failed[role] += n
            continue
        chars[role] += e.get("prompt_chars", 0) * n
        for kind, key in (("prompt", "prompt_tokens"), ("generated", "tokens")):
            if e.get(key) is None:
                uncounted[kind][role] += n
            else:
                tokens[kind][role] += e[key]
    return {
        "calls": {r: calls[r] for r in ROLES},
        "calls_total": sum(calls.values()),
        "failed_calls": sum(failed.values()),
        "prompt_tokens": {r: tokens["prompt"][r] for r in ROLES},
        "prompt_tokens_total": sum(tokens["prompt"].values()),
        "generated_tokens": {r: tokens["generated"][r] for r in ROLES},
        "generated_tokens_total": sum(tokens["generated"].values()),
        "calls_without_prompt_tokens": {r: uncounted["prompt"][r] for r in ROLES},
        "calls_without_generated_tokens": {r: uncounted["generated"][r] for r in ROLES},
        "prompt_chars": {r: chars[r] for r in ROLES},
    }


def report(units: list[Unit], settings: Settings, events: list[dict[str, Any]]) -> dict[str, Any]:
    per_level: dict[str, Any] = {}
    statuses = {u.key: u.status(settings) for u in units}
    for k in LEVELS:
        mine = [u for u in units if u.level == k]
        count = Counter(statuses[u.key][0] for u in mine)
        accepted = [u for u in mine if statuses[u.key][0] in ("accepted", "done")]
        decided = count["done"] + count["accepted"] + count["rejected"]
        first = [u.first_rated() for u in mine]
        per_level[str(k)] = {
            "units": len(mine),
            "accepted": len(accepted),
            "rejected": count["rejected"],
            "failed": count["failed"],
            "open": count["open"],
            "acceptance_rate": _rate(len(accepted), decided),
            "first_round_aligned": _rate(sum(1 for t in first if t and settings.aligned(t.score, k)),
                                         sum(1 for t in first if t)),
            "mean_rounds_accepted": _mean([u.rounds_used(settings) for u in accepted]),
        }
    finished = [u for u in units if statuses[u.key][0] in ("done", "accepted", "rejected")]
    accepted = [u for u in finished if statuses[u.key][0] != "rejected"]
    slots = Counter()
    for u in units:
        if statuses[u.key][0] in ("done", "accepted"):
            for j in range(1, u.n_paraphrases(settings) + 1):
                slots[u.slot_state(j, settings)[0]] += 1
    rechecked = [t for u in units for s in u.slots.values() for t in s.tries if t.rated]
    return {
        "units": len(units),
        "status": dict(Counter(s for s, _ in statuses.values())),
        "acceptance_rate": _rate(len(accepted), len(finished)),
        "mean_rounds": _mean([u.rounds_used(settings) for u in finished]),
        "mean_rounds_accepted": _mean([u.rounds_used(settings) for u in accepted]),
        "per_level": per_level,
        "rejection_reasons": dict(Counter(_reason_kind(statuses[u.key][1] or "") for u in units
                                          if statuses[u.key][0] == "rejected")),
        "malformed_generations": sum(1 for u in units for t in u.rounds if t.malformed),
        # Generator outputs that hit --generator-max-new-tokens (malformed unless --keep-truncated).
        "truncated_outputs": sum(1 for e in events if e.get("e") in ("gen", "para") and e.get("finish") == "length"),
        # Rows: intended level; columns: the evaluator's score. "first": the first rating of each
        # unit (how well the generator hits a level unaided); "final": the last rating.
        "confusion": {
            "first": confusion((u.level, t.score) for u in units if (t := u.first_rated()) is not None),
            "final": confusion((u.level, t.score) for u in units if (t := u.last_rated()) is not None),
        },
        "paraphrases": {
            "slots": sum(slots.values()),
            "kept": slots["kept"],
            "dropped": slots["dropped"],
            "failed": slots["failed"],
            "pending": slots["todo"],
            "recheck_agreement": _rate(sum(settings.aligned(t.score, u.level) for u in units for s in u.slots.values()
                                           for t in s.tries if t.rated), len(rechecked)),
            "malformed": sum(1 for u in units for s in u.slots.values() for t in s.tries if t.malformed),
        },
        "usage": usage(e for e in events if e.get("e") != "run"),
    }


def _reason_kind(reason: str) -> str:
    if reason.startswith("evaluator rated"):
        return "never aligned"
    if reason.startswith("generator output malformed") and TRUNCATED in reason:
        return "generator output cut off at the token limit"
    if reason.startswith("generator output malformed"):
        return "malformed generator output"
    if reason.startswith("the evaluator gave no parsable score"):
        return "evaluator unparsable"
    return reason


def progress_postfix(units: list[Unit], settings: Settings) -> str:
    """"acc 12 rej 3 fail 0 | L5 3/4 L4 …": accepted/decided per level, for the progress bar."""
    count = Counter()
    decided = Counter()
    for u in units:
        status = u.status(settings)[0]
        if status in ("accepted", "done"):
            count[u.level] += 1
        if status in ("accepted", "done", "rejected"):
            decided[u.level] += 1
    total = Counter(u.status(settings)[0] for u in units)
    levels = " ".join(f"L{k} {count[k]}/{decided[k]}" for k in sorted(LEVELS, reverse=True))
    return f"acc {total['done'] + total['accepted']} rej {total['rejected']} fail {total['failed']} | {levels}"
