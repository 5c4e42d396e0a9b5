"""Who annotates what: every item goes to one annotator, a configurable share to two.

Deterministic for a given seed: the double-annotated items are the `round(share · N)` items with
the smallest seeded hash, each item goes to the least-loaded annotators not yet on it (ties
broken by a seeded hash, so work spreads evenly without a pattern), and the A/B order an
annotator sees for a pairwise item is a seeded coin flip, recorded on the assignment. Running it
again only tops up: existing assignments and annotations are never moved or removed, so an
annotator added later receives items that still lack annotators (new items, or second
annotators for double items).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from ..errors import UsageError
from .db import Annotation, Annotator, Dataset, Item


@dataclass(frozen=True)
class AssignReport:
    annotators: int
    items: int
    double_items: int
    new_assignments: int


def seeded_hash(seed: int, *parts: str) -> int:
    text = "\x1f".join([str(seed), *parts])
    return int.from_bytes(hashlib.sha256(text.encode("utf-8")).digest()[:8], "big")


def check_share(share: float) -> float:
    if not 0.0 <= share <= 1.0:
        raise UsageError(f"--double-share {share}: must be a fraction between 0 and 1 (0.2 = one item in five)")
    return share


def assign(session: Session, double_share: float, seed: int) -> AssignReport:
    check_share(double_share)
    annotators = list(session.scalars(select(Annotator).where(Annotator.role == "annotator").order_by(Annotator.id)))
    rows = session.execute(
        select(Item, Dataset.name).join(Dataset, Item.dataset_id == Dataset.id).order_by(Item.dataset_id, Item.position)
    ).all()
    keyed = [(item, f"{name}/{item.sample_id}") for item, name in rows]
    n_double = int(round(double_share * len(keyed)))
    doubles = {key for _, key in sorted(keyed, key=lambda r: seeded_hash(seed, "double", r[1]))[:n_double]}
    load = dict.fromkeys((a.id for a in annotators), 0)
    for annotator_id, n in session.execute(select(Annotation.annotator_id, func.count()).group_by(Annotation.annotator_id)):
        if annotator_id in load:
            load[annotator_id] = n
    current: dict[int, list[int]] = {}
    for item_id, annotator_id in session.execute(select(Annotation.item_id, Annotation.annotator_id)):
        current.setdefault(item_id, []).append(annotator_id)
    added = 0
    for item, key in keyed:
        item.double = key in doubles
        target = min(2 if item.double else 1, len(annotators))
        have = current.setdefault(item.id, [])
        while len(have) < target:
            free = [a for a in annotators if a.id not in have]
            pick = min(free, key=lambda a: (load[a.id], seeded_hash(seed, "pick", key, a.name)))
            swapped = item.kind == "pairwise" and seeded_hash(seed, "swap", key, pick.name) % 2 == 1
            session.add(Annotation(item_id=item.id, annotator_id=pick.id, rank=len(have), swapped=swapped,
                                   artifacts=[]))
            have.append(pick.id)
            load[pick.id] += 1
            added += 1
    session.flush()
    return AssignReport(len(annotators), len(keyed), n_double, added)
