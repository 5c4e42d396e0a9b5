"""`--mode compare`: judge the same items with generate and with score-only, and say how much the
fast path agrees with the paper's protocol on this data.

A compare results row is the generate verdict (so every reader of results files reads it as a
generate run) plus a `score_only` object holding the score-only verdict of the same item. The
summary's `agreement` block compares the two over the items where both answered.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Iterable, Iterator, Sequence

from ..records import RowError, Sample
from .common import Prepared, judge_batches

# Per task: the answer field, its values (confusion-matrix order) and the probability field.
FIELDS: dict[str, tuple[str, tuple[Any, ...], str]] = {
    "pointwise": ("score", (1, 2, 3, 4, 5), "expected_score"),
    "pairwise": ("choice", ("A", "B"), "p_a"),
    "detect": ("prediction", ("real", "fake"), "p_fake"),
}


@dataclass(frozen=True)
class Compared:
    """One item judged both ways: `generate` (the paper's protocol) and `score_only`, whose
    protocol is named by `score_only_protocol`."""

    id: str
    generate: Any
    score_only: Any
    score_only_protocol: str


def compare_batches(
    samples: Iterable[Sample],
    batch_size: int,
    required: Sequence[str],
    max_image_pixels: int,
    generate: Callable[[Sequence[Prepared]], list[Any]],
    score_only: Callable[[Sequence[Prepared]], list[Any]],
    score_only_protocol: str,
    length: Callable[[Prepared], int] | None = None,
) -> Iterator[list[Compared | RowError]]:
    """Batches of `Compared` (or the item's `RowError` when either mode could not judge it):
    each batch is prepared once and judged by both calls (`length`: see `judge_batches`)."""

    def both(items: Sequence[Prepared]) -> list[Compared | RowError]:
        out: list[Compared | RowError] = []
        for g, s in zip(generate(items), score_only(items)):
            failed = g if isinstance(g, RowError) else s if isinstance(s, RowError) else None
            out.append(failed if failed is not None else Compared(g.id, g, s, score_only_protocol))
        return out

    return judge_batches(samples, batch_size, required, max_image_pixels, both, length)


def agreement(task: str, rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """How the score-only answers of compare rows agree with the generate ones.

    `agreement` is the share of items, among those both modes answered, with the same answer;
    `confusion[i][j]` counts items answered `labels[i]` by generate and `labels[j]` by score-only.
    For pointwise, `score` gives the mean absolute difference and Spearman's rho of the two
    scores; `probability` does the same for the probability field (expected score, p_a, p_fake)
    where both modes gave one. Spearman is None when fewer than two items or a constant side.
    """
    from scipy.stats import spearmanr

    if task not in FIELDS:
        raise ValueError(f"task must be one of {', '.join(FIELDS)}, got {task!r}")
    field, labels, prob = FIELDS[task]
    pairs = [(r.get(field), (r.get("score_only") or {}).get(field)) for r in rows]
    both = [(g, s) for g, s in pairs if g is not None and s is not None]
    index = {v: i for i, v in enumerate(labels)}
    matrix = [[0] * len(labels) for _ in labels]
    for g, s in both:
        matrix[index[g]][index[s]] += 1

    def numeric(values: list[tuple[float, float]]) -> dict[str, Any]:
        diffs = [abs(a - b) for a, b in values]
        rho = None
        xs, ys = [a for a, _ in values], [b for _, b in values]
        if len(set(xs)) > 1 and len(set(ys)) > 1:  # a constant side has no rank correlation
            rho = round(float(spearmanr(xs, ys).statistic), 4)
        return {
            "pairs": len(values),
            "mean_abs_diff": round(sum(diffs) / len(diffs), 4) if diffs else None,
            "spearman": rho,
        }

    probs = [(r.get(prob), (r.get("score_only") or {}).get(prob)) for r in rows]
    out: dict[str, Any] = {
        "items": len(rows),
        "both_answered": len(both),
        "unanswered": {
            "generate": sum(g is None for g, _ in pairs),
            "score_only": sum(s is None for _, s in pairs),
        },
        "agreement": round(sum(g == s for g, s in both) / len(both), 4) if both else None,
        "confusion": {"rows": "generate", "columns": "score-only", "labels": list(labels), "matrix": matrix},
    }
    if task == "pointwise":
        out["score"] = numeric([(float(g), float(s)) for g, s in both])
    out["probability"] = {"field": prob, **numeric([(a, b) for a, b in probs if a is not None and b is not None])}
    return out


def agreement_lines(task: str, a: dict[str, Any]) -> list[str]:
    """The agreement block in words, for the command's output."""
    unanswered = f"unanswered: generate {a['unanswered']['generate']}, score-only {a['unanswered']['score_only']}"
    if not a["both_answered"]:
        return [f"compare: no item was answered by both modes ({unanswered})"]
    what = {"pointwise": "score", "pairwise": "choice", "detect": "verdict"}[task]
    lines = [f"compare: same {what} on {a['agreement']:.1%} of the {a['both_answered']} items both modes answered "
             f"({unanswered})"]
    if "score" in a:
        lines.append(f"score: mean |generate - score-only| {a['score']['mean_abs_diff']}, Spearman {a['score']['spearman']}")
    p = a["probability"]
    if p["pairs"]:
        lines.append(f"{p['field']}: mean |difference| {p['mean_abs_diff']}, Spearman {p['spearman']}")
    labels = a["confusion"]["labels"]
    lines.append("confusion (rows: generate, columns: score-only): " + "; ".join(
        f"{g}: " + " ".join(str(n) for n in row) for g, row in zip(labels, a["confusion"]["matrix"])))
    return lines


def compare_judges(
    generate: Any, score_only: Any, samples: Iterable[Sample], batch_size: int, both_orders: bool = True
) -> Iterator[list[Compared | RowError]]:
    """`compare_batches` for two judges of one task (PointwiseJudge, PairwiseJudge or Detector)
    built in generate and score-only mode over the same backend (`both_orders`: pairwise only)."""
    from .base import Task
    from .pairwise import PairwiseJudge

    if not isinstance(generate, Task):
        raise ValueError(f"compare: unsupported judge {type(generate).__name__}")
    if (generate.mode, score_only.mode) != ("generate", "score-only") or type(generate) is not type(score_only):
        raise ValueError("compare needs two judges of the same task, one in generate and one in score-only mode")
    options = {"both_orders": both_orders} if isinstance(generate, PairwiseJudge) else {}
    g, s = generate.job(**options), score_only.job(**options)
    return compare_batches(samples, batch_size, g.required, generate.max_image_pixels, g.call, s.call,
                           score_only.protocol, g.length)
