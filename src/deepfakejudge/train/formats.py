"""Write judge training data for other trainers: ms-swift and LLaMA-Factory.

Both get one JSON object per line with the conversation the judge is trained on: a user turn
`<image>` + the prompt filled from the template (the image first, as the released judges saw it)
and an assistant turn with the answer (`examples.target_text`), plus `images`.

Image paths are written as each trainer resolves them. ms-swift opens a relative path against
the working directory (or `$ROOT_IMAGE_DIR`), not against the file: its rows get absolute paths,
or, with `relative_to`, paths relative to that folder (then run ms-swift with
`ROOT_IMAGE_DIR` set to it, or from it). LLaMA-Factory joins a relative path to its `media_dir`, which
defaults to the dataset folder: its rows get paths relative to the output file, and a
`dataset_info.json` entry is written (or updated) beside it. The ms-swift output is read back by
`load_records` (with the same `--template`), so a round trip keeps every row.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from ..data import relative_image
from ..data.urls import is_url
from ..errors import InputError, UsageError
from ..prompts import Template
from ..records import RowError, Sample
from .examples import build_examples

FORMATS: tuple[str, ...] = ("msswift", "llamafactory")
IMAGE_TAG = "<image>"


def image_path(image: Path, root: Path | None) -> str:
    """The image as the row names it: absolute, or relative to `root`; a URL as written (ms-swift
    and LLaMA-Factory fetch http(s) images themselves)."""
    if root is not None or is_url(image):
        return relative_image(image, root)
    return image.resolve().as_posix()


def conversation_rows(samples: Iterable[Sample], template: Template, out: Path,
                      relative_to: Path | None = None) -> tuple[list[dict[str, Any]], list[RowError]]:
    """Conversation rows; `images` relative to `relative_to`, or absolute when it is None."""
    examples, errors = build_examples(samples, template)
    rows = [
        {
            "id": ex.id,
            "messages": [
                {"role": "user", "content": IMAGE_TAG + ex.prompt},
                {"role": "assistant", "content": ex.target},
            ],
            "images": [image_path(ex.image, relative_to)],
        }
        for ex in examples
    ]
    return rows, errors


def write_jsonl(rows: list[dict[str, Any]], out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(out.suffix + ".tmp")
    with tmp.open("w", encoding="utf-8") as fh:
        for row in rows:
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")
    tmp.replace(out)


def llamafactory_entry(out: Path) -> dict[str, Any]:
    """The dataset_info.json entry for a sharegpt-style multimodal file."""
    return {
        "file_name": out.name,
        "formatting": "sharegpt",
        "columns": {"messages": "messages", "images": "images"},
        "tags": {"role_tag": "role", "content_tag": "content", "user_tag": "user", "assistant_tag": "assistant"},
    }


def update_dataset_info(out: Path, name: str) -> Path:
    info_path = out.parent / "dataset_info.json"
    info: dict[str, Any] = {}
    if info_path.is_file():
        try:
            info = json.loads(info_path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise InputError(f"{info_path}: not valid JSON ({exc.msg}); fix or remove it") from exc
    info[name] = llamafactory_entry(out)
    info_path.write_text(json.dumps(info, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return info_path


def convert(samples: Iterable[Sample], template: Template, out: str | Path, to: str,
            name: str | None = None, relative_to: str | Path | None = None) -> tuple[int, list[RowError], Path | None]:
    """Write `samples` as `to` format training rows; returns (rows written, unusable rows,
    dataset_info.json path for LLaMA-Factory). ms-swift rows name images absolutely, or relative
    to `relative_to`; LLaMA-Factory rows relative to the output file's folder (its `media_dir`)."""
    if to not in FORMATS:
        raise UsageError(f"--to must be one of {', '.join(FORMATS)}, got {to!r}")
    out = Path(out)
    if to == "llamafactory":
        if relative_to is not None:
            raise UsageError("--relative-to: LLaMA-Factory resolves images against the dataset folder; "
                             "the option applies to --to msswift only")
        root: Path | None = out.parent
    else:
        root = None if relative_to is None else Path(relative_to)
    rows, errors = conversation_rows(samples, template, out, root)
    write_jsonl(rows, out)
    info = update_dataset_info(out, name or out.stem) if to == "llamafactory" else None
    return len(rows), errors, info
