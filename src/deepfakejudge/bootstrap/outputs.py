r"""Turn finished units into training data: pointwise and pairwise records, split by image.

Written into the run folder, rebuilt from the state on every run (so they always match the
journal):

    pointwise-train.jsonl  pointwise-test.jsonl   canonical rows: image, label, source, artifacts,
                                                  rationale (gold), response, score (intended level),
                                                  target (the judge answer to learn), image_id,
                                                  variant, evaluator_score, rounds, split
    pairwise-train.jsonl   pairwise-test.jsonl    canonical rows: response_a, response_b, preferred,
                                                  score_a, score_b, image_id, split
    msswift/{pointwise,pairwise}-{train,test}.jsonl   the same rows as ms-swift conversations
                                                  (the project's judge templates), for `dfj train`
                                                  or ms-swift itself
    rejected.jsonl                                units that never aligned, with the reason

A pointwise record's `target` is `<reasoning>feedback</reasoning>\n<score>k</score>`: the
evaluator's justification of the accepted explanation, or, where it gave none (score-only mode),
the level's description. Variant 0 is the accepted explanation, 1..P its kept paraphrases.

Pairs join two records of the same image at different levels. Per image, as many pairs as
pointwise records by default (the paper's 1:1), drawn round-robin over the level pairs so that
all of them occur; the better response is A in every other pair of a level pair (and in half of
an image's pairs, to one), from a seeded start. The split assigns each image wholly to train or
test by a seeded hash of its id: stable when images are added, no image in both.

The test split is laid out like the released DFJ-Meta test set by default (`TEST_LAYOUTS`,
"released"): per image one pointwise record per level (the accepted explanation, no paraphrase)
and all ten level pairs of those; "like-train" builds it as the train split.
"""

from __future__ import annotations

import hashlib
import json
import random
from dataclasses import dataclass
from functools import lru_cache
from itertools import combinations
from pathlib import Path
from typing import Any

from ..data import relative_image, sample_from_dict
from ..errors import UsageError
from ..prompts import default_template
from ..records import Sample
from .prompts import RolePrompts, strip_tags
from .state import Settings, Unit

SPLITS: tuple[str, ...] = ("train", "test")
TEST_LAYOUTS: tuple[str, ...] = ("released", "like-train")


@dataclass(frozen=True)
class Variant:
    image_id: str
    level: int
    variant: int
    response: str
    evaluator_score: int | None
    feedback: str | None
    rounds: int


def variants(unit: Unit, settings: Settings) -> list[Variant]:
    """The accepted explanation and its kept paraphrases, identical texts once; [] unless done."""
    if unit.status(settings)[0] != "done":
        return []
    accepted = unit.accepted_try(settings)
    assert accepted is not None and accepted.response is not None
    rounds = unit.rounds_used(settings)
    feedback = accepted.feedback
    if unit.gold is not None and not settings.aligned(accepted.score, unit.level):
        # The gold is kept whatever its rating, but a justification of another score would
        # contradict the target's score: the level's description stands in for it.
        feedback = None
    out = [Variant(unit.image_id, unit.level, 0, accepted.response, accepted.score, feedback, rounds)]
    # A paraphrase keeps its original's claims: without its own rating it borrows the original's.
    seen = {" ".join(accepted.response.split()).lower()}
    for j in range(1, unit.n_paraphrases(settings) + 1):
        state, kept = unit.slot_state(j, settings)
        if state != "kept" or kept is None or kept.response is None:
            continue
        norm = " ".join(kept.response.split()).lower()
        if norm in seen:
            continue
        seen.add(norm)
        out.append(Variant(unit.image_id, unit.level, j, kept.response, kept.score if kept.rated else None,
                           kept.feedback or feedback, rounds))
    return out


