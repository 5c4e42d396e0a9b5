"""Datasets into the database, annotators and their tokens, settings.

A dataset is read with the project's canonical reader; each valid row becomes an item (or
updates the item of the same id, keeping its annotations). A row whose image lies outside the
data file's folder or cannot be opened is reported and left out: the app never serves a file
from outside the data folder.
"""

from __future__ import annotations

import hashlib
import re
import secrets
from dataclasses import dataclass
from pathlib import Path

from PIL import Image
from sqlalchemy import select
from sqlalchemy.orm import Session

from ..data import load_records, resolve_data_path, sample_to_dict
from ..data.images import MAX_IMAGE_PIXELS
from ..data.urls import is_url
from ..errors import UsageError
from ..records import Sample
from .db import ROLES, Annotator, Dataset, Item, Setting

NAME_RE = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")


@dataclass(frozen=True)
class User:
    id: int
    name: str
    role: str

    @property
    def is_admin(self) -> bool:
        return self.role == "admin"


@dataclass(frozen=True)
class LoadReport:
    dataset: str
    path: str
    added: int
    updated: int
    problems: tuple[str, ...]


def item_kind(sample: Sample) -> str:
    if sample.response_a is not None and sample.response_b is not None:
        return "pairwise"
    if sample.response is not None:
        return "pointwise"
    return "annotate"


def dataset_name(path: Path) -> str:
    return path.parent.name if path.name == "data.jsonl" else path.stem


def load_dataset(session: Session, data: str | Path) -> LoadReport:
    path = resolve_data_path(data).resolve()
    root = path.parent
    name = dataset_name(path)
    dataset = session.scalar(select(Dataset).where(Dataset.name == name))
    if dataset is None:
        dataset = Dataset(name=name, path=str(path))
        session.add(dataset)
        session.flush()
    dataset.path = str(path)  # a moved data folder keeps its annotations
    loaded = load_records(path)
    problems = [str(e) for e in loaded.errors]
    existing = {i.sample_id: i for i in session.scalars(select(Item).where(Item.dataset_id == dataset.id))}
    next_position = max((i.position for i in existing.values()), default=-1) + 1
    added = updated = 0
    for sample in loaded.samples:
        if is_url(sample.image):
            problems.append(f"{sample.where}: field 'image': {sample.image} is a URL; the app serves images from "
                            "the data folder only: download the image into it and name it by its path")
            continue
        image = sample.image.resolve()
        if not image.is_relative_to(root):
            problems.append(f"{sample.where}: field 'image': {image} lies outside the data folder {root}; "
                            "the app serves images from the data folder only: move the image there")
            continue
        try:
            with Image.open(image) as img:
                width, height = img.size
        except (OSError, SyntaxError, ValueError) as exc:
            problems.append(f"{sample.where}: field 'image': cannot open {image} ({exc})")
            continue
        if width * height > MAX_IMAGE_PIXELS:
            problems.append(f"{sample.where}: field 'image': {width}x{height} exceeds {MAX_IMAGE_PIXELS} pixels")
            continue
        row = sample_to_dict(sample, root)
        item = existing.get(sample.id)
        if item is None:
            session.add(Item(dataset_id=dataset.id, sample_id=sample.id, position=next_position,
                             kind=item_kind(sample), image=row["image"], width=width, height=height,
                             double=False, row=row))
            next_position += 1
            added += 1
        elif item.row != row or item.kind != item_kind(sample):
            item.row, item.kind, item.image = row, item_kind(sample), row["image"]
            item.width, item.height = width, height
            updated += 1
    return LoadReport(name, str(path), added, updated, tuple(problems))


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def check_name(name: str) -> str:
    if not NAME_RE.match(name or ""):
        raise UsageError(f"annotator name {name!r}: use 1-64 letters, digits, '.', '_' or '-'")
    return name


def add_annotator(session: Session, name: str, role: str = "annotator") -> str | None:
    """Create `name` and return its new login token; None when it exists already (its token
    is kept: tokens are stored hashed and cannot be shown again, see `new_token`)."""
    check_name(name)
    if role not in ROLES:
        raise UsageError(f"role {role!r}: expected one of {', '.join(ROLES)}")
    if session.scalar(select(Annotator).where(Annotator.name == name)) is not None:
        return None
    token = secrets.token_urlsafe(24)
    session.add(Annotator(name=name, role=role, token_hash=hash_token(token)))
    session.flush()
    return token


def new_token(session: Session, name: str) -> str:
    annotator = session.scalar(select(Annotator).where(Annotator.name == name))
    if annotator is None:
        raise UsageError(f"--new-token {name}: no such annotator; create it with --annotator {name}")
    token = secrets.token_urlsafe(24)
    annotator.token_hash = hash_token(token)
    return token


def user_for_token(session: Session, token: str | None) -> User | None:
    if not token or len(token) > 200:
        return None
    a = session.scalar(select(Annotator).where(Annotator.token_hash == hash_token(token)))
    return None if a is None else User(a.id, a.name, a.role)


def get_setting(session: Session, key: str, default: str) -> str:
    row = session.get(Setting, key)
    return default if row is None else row.value


def set_setting(session: Session, key: str, value: str) -> None:
    row = session.get(Setting, key)
    if row is None:
        session.add(Setting(key=key, value=value))
    else:
        row.value = value
