"""Review: judge and detector results files (`dfj judge` / `dfj detect`) beside the items.

Results files are read at request time (a run still writing is shown as far as it got; a torn
last line is ignored, the file is never modified). Each results row is matched by id to a loaded
item and compared with the human annotations and the record's gold fields; disagreements become
flags that the review page filters on.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from ..errors import UsageError
from .db import Annotation, Annotator, Dataset, Item

RESULT_FIELDS = ("error", "where", "field", "score", "expected_score", "probs", "choice_mass", "reasoning", "raw",
                 "choice", "p_a", "agree", "prediction", "p_fake")
FILTERS = ("all", "disagree", "judge-human", "judge-gold", "orders", "wrong", "unparsable", "error")
PAGE_SIZE = 20


@dataclass(frozen=True)
class ResultsFile:
    path: Path
    kind: str  # pointwise | pairwise | detect | unknown
    rows: tuple[dict[str, Any], ...]
    skipped_lines: int


def read_results(path: str | Path) -> ResultsFile:
    path = Path(path)
    rows, skipped = [], 0
    with path.open("rb") as fh:
        for raw in fh:
            if not raw.endswith(b"\n"):
                skipped += 1  # still being written
                break
            try:
                row = json.loads(raw)
            except (json.JSONDecodeError, UnicodeDecodeError):
                skipped += 1
                continue
            if isinstance(row, dict):
                rows.append(row)
    return ResultsFile(path, results_kind(rows), tuple(rows), skipped)


def results_kind(rows: list[dict[str, Any]]) -> str:
    for row in rows:
        if "choice" in row or "orders" in row:
            return "pairwise"
        if "prediction" in row or "p_fake" in row:
            return "detect"
        if "score" in row or "probs" in row:
            return "pointwise"
    return "unknown"


def _majority(values: list[Any]) -> Any:
    if not values:
        return None
    (top, n), *rest = Counter(values).most_common() + [(None, 0)]
    return None if rest and rest[0][1] == n else top


def _human(session: Session) -> dict[int, list[tuple[Annotation, str]]]:
    out: dict[int, list[tuple[Annotation, str]]] = {}
    q = (select(Annotation, Annotator.name).join(Annotator, Annotation.annotator_id == Annotator.id)
         .where(Annotation.status == "done").order_by(Annotation.rank))
    for a, name in session.execute(q):
        out.setdefault(a.item_id, []).append((a, name))
    return out


def _flags(kind: str, result: dict[str, Any], row: dict[str, Any], human: dict[str, Any], min_gap: float) -> list[str]:
    flags = []
    if result.get("error") is not None:
        return ["error"]
    if kind == "pointwise":
        judge = result.get("score")
        if judge is None:
            flags.append("unparsable")
        else:
            if human.get("mean_score") is not None and abs(judge - human["mean_score"]) >= min_gap:
                flags.append("judge-human")
            if row.get("score") is not None and abs(judge - row["score"]) >= min_gap:
                flags.append("judge-gold")
    elif kind == "pairwise":
        choice = result.get("choice")
        if choice is None:
            flags.append("unparsable")
        else:
            if human.get("preferred") is not None and choice != human["preferred"]:
                flags.append("judge-human")
            if row.get("preferred") is not None and choice != row["preferred"]:
                flags.append("judge-gold")
        if result.get("agree") is False:
            flags.append("orders")
    elif kind == "detect":
        pred = result.get("prediction")
        truth = "real" if row.get("label") == "real" else "fake"
        if pred is None:
            flags.append("unparsable")
        else:
            if pred != truth:
                flags.append("wrong")
            label = human.get("label")
            if label is not None and pred != ("real" if label == "real" else "fake"):
                flags.append("judge-human")
    return flags


def review_entries(session: Session, results: ResultsFile, filter: str = "all", min_gap: float = 1.0) -> list[dict[str, Any]]:
    if filter not in FILTERS:
        raise UsageError(f"filter {filter!r}: expected one of {', '.join(FILTERS)}")
    want = {"pointwise": "pointwise", "pairwise": "pairwise", "detect": "annotate"}.get(results.kind)
    by_id: dict[str, list[tuple[Item, str]]] = {}
    for item, ds in session.execute(select(Item, Dataset.name).join(Dataset, Item.dataset_id == Dataset.id)):
        by_id.setdefault(item.sample_id, []).append((item, ds))
    done = _human(session)
    entries = []
    for raw_result in results.rows:
        result = {**dict.fromkeys(RESULT_FIELDS), "orders": [], **raw_result}
        sid = result.get("id")
        candidates = by_id.get(str(sid), []) if sid is not None else []
        match = next((c for c in candidates if c[0].kind == want), candidates[0] if candidates else None)
        item, ds = match if match else (None, None)
        row = item.row if item is not None else {}
        finished = done.get(item.id, []) if item is not None else []
        scores = [a.score for a, _ in finished if a.score is not None]
        human = {
            "annotators": [n for _, n in finished],
            "scores": scores,
            "mean_score": sum(scores) / len(scores) if scores else None,
            "preferred": _majority([a.choice for a, _ in finished if a.choice]),
            "choices": [a.choice for a, _ in finished if a.choice],
            "label": _majority([a.label for a, _ in finished if a.label]),
        }
        human_boxes = next((a.artifacts for a, _ in finished if a.artifacts), None)
        flags = _flags(results.kind, result, row, human, min_gap)
        if filter == "disagree" and not flags or filter not in ("all", "disagree") and filter not in flags:
            continue
        probs = result.get("probs")
        entries.append({
            "id": sid, "where": result.get("where"), "item": item.id if item else None, "dataset": ds,
            "image_url": f"/img/{item.id}" if item else None,
            "width": item.width if item else None, "height": item.height if item else None,
            "label": row.get("label"), "gold_score": row.get("score"), "gold_preferred": row.get("preferred"),
            "response": row.get("response"), "response_a": row.get("response_a"), "response_b": row.get("response_b"),
            "boxes": human_boxes if human_boxes is not None else row.get("artifacts") or [],
            "boxes_from": "human" if human_boxes is not None else "record",
            "result": result, "human": human, "flags": flags,
            "probs": [(k, float(probs[k])) for k in sorted(probs)] if isinstance(probs, dict) else None,
        })
    return entries
