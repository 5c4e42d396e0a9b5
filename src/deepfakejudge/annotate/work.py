"""Reading and saving one annotator's work on one item: validation, version check, views.

`save` is the one write path of the app (the API and the import both use it). It validates the
payload field by field, then applies it with `UPDATE … WHERE version = :seen`: a save based on
an old version changes nothing and raises `Conflict` carrying what is stored now.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from ..data.canonical import InputError, parse_box
from ..records import LABELS
from .db import Annotation, Dataset, Item, utcnow
from .store import User

MAX_ARTIFACTS = 100
MAX_EXPRESSION = 500
MAX_RATIONALE = 10_000
MAX_NOTE = 2_000
CLIENT_STATUSES = ("draft", "done", "skipped", "flagged")
COMMON_FIELDS = ("version", "status", "note")
KIND_FIELDS = {
    "annotate": ("label", "artifacts", "rationale"),
    "pointwise": ("score",),
    "pairwise": ("shown_choice",),
}


class NotFound(LookupError):
    pass


@dataclass
class Conflict(Exception):
    current: dict[str, Any]


def flip(choice: str | None) -> str | None:
    return None if choice is None else {"A": "B", "B": "A"}[choice]


def _text(payload: dict[str, Any], key: str, limit: int) -> str | None:
    value = payload.get(key)
    if value is None:
        return None
    if not isinstance(value, str):
        raise InputError(key, f"must be a string, got {type(value).__name__}")
    if len(value) > limit:
        raise InputError(key, f"is {len(value)} characters long; the limit is {limit}")
    return value


def _artifacts(value: Any, item: Item, categories: tuple[str, ...]) -> list[dict[str, Any]]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise InputError("artifacts", f"must be a list, got {type(value).__name__}")
    if len(value) > MAX_ARTIFACTS:
        raise InputError("artifacts", f"has {len(value)} entries; the limit is {MAX_ARTIFACTS}")
    out = []
    for i, a in enumerate(value):
        key = f"artifacts[{i}]"
        if not isinstance(a, dict) or set(a) - {"category", "bbox", "expression"}:
            raise InputError(key, "must be an object with category, bbox and expression")
        category = a.get("category")
        if category not in categories:
            raise InputError(f"{key}.category", f"{category!r} is not in the taxonomy ({', '.join(categories)})")
        bbox = a.get("bbox")
        if bbox is not None:
            box = parse_box(bbox, f"{key}.bbox")
            if box.x1 > item.width or box.y1 > item.height:
                raise InputError(f"{key}.bbox", f"{box.as_list()} lies outside the {item.width}x{item.height} image")
            bbox = [round(v, 1) for v in box.as_list()]
        expression = _text(a, "expression", MAX_EXPRESSION) or ""
        if len(expression) > MAX_EXPRESSION:
            raise InputError(f"{key}.expression", f"is longer than {MAX_EXPRESSION} characters")
        out.append({"category": category, "bbox": bbox, "expression": expression})
    return out


def validate(payload: Any, item: Item, categories: tuple[str, ...]) -> dict[str, Any]:
    """The column values a payload sets, or InputError naming the field."""
    if not isinstance(payload, dict):
        raise InputError("<body>", "must be a JSON object")
    allowed = COMMON_FIELDS + KIND_FIELDS[item.kind]
    for key in payload:
        if key not in allowed:
            raise InputError(key, f"is not a field of a {item.kind} item (fields: {', '.join(allowed)})")
    version = payload.get("version")
    if isinstance(version, bool) or not isinstance(version, int):
        raise InputError("version", "must be the integer version the edit was based on")
    status = payload.get("status", "draft")
    if status not in CLIENT_STATUSES:
        raise InputError("status", f"{status!r} is not one of {', '.join(CLIENT_STATUSES)}")
    values: dict[str, Any] = {"status": status, "note": _text(payload, "note", MAX_NOTE)}
    if item.kind == "annotate":
        label = payload.get("label")
        if label is not None and label not in LABELS:
            raise InputError("label", f"{label!r} is not one of {', '.join(LABELS)}")
        values.update(label=label, rationale=_text(payload, "rationale", MAX_RATIONALE),
                      artifacts=_artifacts(payload.get("artifacts"), item, categories))
        if status == "done" and label is None:
            raise InputError("label", "is required to mark the item done: choose real, fake or edited")
    elif item.kind == "pointwise":
        score = payload.get("score")
        if score is not None and (isinstance(score, bool) or score not in (1, 2, 3, 4, 5)):
            raise InputError("score", f"must be an integer 1..5 or null, got {score!r}")
        values["score"] = score
        if status == "done" and score is None:
            raise InputError("score", "is required to mark the item done: choose 1..5")
    else:
        shown = payload.get("shown_choice")
        if shown not in (None, "A", "B"):
            raise InputError("shown_choice", f"must be \"A\" (left), \"B\" (right) or null, got {shown!r}")
        values["shown_choice"] = shown
        if status == "done" and shown is None:
            raise InputError("shown_choice", "is required to mark the item done: choose A or B")
    return values


def annotation_state(a: Annotation, annotator: str | None = None) -> dict[str, Any]:
    state = {
        "version": a.version,
        "status": a.status,
        "label": a.label,
        "artifacts": a.artifacts or [],
        "rationale": a.rationale,
        "score": a.score,
        "shown_choice": flip(a.choice) if a.swapped else a.choice,
        "note": a.note,
        "updated_at": a.updated_at.isoformat() if a.updated_at else None,
    }
    if annotator is not None:
        state.update(annotator=annotator, choice=a.choice, swapped=a.swapped, rank=a.rank)
    return state


def load_assignment(session: Session, user: User, item_id: int) -> tuple[Item, str, Annotation]:
    """The item, its dataset's name and the user's annotation of it; NotFound when the item
    does not exist or is not assigned to the user (an annotator learns nothing of other items)."""
    row = session.execute(
        select(Item, Dataset.name, Annotation)
        .join(Dataset, Item.dataset_id == Dataset.id)
        .join(Annotation, Annotation.item_id == Item.id)
        .where(Item.id == item_id, Annotation.annotator_id == user.id)
    ).first()
    if row is None:
        raise NotFound(item_id)
    return row[0], row[1], row[2]


def save(session: Session, user: User, item_id: int, payload: Any, categories: tuple[str, ...]) -> dict[str, Any]:
    item, _, annotation = load_assignment(session, user, item_id)
    values = validate(payload, item, categories)
    shown = values.pop("shown_choice", None)
    if item.kind == "pairwise":
        values["choice"] = flip(shown) if annotation.swapped else shown
    seen = payload["version"]
    result = session.execute(
        update(Annotation)
        .where(Annotation.id == annotation.id, Annotation.version == seen)
        .values(**values, version=Annotation.version + 1, updated_at=utcnow())
        .execution_options(synchronize_session=False)
    )
    session.expire(annotation)
    if result.rowcount != 1:
        raise Conflict(annotation_state(annotation))
    return annotation_state(annotation)


def item_view(item: Item, dataset: str, annotation: Annotation | None) -> dict[str, Any]:
    """What the item page shows. Annotate items show no prior labels (the annotator starts
    fresh); rate items show the true class, the boxes of the record and the response(s), a
    pairwise item in the positions this annotator was given."""
    row = item.row
    view: dict[str, Any] = {
        "id": item.id, "dataset": dataset, "sample_id": item.sample_id, "kind": item.kind,
        "image_url": f"/img/{item.id}", "width": item.width, "height": item.height,
    }
    if item.kind != "annotate":
        view.update(label=row.get("label"), boxes=row.get("artifacts") or [], rationale=row.get("rationale"))
    if item.kind == "pointwise":
        view["response"] = row.get("response")
    if item.kind == "pairwise":
        pair = [row.get("response_a"), row.get("response_b")]
        view["responses"] = pair[::-1] if annotation is not None and annotation.swapped else pair
    return view
