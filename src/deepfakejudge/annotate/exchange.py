"""Export finished work to canonical JSONL, import records to continue, gather ratings.

An export is read inside one transaction (a snapshot: SQLite WAL read transaction, PostgreSQL
REPEATABLE READ), so a file taken while people work is consistent. Each exported row is the
item's canonical row with the human annotation written into the canonical fields (`label`,
`artifacts`, `rationale` for annotated images; `score` for rated explanations; `preferred`, in
the dataset's A/B positions, for pairs). A value it replaces is kept under `original`; who
annotated it, with which status and version, is under `annotation`. Unknown fields pass through,
so `dfj data validate`, `dfj reason`, `dfj meta-eval` and `dfj train` read the file directly.

Rated and compared rows also carry every finished rating, `human_scores` / `human_preferences`
= {annotator: rating} in `annotation.annotators` order (assignment order), the form `dfj
meta-eval` reads for inter-annotator agreement. Source fields that encode a judgement other than
the human's (a pair's `score_a`/`score_b` levels, a `target` answer) move under `original` too,
so no top-level field contradicts `score` / `preferred`.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from ..data.canonical import InputError, sample_from_dict
from ..errors import UsageError
from ..parsing import parse_choice, parse_score
from .agreement import Rating
from .db import Annotation, Annotator, Dataset, Item, utcnow
from .work import validate

DONE = "done"


@dataclass(frozen=True)
class ExportReport:
    dataset: str
    rows: int
    items: int
    not_done: int


@dataclass(frozen=True)
class ImportReport:
    imported: int
    problems: tuple[str, ...]


def _done_annotations(session: Session) -> dict[int, list[tuple[Annotation, str]]]:
    out: dict[int, list[tuple[Annotation, str]]] = {}
    q = (select(Annotation, Annotator.name).join(Annotator, Annotation.annotator_id == Annotator.id)
         .where(Annotation.status == DONE).order_by(Annotation.item_id, Annotation.rank))
    for annotation, name in session.execute(q):
        out.setdefault(annotation.item_id, []).append((annotation, name))
    return out


def _number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def _contradicting(row: dict[str, Any], kind: str, human: dict[str, Any]) -> list[str]:
    """Source fields that imply a judgement other than the human's: the generator's intended
    levels of a pair (the higher one is the source's preferred; equal levels prefer neither)
    and a training `target` (`dfj train` refuses a target that disagrees with `score`/`preferred`)."""
    out = []
    if kind == "pointwise":
        if isinstance(row.get("target"), str) and parse_score(row["target"]) not in (None, human["score"]):
            out.append("target")
    elif kind == "pairwise":
        a, b = row.get("score_a"), row.get("score_b")
        if _number(a) and _number(b) and ("A" if a > b else "B" if b > a else None) != human["preferred"]:
            out += ["score_a", "score_b"]
        if isinstance(row.get("target"), str) and parse_choice(row["target"]) not in (None, human["preferred"]):
            out.append("target")
    return out


def export_rows(session: Session, dataset: str, out_dir: Path | None = None,
                annotator: str | None = None) -> tuple[list[dict[str, Any]], ExportReport]:
    """Rows of `dataset` with a finished annotation: the first annotator's (by assignment
    order), or `annotator`'s. Image paths are relative to `out_dir` (default: the data folder)."""
    ds = session.scalar(select(Dataset).where(Dataset.name == dataset))
    if ds is None:
        names = ", ".join(session.scalars(select(Dataset.name)))
        raise UsageError(f"dataset {dataset!r}: not loaded (loaded: {names or 'none'})")
    root = Path(ds.path).parent
    done = _done_annotations(session)
    rows, n_items = [], 0
    for item in session.scalars(select(Item).where(Item.dataset_id == ds.id).order_by(Item.position)):
        n_items += 1
        finished = done.get(item.id, [])
        chosen = next((p for p in finished if annotator is None or p[1] == annotator), None)
        if chosen is None:
            continue
        a, name = chosen
        row = dict(item.row)
        if out_dir is not None:
            row["image"] = Path(os.path.relpath(root / item.image, out_dir)).as_posix()
        if item.kind == "annotate":
            human = {"label": a.label, "artifacts": a.artifacts or [], "rationale": a.rationale or None}
        elif item.kind == "pointwise":
            human = {"score": a.score, "human_scores": {n: x.score for x, n in finished}}
        else:
            human = {"preferred": a.choice, "human_preferences": {n: x.choice for x, n in finished}}
        original = {k: row[k] for k, v in human.items() if row.get(k) not in (None, v)}
        for k in _contradicting(row, item.kind, human):
            original[k] = row.pop(k)
        row.pop("original", None)
        for k, v in human.items():  # the human's fields replace the record's, an empty one too
            if v is None:
                row.pop(k, None)
            else:
                row[k] = v
        if original:
            row["original"] = original
        info = {"annotator": name, "status": a.status, "version": a.version,
                "updated_at": a.updated_at.isoformat() if a.updated_at else None,
                "annotators": [n for _, n in finished]}
        if item.kind == "pairwise":
            info["position_swapped"] = a.swapped
        if a.note:
            info["note"] = a.note
        row["annotation"] = info
        rows.append(row)
    return rows, ExportReport(dataset, len(rows), n_items, n_items - len(rows))