def split_of(image_ids: list[str], fraction: float, seed: int) -> dict[str, str]:
    """image id -> "train" | "test": test when a seeded hash of the id falls under `fraction`
    (at least one test image when fraction > 0 and there are two images or more)."""
    if not 0.0 <= fraction < 1.0:
        raise UsageError(f"--test-fraction must be in [0, 1), got {fraction}")

    def h(image_id: str) -> float:
        digest = hashlib.sha256(f"{seed}:{image_id}".encode()).digest()
        return int.from_bytes(digest[:8], "big") / 2**64

    split = {i: ("test" if h(i) < fraction else "train") for i in image_ids}
    if fraction > 0 and len(image_ids) >= 2 and "test" not in split.values():
        split[min(image_ids, key=h)] = "test"
    return split


def make_pairs(records: list[Variant], n_pairs: int, rng: random.Random) -> list[tuple[Variant, Variant, str]]:
    """(a, b, preferred) pairs of different levels of one image; see the module docstring."""
    groups: dict[tuple[int, int], list[tuple[Variant, Variant]]] = {}
    for x, y in combinations(records, 2):
        if x.level == y.level:
            continue
        hi, lo = (x, y) if x.level > y.level else (y, x)
        groups.setdefault((hi.level, lo.level), []).append((hi, lo))
    keys = sorted(groups)
    rng.shuffle(keys)
    for key in keys:
        rng.shuffle(groups[key])
    start = rng.randrange(2)
    chosen: list[tuple[Variant, Variant, str]] = []
    round_ = 0
    while len(chosen) < n_pairs and any(groups[k] for k in keys):
        for position, key in enumerate(keys):
            if len(chosen) >= n_pairs:
                break
            if not groups[key]:
                continue
            hi, lo = groups[key].pop()
            if (start + round_ + position) % 2 == 0:
                chosen.append((hi, lo, "A"))
            else:
                chosen.append((lo, hi, "B"))
        round_ += 1
    return chosen


def test_records(records: list[Variant], layout: str) -> list[Variant]:
    """A test image's records: the accepted explanation of each level ("released"), or all."""
    if layout not in TEST_LAYOUTS:
        raise UsageError(f"--test-layout must be one of {', '.join(TEST_LAYOUTS)}, got {layout!r}")
    return [v for v in records if v.variant == 0] if layout == "released" else records


@lru_cache(maxsize=4096)
def _image_path(image: Path, folder: Path) -> str:
    """The image's path relative to the output folder (25+ rows per image: computed once); a URL
    stays a URL."""
    return relative_image(image, folder)


def _base_row(sample: Sample, folder: Path) -> dict[str, Any]:
    row: dict[str, Any] = {"image": _image_path(sample.image, folder), "label": sample.label}
    if sample.source is not None:
        row["source"] = sample.source
    return row


def pointwise_row(sample: Sample, v: Variant, folder: Path, split: str, level_text: dict[int, str]) -> dict[str, Any]:
    reasoning = strip_tags(v.feedback) if v.feedback else ""
    reasoning = reasoning or level_text[v.level]
    row = {"id": f"{sample.id}-l{v.level}-v{v.variant}", **_base_row(sample, folder)}
    row["artifacts"] = [
        {"category": a.category, "bbox": None if a.bbox is None else a.bbox.as_list(), "expression": a.expression}
        for a in sample.artifacts
    ]
    row.update(
        rationale=sample.rationale,
        response=v.response,
        score=v.level,
        target=f"<reasoning>{reasoning}</reasoning>\n<score>{v.level}</score>",
        image_id=sample.id,
        variant=v.variant,
        evaluator_score=v.evaluator_score,
        rounds=v.rounds,
        split=split,
    )
    return row


def pairwise_row(sample: Sample, a: Variant, b: Variant, preferred: str, folder: Path, split: str) -> dict[str, Any]:
    return {
        "id": f"{sample.id}-l{a.level}v{a.variant}-vs-l{b.level}v{b.variant}",
        **_base_row(sample, folder),
        "response_a": a.response,
        "response_b": b.response,
        "preferred": preferred,
        "score_a": a.level,
        "score_b": b.level,
        "image_id": sample.id,
        "split": split,
    }


