"""Read a dataset file (canonical or official ms-swift JSONL) into samples and row errors.

Reading never stops at a bad row: a malformed JSON line, bytes that are not UTF-8, a field of
the wrong type or a duplicate id each become a `RowError` naming the file, the line and the
field, and every valid row is still returned.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from ..errors import UsageError
from ..prompts import Template
from ..records import RowError, Sample
from .canonical import InputError, parse_id, sample_from_dict
from .jsonl import read_jsonl
from .msswift import sample_from_msswift
from .splits import SPLITS, is_split_name, resolve_split, split_file
from .urls import is_url


@dataclass(frozen=True)
class Dataset:
    path: Path
    samples: tuple[Sample, ...]
    errors: tuple[RowError, ...]

    def __len__(self) -> int:
        return len(self.samples)


def resolve_data_path(path: str | Path, root: str | Path | None = None) -> Path:
    """A JSONL file, a split folder holding `data.jsonl` (the official layout), or a split name of
    the released data (`dfj-meta/pointwise/test`, see `splits`) under `root` / $DFJ_DATA / the
    default fetch folder. An existing path always wins over a name."""
    path = Path(path)
    if path.is_dir():
        found = split_file(path)
        if found is None:
            raise UsageError(f"--data {path}: a folder must contain data.jsonl (official split layout)")
        return found
    if path.is_file():
        return path
    if is_split_name(path.as_posix()):
        return resolve_split(path.as_posix(), root)
    raise UsageError(f"--data {path}: no such file (nor a split name of the released data: "
                     f"{', '.join(SPLITS)})")


def load_records(
    path: str | Path, templates: tuple[Template, ...] = (), image_roots: Sequence[str | Path] | None = None,
    verbatim: bool = False,
) -> Dataset:
    """Load every row of `path`. `templates` are tried, in order, to recover the label and the
    responses from ms-swift rows whose prompt was filled from a template (see `msswift`); with
    `verbatim`, an ms-swift row whose prompt matches none is loaded too, to be sent as written.

    With `image_roots` (the batch commands pass their `--image-root` list, possibly empty),
    local images must resolve (symlinks followed) inside the data file's folder or one of those
    folders; a row whose image lies elsewhere (`../x.png`, an absolute path, a symlink out) is
    an error row, so a data file cannot make a run read arbitrary files. None: not confined.
    URL images (`s3://…`, `data/urls.py`) are kept as URLs; a protocol no installed package reads
    stops the load with one error (`MissingExtra` / `InputError`) before any model is loaded.
    """
    path = resolve_data_path(path)
    base_dir = path.parent
    roots = None if image_roots is None else allowed_roots(base_dir, image_roots)
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
                sample = sample_from_msswift(obj, base_dir, where, line.lineno, templates, verbatim)
            else:
                sample = sample_from_dict(obj, base_dir, where)
            if roots is not None:
                sample = confine(sample, roots, "images[0]" if "messages" in obj else "image")
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


def allowed_roots(base_dir: Path, image_roots: Sequence[str | Path] = ()) -> tuple[Path, ...]:
    """The data file's folder and every `--image-root`, symlinks resolved."""
    roots = [Path(os.path.realpath(base_dir))]
    for root in image_roots:
        real = Path(os.path.realpath(Path(root).expanduser()))
        if not real.is_dir():
            raise UsageError(f"--image-root {root}: not a directory")
        roots.append(real)
    return tuple(dict.fromkeys(roots))


def confine(sample: Sample, roots: Sequence[Path], field: str = "image") -> Sample:
    """`sample`, or `InputError` when its image path, symlinks resolved, lies outside every root.
    A URL image is not confined: it names no file of this machine (`file://` URLs are paths)."""
    if is_url(sample.image):
        return sample
    real = Path(os.path.realpath(sample.image))
    for root in roots:
        if root in real.parents:
            return sample
    raise InputError(
        field,
        f"{sample.image} resolves outside the data folder {roots[0]}"
        f"{' and every --image-root' if len(roots) > 1 else ''}; images are read only from there: "
        "move the image under it or allow its folder with --image-root DIR",
    )
