"""Open a project (database + datasets + annotators), export it: what `dfj annotate` does before
it serves, usable from Python and tests without a server."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import select

from ..errors import InputError, UsageError
from .agreement import agreement_report
from .assignment import AssignReport, assign, check_share
from .db import Dataset, Store
from .deps import AppContext
from .exchange import ExportReport, ImportReport, collect_ratings, export_rows, import_rows, write_jsonl
from .store import LoadReport, add_annotator, get_setting, load_dataset, new_token, set_setting
from .taxonomy import load_taxonomy


@dataclass(frozen=True)
class Opened:
    ctx: AppContext
    loads: tuple[LoadReport, ...]
    tokens: dict[str, str]  # name -> token, for annotators created (or re-keyed) now
    assignment: AssignReport
    imported: ImportReport | None


def open_project(db: str, data: Sequence[str | Path], annotators: Sequence[str] = (), admin: str = "admin",
                 double_share: float | None = None, seed: int | None = None, taxonomy: str | Path | None = None,
                 results: Sequence[str | Path] = (), new_tokens: Sequence[str] = (),
                 import_file: str | Path | None = None, import_as: str | None = None) -> Opened:
    """Load `data` into `db`, create the admin and `annotators` (tokens returned once), assign
    items, optionally import records. `double_share` and `seed` are stored in the database: when
    None, the stored values (default 0.2 and 0) are used."""
    tax = load_taxonomy(taxonomy)
    for r in results:
        if not Path(r).is_file():
            raise InputError(f"--results {r}: no such file (a results JSONL of dfj judge or dfj detect)")
    if double_share is not None:
        check_share(double_share)
    store = Store(db)
    tokens: dict[str, str] = {}
    loads = []
    imported = None
    with store.write() as session:
        for d in data:
            loads.append(load_dataset(session, d))
        seen: dict[str, str] = {}
        for report in loads:
            if report.dataset in seen and seen[report.dataset] != report.path:
                raise UsageError(f"--data {report.path}: its dataset name {report.dataset!r} is already taken by "
                                 f"{seen[report.dataset]}; rename one of the files")
            seen[report.dataset] = report.path
        share = double_share if double_share is not None else float(get_setting(session, "double_share", "0.2"))
        seed = seed if seed is not None else int(get_setting(session, "seed", "0"))
        set_setting(session, "double_share", str(share))
        set_setting(session, "seed", str(seed))
        for name, role in [(admin, "admin")] + [(a, "annotator") for a in annotators]:
            token = add_annotator(session, name, role)
            if token is not None:
                tokens[name] = token
        for name in new_tokens:
            tokens[name] = new_token(session, name)
        report = assign(session, share, seed)
        if import_file is not None:
            lines = Path(import_file).read_bytes().splitlines()
            imported = import_rows(session, lines, tax.names, annotator=import_as)
    ctx = AppContext(store=store, taxonomy=tax, results=tuple(Path(r).resolve() for r in results),
                     double_share=share, seed=seed)
    return Opened(ctx, tuple(loads), tokens, report, imported)


def export_all(store: Store, out_dir: str | Path) -> list[ExportReport]:
    """Write `<dataset>.jsonl` for every dataset and `agreement.json` into `out_dir`, all from
    one snapshot. Image paths in the files are relative to `out_dir`."""
    out = Path(out_dir).resolve()
    out.mkdir(parents=True, exist_ok=True)
    reports = []
    with store.read() as session:
        for name in session.scalars(select(Dataset.name).order_by(Dataset.id)):
            rows, report = export_rows(session, name, out_dir=out)
            write_jsonl(rows, out / f"{name}.jsonl")
            reports.append(report)
        agreement = agreement_report(collect_ratings(session))
    (out / "agreement.json").write_text(json.dumps(agreement, indent=2) + "\n", encoding="utf-8")
    return reports
