"""The run record saved beside a trained adapter (and copied into an exported checkpoint).

`dfj_train.json` holds the kind, base model, template hash and name, pixel budget, every
setting, data counts, skipped rows, training metrics and provenance; `dfj_template.txt` holds the
template text byte for byte. `dfj judge --adapter DIR` (or `--model EXPORTED`) reads them with
`find_trained_judge` so that a judge is used with the prompt and image budget it was trained on.
Importing this module needs no training dependency.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..backends.base import PixelBudget
from ..errors import InputError
from ..prompts import Template

RUN_FILE = "dfj_train.json"
TEMPLATE_FILE = "dfj_template.txt"
FORMAT = "dfj-train/1"


@dataclass(frozen=True)
class TrainedJudge:
    """What inference must reuse from a training run."""

    path: Path
    kind: str
    base: str
    template: Template
    budget: PixelBudget
    record: dict[str, Any]


def write_record(folder: str | Path, record: dict[str, Any], template: Template) -> Path:
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    # Bytes as they are: CRLF line ends of a template file are part of what the model saw.
    (folder / TEMPLATE_FILE).write_bytes(template.text.encode("utf-8"))
    path = folder / RUN_FILE
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"format": FORMAT, **record}, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    tmp.replace(path)
    return path


def read_record(folder: str | Path) -> dict[str, Any] | None:
    path = Path(folder) / RUN_FILE
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise InputError(f"{path}: not valid JSON ({exc.msg}); the training run record is damaged") from exc
    if record.get("format") != FORMAT:
        raise InputError(f"{path}: format {record.get('format')!r} is not {FORMAT!r}; written by another version")
    return record


def load_trained_judge(folder: str | Path) -> TrainedJudge | None:
    """The trained judge recorded in `folder`, or None when it holds no run record."""
    folder = Path(folder)
    record = read_record(folder)
    if record is None:
        return None
    template_path = folder / TEMPLATE_FILE
    try:
        text = template_path.read_bytes().decode("utf-8")
    except OSError as exc:
        raise InputError(f"{template_path}: missing ({exc.strerror}); the training run record is incomplete") from exc
    template = Template(kind=record["kind"], text=text, name=str(template_path),
                        official=bool(record["template"].get("official", False)))
    if template.sha256 != record["template"]["sha256"]:
        raise InputError(
            f"{template_path}: its sha256 {template.sha256[:12]}… differs from the recorded "
            f"{record['template']['sha256'][:12]}…; the file was edited after training"
        )
    budget = PixelBudget(**record["pixel_budget"])
    return TrainedJudge(folder, record["kind"], record["base"], template, budget, record)


def find_trained_judge(adapter: str | None, model: str | None) -> TrainedJudge | None:
    """The run record of `--adapter`, else of a local `--model` folder (an exported judge)."""
    for folder in (adapter, model):
        if folder and Path(folder).is_dir():
            found = load_trained_judge(folder)
            if found is not None:
                return found
    return None
