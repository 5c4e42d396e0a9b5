"""The one JSONL line reader: every input file (datasets, prediction and results files) goes
through it, so a bad line is reported the same way everywhere."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from ..records import RowError


@dataclass(frozen=True)
class Line:
    """One non-blank line: its parsed JSON object, or the `RowError` saying why there is none."""

    lineno: int
    where: str  # "file:line"
    obj: dict[str, Any] | None
    error: RowError | None


def read_jsonl(path: Path) -> Iterator[Line]:
    """Lines of `path` as JSON objects. Bytes that are not UTF-8, malformed JSON and values that
    are not objects become errors (field "<row>"); blank lines are skipped."""
    with path.open("rb") as fh:
        for lineno, raw in enumerate(fh, start=1):
            if not raw.strip():
                continue
            where = f"{path}:{lineno}"
            try:
                obj = json.loads(raw.decode("utf-8"))
            except UnicodeDecodeError as exc:
                yield Line(lineno, where, None, RowError(where, "<row>", f"not UTF-8 (byte {exc.start} of the line)"))
                continue
            except json.JSONDecodeError as exc:
                yield Line(lineno, where, None, RowError(where, "<row>", f"malformed JSON: {exc.msg} at column {exc.colno}"))
                continue
            if not isinstance(obj, dict):
                yield Line(lineno, where, None, RowError(where, "<row>", f"must be a JSON object, got {type(obj).__name__}"))
                continue
            yield Line(lineno, where, obj, None)


def read_json_file(path: Path, what: str) -> Any:
    """One JSON document the user or an earlier run wrote; a damaged one is an InputError naming
    the file, the place and what to do (`what` says which option or run it belongs to)."""
    from ..errors import InputError

    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as exc:
        raise InputError(f"{what}: {path} is not UTF-8 text (byte {exc.start}); restore or remove it") from exc
    except json.JSONDecodeError as exc:
        raise InputError(f"{what}: {path} line {exc.lineno}: not valid JSON ({exc.msg}); restore or remove it") from exc
