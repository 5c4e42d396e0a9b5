"""Canonical JSONL rows <-> `Sample` records, with field-level validation.

One row is one JSON object. Unknown fields are kept in `Sample.extra` and written back
unchanged. A bad row raises `InputError` naming the field; the reader turns it into a `RowError`
and moves on.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

from .. import errors
from ..records import LABELS, Artifact, Box, Sample
from .urls import is_url, local_file, remote_image, url_protocol

if TYPE_CHECKING:
    from upath import UPath

KNOWN_FIELDS = (
    "id", "image", "label", "source", "artifacts", "rationale", "response", "score",
    "response_a", "response_b", "preferred",
)


class InputError(errors.InputError):
    """A row (or its image) that cannot be used. `field` names the offending field."""

    def __init__(self, field: str, message: str):
        super().__init__(message)
        self.field = field
        self.message = message


def _text(obj: Mapping[str, Any], key: str) -> str | None:
    value = obj.get(key)
    if value is None:
        return None
    if not isinstance(value, str):
        raise InputError(key, f"must be a string, got {type(value).__name__}")
    return value


def _number(value: Any, field: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise InputError(field, f"must be a finite number, got {value!r}")
    return float(value)


def parse_box(value: Any, field: str = "bbox") -> Box:
    if not isinstance(value, (list, tuple)) or len(value) != 4:
        raise InputError(field, f"must be [x0, y0, x1, y1] in pixels, got {value!r}")
    x0, y0, x1, y1 = (_number(v, field) for v in value)
    if x0 < 0 or y0 < 0 or x1 <= x0 or y1 <= y0:
        raise InputError(
            field, f"{list(value)} is not a box: need 0 <= x0 < x1 and 0 <= y0 < y1 (pixels)"
        )
    return Box(x0, y0, x1, y1)


def parse_artifacts(value: Any) -> tuple[Artifact, ...]:
    if value is None:
        return ()
    if not isinstance(value, list):
        raise InputError("artifacts", f"must be a list of objects, got {type(value).__name__}")
    out = []
    for i, item in enumerate(value):
        name = f"artifacts[{i}]"
        if not isinstance(item, dict):
            raise InputError(name, f"must be an object, got {type(item).__name__}")
        category = item.get("category")
        if not isinstance(category, str) or not category.strip():
            raise InputError(f"{name}.category", "must be a non-empty string")
        bbox = item.get("bbox")
        expression = item.get("expression", "")
        if not isinstance(expression, str):
            raise InputError(f"{name}.expression", "must be a string")
        out.append(
            Artifact(
                category=category,
                bbox=None if bbox is None else parse_box(bbox, f"{name}.bbox"),
                expression=expression,
            )
        )
    return tuple(out)


def parse_id(obj: Mapping[str, Any]) -> str:
    value = obj.get("id")
    if isinstance(value, bool) or not isinstance(value, (str, int)) or str(value).strip() == "":
        raise InputError("id", f"must be a non-empty string or integer, got {value!r}")
    return str(value)


def image_location(text: str, base_dir: Path, where: str, field: str = "image") -> Path | UPath:
    """The image a row names: a path relative to `base_dir` (resolved) or absolute, or a URL
    (`data/urls.py`): kept as a URL, except `file://`, which is a local path like any other."""
    protocol = url_protocol(text)
    if protocol is None:
        return (base_dir / text).resolve() if not Path(text).is_absolute() else Path(text)
    if protocol == "file":
        local = local_file(text)
        if local is None:
            raise InputError(field, f"{text}: a file:// URL naming another host cannot be read here: "
                                    "write file:///path for a local file, or mount the share")
        return local
    return remote_image(text, protocol, where, field)


def relative_image(image: Path | UPath, folder: Path) -> str:
    """How a row written in `folder` names `image`: its path relative to `folder` (`..` where
    needed), or a URL as written."""
    if is_url(image):
        return str(image)
    return Path(os.path.relpath(image.resolve(), folder.resolve())).as_posix()


def sample_from_dict(obj: Any, base_dir: Path, where: str) -> Sample:
    if not isinstance(obj, dict):
        raise InputError("<row>", f"must be a JSON object, got {type(obj).__name__}")
    sample_id = parse_id(obj)
    image = obj.get("image")
    if not isinstance(image, str) or not image.strip():
        raise InputError("image", f"must be a path relative to the data file or a URL, got {image!r}")
    label = obj.get("label")
    if not isinstance(label, str) or label.strip().lower() not in LABELS:
        raise InputError("label", f"{label!r} is not one of {', '.join(LABELS)}")
    score = obj.get("score")
    if score is not None and (isinstance(score, bool) or score not in (1, 2, 3, 4, 5)):
        raise InputError("score", f"must be an integer 1..5 or null, got {score!r}")
    preferred = obj.get("preferred")
    if preferred is not None and preferred not in ("A", "B"):
        raise InputError("preferred", f"must be \"A\", \"B\" or null, got {preferred!r}")
    return Sample(
        id=sample_id,
        image=image_location(image, base_dir, where),
        label=label.strip().lower(),  # type: ignore[arg-type]
        source=_text(obj, "source"),
        artifacts=parse_artifacts(obj.get("artifacts")),
        rationale=_text(obj, "rationale"),
        response=_text(obj, "response"),
        score=None if score is None else int(score),
        response_a=_text(obj, "response_a"),
        response_b=_text(obj, "response_b"),
        preferred=preferred,
        extra={k: v for k, v in obj.items() if k not in KNOWN_FIELDS},
        where=where,
    )


def sample_to_dict(sample: Sample, base_dir: Path) -> dict[str, Any]:
    """The canonical row for `sample`, with its image path relative to `base_dir` when possible
    (a URL stays a URL)."""
    try:
        image = str(sample.image) if is_url(sample.image) else \
            sample.image.resolve().relative_to(base_dir.resolve()).as_posix()
    except ValueError:
        image = str(sample.image)
    row: dict[str, Any] = {"id": sample.id, "image": image, "label": sample.label}
    optional = {
        "source": sample.source,
        "artifacts": [
            {
                "category": a.category,
                "bbox": None if a.bbox is None else a.bbox.as_list(),
                "expression": a.expression,
            }
            for a in sample.artifacts
        ] or None,
        "rationale": sample.rationale,
        "response": sample.response,
        "score": sample.score,
        "response_a": sample.response_a,
        "response_b": sample.response_b,
        "preferred": sample.preferred,
    }
    row.update({k: v for k, v in optional.items() if v is not None})
    row.update(sample.extra)
    return row
