"""Inter-annotator agreement over items annotated by two (or more) people.

Pure functions over `Rating` records; the figures reuse `deepfakejudge.metrics`:

- classes (real/fake/edited) and pairwise preferences (A/B): Cohen's kappa of the first and the
  second annotator of each item (by assignment order), and Krippendorff's alpha (nominal) over
  items × annotators, which uses every rating;
- pointwise scores: Cohen's kappa unweighted and quadratic-weighted over labels 1..5, and
  Krippendorff's alpha (ordinal and interval);
- boxes: for each item the two annotators' boxes are matched one to one maximising IoU
  (Hungarian); `mean_iou` averages, over items where either drew a box, the summed IoU of the
  matched pairs divided by the larger number of boxes (a box without a partner counts 0);
  `f1_at_50` = 2·(pairs with IoU ≥ 0.5) / (all boxes of both); `category_agreement` is the share
  of those pairs given the same category. Items where neither drew a box are counted apart.

A figure is None where it is undefined (no double-annotated item yet, or no variation).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy.optimize import linear_sum_assignment

from ..metrics import cohen_kappa, krippendorff_alpha

IOU_MATCH = 0.5


@dataclass(frozen=True)
class Rating:
    """One finished annotation: `item` identifies the item, `rank` its assignment order."""

    item: str
    kind: str
    annotator: str
    rank: int
    label: str | None = None
    score: int | None = None
    choice: str | None = None
    boxes: tuple[tuple[str, tuple[float, float, float, float]], ...] = field(default=())  # (category, box)


def iou(a: Sequence[float], b: Sequence[float]) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def match_boxes(a: Sequence[Sequence[float]], b: Sequence[Sequence[float]]) -> list[tuple[int, int, float]]:
    """One-to-one matching of boxes `a` to boxes `b` maximising total IoU; pairs with IoU 0
    are dropped. Returns (index in a, index in b, IoU)."""
    if not a or not b:
        return []
    m = np.array([[iou(x, y) for y in b] for x in a])
    rows, cols = linear_sum_assignment(m, maximize=True)
    return [(int(r), int(c), float(m[r, c])) for r, c in zip(rows, cols) if m[r, c] > 0]


def _kappa(a: list[Any], b: list[Any], **kw: Any) -> float | None:
    return cohen_kappa(a, b, **kw) if a else None


def _alpha(by_item: dict[str, dict[str, Any]], coders: list[str], level: str) -> float | None:
    units = [[ratings.get(c) for c in coders] for ratings in by_item.values() if len(ratings) >= 2]
    return krippendorff_alpha(units, level=level) if units else None  # type: ignore[arg-type]


def _nominal(pairs: list[tuple[Any, Any]], by_item: dict[str, dict[str, Any]], coders: list[str],
             labels: tuple[Any, ...]) -> dict[str, Any]:
    a, b = [p[0] for p in pairs], [p[1] for p in pairs]
    return {
        "n": len(pairs),
        "observed": sum(x == y for x, y in pairs) / len(pairs) if pairs else None,
        "kappa": _kappa(a, b, labels=labels),
        "alpha": _alpha(by_item, coders, "nominal"),
    }


def box_agreement(pairs: list[tuple[Rating, Rating]]) -> dict[str, Any]:
    ious, n_items, n_empty, matched50, same_cat, n_boxes = [], 0, 0, 0, 0, 0
    for first, second in pairs:
        a, b = [bx for _, bx in first.boxes], [bx for _, bx in second.boxes]
        if not a and not b:
            n_empty += 1
            continue
        n_items += 1
        matches = match_boxes(a, b)
        ious.append(sum(m[2] for m in matches) / max(len(a), len(b)))
        good = [(i, j) for i, j, v in matches if v >= IOU_MATCH]
        matched50 += len(good)
        same_cat += sum(first.boxes[i][0] == second.boxes[j][0] for i, j in good)
        n_boxes += len(a) + len(b)
    return {
        "n_items": n_items,
        "n_items_without_boxes": n_empty,
        "mean_iou": float(np.mean(ious)) if ious else None,
        "f1_at_50": 2 * matched50 / n_boxes if n_boxes else None,
        "n_matched_at_50": matched50,
        "category_agreement": same_cat / matched50 if matched50 else None,
    }


def agreement_report(ratings: Sequence[Rating]) -> dict[str, Any]:
    """Agreement figures over finished annotations (see module docstring)."""
    items: dict[str, list[Rating]] = defaultdict(list)
    for r in ratings:
        items[r.item].append(r)
    multi = {k: sorted(v, key=lambda r: r.rank) for k, v in items.items() if len(v) >= 2}
    coders = sorted({r.annotator for r in ratings})

    def collect(kind: str, attr: str) -> tuple[list[tuple[Any, Any]], dict[str, dict[str, Any]]]:
        pairs, by_item = [], {}
        for key, rs in multi.items():
            rs = [r for r in rs if r.kind == kind and getattr(r, attr) is not None]
            if len(rs) >= 2:
                pairs.append((getattr(rs[0], attr), getattr(rs[1], attr)))
                by_item[key] = {r.annotator: getattr(r, attr) for r in rs}
        return pairs, by_item

    label_pairs, label_items = collect("annotate", "label")
    score_pairs, score_items = collect("pointwise", "score")
    choice_pairs, choice_items = collect("pairwise", "choice")
    sa, sb = [p[0] for p in score_pairs], [p[1] for p in score_pairs]
    scores = {
        "n": len(score_pairs),
        "observed": sum(x == y for x, y in score_pairs) / len(score_pairs) if score_pairs else None,
        "kappa": _kappa(sa, sb, labels=(1, 2, 3, 4, 5)),
        "kappa_quadratic": _kappa(sa, sb, weights="quadratic", labels=(1, 2, 3, 4, 5)),
        "alpha_ordinal": _alpha(score_items, coders, "ordinal"),
        "alpha_interval": _alpha(score_items, coders, "interval"),
    }
    box_pairs = [(rs[0], rs[1]) for rs in multi.values() if rs[0].kind == "annotate" and len(rs) >= 2]
    return {
        "items_multiply_annotated": len(multi),
        "annotators": coders,
        "label": _nominal(label_pairs, label_items, coders, ("real", "fake", "edited")),
        "score": scores,
        "preference": _nominal(choice_pairs, choice_items, coders, ("A", "B")),
        "boxes": box_agreement(box_pairs),
    }
