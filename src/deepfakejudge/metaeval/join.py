"""Join a judge's results file to gold rows by id, reporting everything that does not line up.

Problems are listed with file and line: malformed or id-less result lines, duplicate ids (the
first row counts), judge error rows, predictions without a gold row, gold rows without a
prediction or without a gold value, and prediction values of the wrong type. Unparsable
predictions (score / choice null) are not problems: they are part of the judge's quality and are
counted in every figure.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..data import load_records
from ..data.jsonl import read_jsonl
from ..errors import InputError
from ..prompts import Template
from ..records import Sample


@dataclass(frozen=True)
class Prediction:
    id: str
    row: dict[str, Any]
    where: str


@dataclass(frozen=True)
class Joined:
    """Gold samples with their prediction, in gold order, and the problems met on the way."""

    items: tuple[tuple[Sample, Prediction], ...]
    problems: tuple[str, ...]
    counts: dict[str, int]


def read_predictions(path: str | Path) -> tuple[dict[str, Prediction], list[str], dict[str, int]]:
    """Rows of a results JSONL by id (first occurrence), the problems, and counts per problem kind.
    Never modifies the file."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"--pred {path}: no such file")
    preds: dict[str, Prediction] = {}
    problems: list[str] = []
    counts = {"malformed": 0, "duplicates": 0, "errors": 0}
    for line in read_jsonl(path):
        if line.error is not None:
            problems.append(f"{line.where}: malformed line ({line.error.message})")
            counts["malformed"] += 1
            continue
        row, where = line.obj, line.where
        if "error" in row:
            counts["errors"] += 1
            problems.append(f"{where}: id {row.get('id')!r}: the judge failed on this row ({row['error']})"
                            + (f" [input {row['where']}]" if row.get("where") else ""))
            if row.get("id") is not None:
                preds.setdefault(str(row["id"]), Prediction(str(row["id"]), row, where))
            continue
        if row.get("id") is None:
            problems.append(f"{where}: row has no id; it cannot be joined")
            counts["malformed"] += 1
            continue
        key = str(row["id"])
        if key in preds:
            problems.append(f"{where}: duplicate id {key!r} (first at {preds[key].where}); the first row counts")
            counts["duplicates"] += 1
            continue
        preds[key] = Prediction(key, row, where)
    return preds, problems, counts


def join(pred_path: str | Path, gold_path: str | Path, kind: str, templates: tuple[Template, ...] = ()) -> Joined:
    preds, problems, counts = read_predictions(pred_path)
    gold = load_records(gold_path, templates=templates)
    problems += [f"gold {e}" for e in gold.errors]
    counts["gold_unreadable"] = len(gold.errors)
    gold_field = "score" if kind == "pointwise" else "preferred"
    items: list[tuple[Sample, Prediction]] = []
    seen: set[str] = set()
    counts.update(missing_prediction=0, no_gold_value=0, no_gold_row=0)
    for sample in gold.samples:
        seen.add(sample.id)
        if getattr(sample, gold_field) is None:
            problems.append(f"{sample.where}: gold row {sample.id!r} has no {gold_field}; left out")
            counts["no_gold_value"] += 1
            continue
        pred = preds.get(sample.id)
        if pred is None:
            problems.append(f"{sample.where}: gold row {sample.id!r} has no prediction in {pred_path}")
            counts["missing_prediction"] += 1
            continue
        if "error" in pred.row:
            continue  # reported when read
        items.append((sample, pred))
    for key, pred in preds.items():
        if key not in seen:
            problems.append(f"{pred.where}: prediction {key!r} has no gold row in {gold.path}")
            counts["no_gold_row"] += 1
    counts.update(gold_rows=len(gold.samples), predictions=len(preds), joined=len(items))
    return Joined(tuple(items), tuple(problems), counts)


def score_value(row: dict[str, Any], key: str, where: str, problems: list[str], integral: bool) -> float | None:
    """A 1..5 prediction from `row[key]`; null stays None (unparsable); a value of the wrong type is
    reported and treated as unparsable."""
    value = row.get(key)
    if value is None:
        return None
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and 1 <= value <= 5
    if ok and integral:
        ok = float(value).is_integer()
    if not ok:
        problems.append(f"{where}: {key} = {value!r} is not a {'score 1..5' if integral else 'number in [1, 5]'}; "
                        "counted as unparsable")
        return None
    return float(value)


def choice_value(row: dict[str, Any], key: str, where: str, problems: list[str]) -> str | None:
    value = row.get(key)
    if value is None:
        return None
    if value not in ("A", "B"):
        problems.append(f"{where}: {key} = {value!r} is not 'A' or 'B'; counted as unparsable")
        return None
    return value
