"""Prediction files of any detector, and the gold labels they are scored against.

A prediction file is JSONL, one row per image: `id` and `prediction` ("real", "fake", "edited"
read as fake, or null for an unparsable answer), optionally `p_fake` (probability of fake, in
[0, 1]) and `response` (the detector's text; when `prediction` is absent it is parsed from it).
`dfj detect run` writes exactly this; a classic CNN detector or a SIDA-style model's output only
needs `id` + `prediction`. Rows with `error` (an image the run could not process) mean "no
prediction for this id".

Reading never stops at a bad row: malformed lines, missing or duplicate ids, predictions outside
the vocabulary, probabilities outside [0, 1] each become a `RowError` naming the file, the line
and the field, and every valid row is kept.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..data import load_records
from ..data.jsonl import read_jsonl
from ..errors import InputError, UsageError
from ..parsing import parse_prediction
from ..records import LABELS, RowError, Sample
from ..results import summary_path

_PREDICTION_VALUES = {"real": "real", "fake": "fake", "edited": "fake"}


@dataclass(frozen=True)
class Prediction:
    """One usable prediction row. `label`/`source` are gold fields the row itself carries (files
    of other detectors may); they are used only when no gold data file is given."""

    id: str
    prediction: str | None
    p_fake: float | None
    response: str | None
    where: str
    label: str | None = None
    source: str | None = None


@dataclass(frozen=True)
class PredictionFile:
    path: Path
    rows: tuple[Prediction, ...]
    problems: tuple[RowError, ...]
    run_errors: tuple[RowError, ...]  # ids the run recorded as failed: no prediction for them
    data: Path | None  # the gold data named by the run summary beside the file, if any

    def by_id(self) -> dict[str, Prediction]:
        return {r.id: r for r in self.rows}


@dataclass(frozen=True)
class Gold:
    """Gold records by id, where they came from, and rows of the gold file that were unusable."""

    path: Path | None
    samples: dict[str, Sample]
    problems: tuple[RowError, ...] = ()

    @property
    def name(self) -> str:
        return str(self.path) if self.path else "labels in the prediction rows"


def _row_id(obj: dict[str, Any]) -> str:
    value = obj.get("id")
    if isinstance(value, bool) or not isinstance(value, (str, int)) or str(value).strip() == "":
        raise _Bad("id", f"must be a non-empty string or integer, got {value!r}")
    return str(value)


class _Bad(Exception):
    def __init__(self, field: str, message: str):
        super().__init__(message)
        self.field, self.message = field, message


def _prediction(obj: dict[str, Any]) -> str | None:
    if "prediction" not in obj:
        if isinstance(obj.get("response"), str):
            return parse_prediction(obj["response"])
        raise _Bad("prediction", "missing: give `prediction` (real, fake or null) or a `response` to parse")
    value = obj["prediction"]
    if value is None:
        return None
    if isinstance(value, str) and value.strip().lower() in _PREDICTION_VALUES:
        return _PREDICTION_VALUES[value.strip().lower()]
    raise _Bad(
        "prediction",
        f"{value!r} is not a label; use 'real', 'fake' ('edited' counts as fake) or null for an unparsable answer",
    )


def _p_fake(value: Any) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise _Bad("p_fake", f"{value!r} is not a probability; the row is scored without one")
    if not 0.0 <= value <= 1.0:
        raise _Bad("p_fake", f"{value!r} is outside [0, 1]; the row is scored without a probability")
    return float(value)


def _text(obj: dict[str, Any], key: str) -> str | None:
    value = obj.get(key)
    if value is not None and not isinstance(value, str):
        raise _Bad(key, f"must be a string, got {type(value).__name__}")
    return value


def read_predictions(path: str | Path) -> PredictionFile:
    path = Path(path)
    if not path.is_file():
        raise InputError(f"--pred {path}: no such file")
    rows: list[Prediction] = []
    problems: list[RowError] = []
    run_errors: list[RowError] = []
    first: dict[str, int] = {}
    for line in read_jsonl(path):
        if line.error is not None:
            problems.append(line.error)
            continue
        obj, where = line.obj, line.where
        if "error" in obj:
            run_errors.append(
                RowError(where, str(obj.get("field", "?")), str(obj["error"]), id=obj.get("id"))
            )
            continue
        try:
            row_id = _row_id(obj)
        except _Bad as bad:
            problems.append(RowError(where, bad.field, bad.message))
            continue
        if row_id in first:
            problems.append(RowError(where, "id", f"duplicate id {row_id!r} (first on line {first[row_id]}); the first row is used", id=row_id))
            continue
        first[row_id] = line.lineno
        try:
            prediction = _prediction(obj)
            response = _text(obj, "response")
            label, source = _text(obj, "label"), _text(obj, "source")
        except _Bad as bad:
            problems.append(RowError(where, bad.field, bad.message, id=row_id))
            continue
        try:
            p_fake = _p_fake(obj.get("p_fake"))
        except _Bad as bad:  # the label is still valid: keep the row, drop the probability
            problems.append(RowError(where, bad.field, bad.message, id=row_id))
            p_fake = None
        rows.append(Prediction(row_id, prediction, p_fake, response, where, label, source))
    return PredictionFile(path, tuple(rows), tuple(problems), tuple(run_errors), _summary_data(path))


def _summary_data(path: Path) -> Path | None:
    summary = summary_path(path)
    try:
        data = json.loads(summary.read_text(encoding="utf-8")).get("data")
    except (OSError, ValueError, AttributeError):
        return None
    return Path(data) if isinstance(data, str) and Path(data).is_file() else None


def load_gold(path: str | Path) -> Gold:
    dataset = load_records(path)
    return Gold(dataset.path, {s.id: s for s in dataset.samples}, dataset.errors)


def gold_from_rows(pred: PredictionFile) -> Gold:
    """Gold labels carried by the prediction rows themselves (`label`, optional `source`)."""
    samples: dict[str, Sample] = {}
    problems: list[RowError] = []
    for row in pred.rows:
        label = (row.label or "").strip().lower()
        if label not in LABELS:
            problems.append(
                RowError(row.where, "label", f"{row.label!r} is not one of {', '.join(LABELS)}; pass --data with the gold set", id=row.id)
            )
            continue
        samples[row.id] = Sample(id=row.id, image=Path(), label=label, source=row.source, where=row.where)  # type: ignore[arg-type]
    return Gold(None, samples, tuple(problems))


def resolve_gold(pred: PredictionFile, data: str | Path | None) -> Gold:
    """Gold for `pred`: `--data` if given, else the data file named in the run's summary, else
    labels carried by the rows. Raises ValueError naming the fix when there is none."""
    if data is not None:
        return load_gold(data)
    if pred.data is not None:
        return load_gold(pred.data)
    if pred.rows and all(r.label is not None for r in pred.rows):
        return gold_from_rows(pred)
    raise UsageError(
        f"--data: {pred.path} has no gold labels (no run summary naming the data, no `label` in "
        "every row); pass --data with the gold set"
    )