def rejected_row(sample: Sample, unit: Unit, reason: str) -> dict[str, Any]:
    last = unit.last_rated()
    return {
        "id": f"{sample.id}-l{unit.level}",
        "image_id": sample.id,
        "level": unit.level,
        "reason": reason,
        "ratings": [t.score for t in unit.rounds if t.rated],
        "last_response": None if last is None else last.response,
        "last_feedback": None if last is None else last.feedback,
        "malformed": [t.malformed for t in unit.rounds if t.malformed],
    }


def _write_jsonl(path: Path, rows: list[dict[str, Any]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    with tmp.open("w", encoding="utf-8") as fh:
        for row in rows:
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")
    tmp.replace(path)  # atomic: a kill never leaves a half-written output


def write_outputs(
    out_dir: Path,
    samples: dict[str, Sample],
    units: list[Unit],
    settings: Settings,
    prompts: RolePrompts,
    *,
    seed: int,
    test_fraction: float,
    pairs_per_image: int | None,
    test_layout: str = "released",
    split: dict[str, str] | None = None,
) -> dict[str, Any]:
    """Write every output file; returns {file name: rows}, images per split and the test layout.
    `split` (image id -> train | test) is the one the run planned with; None: computed here."""
    by_image: dict[str, list[Variant]] = {}
    rejected: list[dict[str, Any]] = []
    for unit in units:
        status, reason = unit.status(settings)
        if status == "rejected":
            rejected.append(rejected_row(samples[unit.image_id], unit, reason or ""))
        by_image.setdefault(unit.image_id, []).extend(variants(unit, settings))
    image_ids = list(dict.fromkeys(u.image_id for u in units))
    split = {i: split[i] for i in image_ids} if split is not None else split_of(image_ids, test_fraction, seed)
    rows: dict[str, list[dict[str, Any]]] = {f"{k}-{s}": [] for k in ("pointwise", "pairwise") for s in SPLITS}
    level_text = prompts.level_text
    for image_id in image_ids:
        sample, records, s = samples[image_id], by_image.get(image_id, []), split[image_id]
        released = s == "test" and test_layout == "released"
        if s == "test":
            records = test_records(records, test_layout)
        rows[f"pointwise-{s}"].extend(pointwise_row(sample, v, out_dir, s, level_text) for v in records)
        rng = random.Random(f"{seed}:pairs:{image_id}")
        if released:  # every level pair once: ten pairs for five accepted levels
            n = len(records) * (len(records) - 1) // 2
        else:
            n = len(records) if pairs_per_image is None else pairs_per_image
        for a, b, preferred in make_pairs(records, n, rng):
            rows[f"pairwise-{s}"].append(pairwise_row(sample, a, b, preferred, out_dir, s))
    counts: dict[str, Any] = {}
    for name, file_rows in rows.items():
        _write_jsonl(out_dir / f"{name}.jsonl", file_rows)
        counts[name] = len(file_rows)
    _write_jsonl(out_dir / "rejected.jsonl", rejected)
    counts["rejected"] = len(rejected)
    write_msswift(out_dir, rows)
    return {"rows": counts, "images": {s: sum(v == s for v in split.values()) for s in SPLITS},
            "test_layout": test_layout}


def write_msswift(out_dir: Path, rows: dict[str, list[dict[str, Any]]]) -> None:
    """The canonical rows as ms-swift conversations with the project's judge templates, through
    the same code as `dfj data convert --to msswift` (`train.formats`): absolute image paths, as
    ms-swift opens a relative one against its working directory, not against the file."""
    from ..train.formats import conversation_rows

    folder = out_dir / "msswift"
    for name, file_rows in rows.items():
        kind = name.split("-")[0]
        out = folder / f"{name}.jsonl"
        samples = [sample_from_dict(r, out_dir, f"{name}.jsonl:{i + 1}") for i, r in enumerate(file_rows)]
        converted, errors = conversation_rows(samples, default_template(kind), out)  # type: ignore[arg-type]
        if errors:  # our own rows: a failure here is a bug, not bad input
            raise RuntimeError(f"ms-swift conversion of {name}: {errors[0]}")
        _write_jsonl(out, converted)