def write_jsonl(rows: Iterable[dict[str, Any]], path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w", encoding="utf-8") as fh:
        for row in rows:
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")
    tmp.replace(path)


def collect_ratings(session: Session) -> list[Rating]:
    q = (select(Annotation, Annotator.name, Item.kind, Item.dataset_id, Item.sample_id)
         .join(Annotator, Annotation.annotator_id == Annotator.id).join(Item, Annotation.item_id == Item.id)
         .where(Annotation.status == DONE))
    out = []
    for a, name, kind, ds, sid in session.execute(q):
        boxes = tuple((x["category"], tuple(x["bbox"])) for x in a.artifacts or [] if x.get("bbox"))
        out.append(Rating(item=f"{ds}/{sid}", kind=kind, annotator=name, rank=a.rank, label=a.label,
                          score=a.score, choice=a.choice, boxes=boxes))
    return out


def import_rows(session: Session, lines: Iterable[bytes | str], categories: tuple[str, ...],
                annotator: str | None = None, dataset: str | None = None, overwrite: bool = False) -> ImportReport:
    """Write records (canonical rows, e.g. an earlier export) as annotations so that work goes on.

    A row's annotator is `annotator`, else its `annotation.annotator`. Rows are matched by id to
    the items of `dataset` (or of any loaded dataset when the id is unique). An annotation that
    already holds work is not overwritten unless `overwrite`. Problems are returned, one per
    row, naming the line and the field; the valid rows are imported all the same."""
    names = {a.name: a for a in session.scalars(select(Annotator))}
    items: dict[str, list[Item]] = {}
    q = select(Item, Dataset.name).join(Dataset, Item.dataset_id == Dataset.id)
    for item, ds_name in session.execute(q):
        if dataset is None or ds_name == dataset:
            items.setdefault(item.sample_id, []).append(item)
    problems, imported = [], 0
    for lineno, raw in enumerate(lines, start=1):
        where = f"line {lineno}"
        if not raw.strip():
            continue
        try:
            obj = json.loads(raw)
            sample = sample_from_dict(obj, Path("."), where)
        except json.JSONDecodeError as exc:
            problems.append(f"{where}: malformed JSON ({exc.msg})")
            continue
        except InputError as exc:
            problems.append(f"{where}: field '{exc.field}': {exc.message}")
            continue
        who = annotator or (obj.get("annotation") or {}).get("annotator")
        if who not in names:
            problems.append(f"{where}: field 'annotation.annotator': {who!r} is not an annotator; "
                            "create it first (--annotator NAME) or import with --import-as NAME")
            continue
        matches = items.get(sample.id, [])
        if len(matches) != 1:
            problems.append(f"{where}: field 'id': {sample.id!r} matches {len(matches)} loaded items; "
                            "load the dataset it belongs to (--data) or name it (dataset=)")
            continue
        item = matches[0]
        a = session.scalar(select(Annotation).where(Annotation.item_id == item.id,
                                                    Annotation.annotator_id == names[who].id))
        if a is not None and a.status != "todo" and not overwrite:
            problems.append(f"{where}: id {sample.id!r}: {who} already has work on it (version {a.version}); not overwritten")
            continue
        if item.kind == "annotate":
            payload: dict[str, Any] = {"label": sample.label, "rationale": sample.rationale, "artifacts": [
                {"category": x.category, "bbox": None if x.bbox is None else x.bbox.as_list(), "expression": x.expression}
                for x in sample.artifacts]}
        elif item.kind == "pointwise":
            payload = {"score": sample.score}
        else:
            payload = {"shown_choice": sample.preferred}  # canonical positions: stored unswapped below
        status = (obj.get("annotation") or {}).get("status")
        if status not in ("draft", "done", "skipped", "flagged"):
            status = "done" if all(v is not None for k, v in payload.items() if k != "rationale") else "draft"
        try:
            values = validate({"version": 0, "status": status, **payload}, item, categories)
        except InputError as exc:
            problems.append(f"{where}: field '{exc.field}': {exc.message}")
            continue
        if item.kind == "pairwise":
            values["choice"] = values.pop("shown_choice")
        if a is None:
            rank = len(session.scalars(select(Annotation.id).where(Annotation.item_id == item.id)).all())
            a = Annotation(item_id=item.id, annotator_id=names[who].id, rank=rank, swapped=False, artifacts=[], version=0)
            session.add(a)
        for k, v in values.items():
            setattr(a, k, v)
        a.version = (a.version or 0) + 1
        a.updated_at = utcnow()
        session.flush()
        imported += 1
    return ImportReport(imported, tuple(problems))
