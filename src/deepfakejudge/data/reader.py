"""Read a dataset file (canonical or official ms-swift JSONL) into samples and row errors.

Reading never stops at a bad row: a malformed JSON line, bytes that are not UTF-8, a field of
the wrong type or a duplicate id each become a `RowError` naming the file, the line and the
field, and every valid row is still returned.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..prompts import Template
from ..records import RowError, Sample
from .canonical import InputError, parse_id, sample_from_dict
from .jsonl import read_jsonl
from .msswift import sample_from_msswift


@dataclass(frozen=True)
class Dataset:
    path: Path
    samples: tuple[Sample, ...]
    errors: tuple[RowError, ...]

    def __len__(self) -> int:
        return len(self.samples)


def resolve_data_path(path: str | Path) -> Path:
    """A JSONL file, or a split folder holding `data.jsonl` (the official layout)."""
    path = Path(path)
    if path.is_dir():
        candidate = path / "data.jsonl"
        if not candidate.is_file():
            raise ValueError(f"--data {path}: a folder must contain data.jsonl (official split layout)")
        return candidate
    if not path.is_file():
        raise ValueError(f"--data {path}: no such file")
    return path


def load_records(path: str | Path, templates: tuple[Template, ...] = ()) -> Dataset:
    """Load every row of `path`. `templates` are tried, in order, to recover the label and the
    responses from ms-swift rows whose prompt was filled from a template (see `msswift`)."""
    path = resolve_data_path(path)
    base_dir = path.parent
    samples: list[Sample] = []
    errors: list[RowError] = []
    first_line: dict[str, int] = {}
    for line in read_jsonl(path):
        if line.error is not None:
            errors.append(line.error)
            continue
        obj, where = line.obj, line.where
        row_id = None
        try:
            row_id = parse_id(obj) if "id" in obj else None
            if "messages" in obj:
                sample = sample_from_msswift(obj, base_dir, where, line.lineno, templates)
            else:
                sample = sample_from_dict(obj, base_dir, where)
        except InputError as exc:
            errors.append(RowError(where, exc.field, exc.message, id=row_id))
            continue
        if sample.id in first_line:
            # The id stays with the first row; the duplicate is reported without an id so that
            # results keep one row per id.
            errors.append(
                RowError(where, "id", f"duplicate id {sample.id!r} (first on line {first_line[sample.id]})")
            )
            continue
        first_line[sample.id] = line.lineno
        samples.append(sample)
    # Results hold one row per id: an erroneous row keeps its id only if no valid row and no
    # earlier error row has it.
    claimed = set(first_line)
    kept = []
    for e in errors:
        if e.id is not None and e.id in claimed:
            e = RowError(e.where, e.field, e.message)
        elif e.id is not None:
            claimed.add(e.id)
        kept.append(e)
    errors = kept
    return Dataset(path=path, samples=tuple(samples), errors=tuple(errors))
