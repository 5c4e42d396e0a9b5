"""Results files: one JSONL row per input, written as produced, resumable after a kill.

A row carries `id` and either result fields or `error`. Rows whose input had no usable id (a
malformed line, a duplicate) carry `id: null` and `where` ("file:line"); resume keys on the id,
or on `where` for those. A kill can leave a half-written last line: it is cut off before
appending, so every input ends up exactly once.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
from dataclasses import asdict, is_dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable

from ._version import __version__
from .records import PointwiseVerdict, RowError


def row_key(row: dict[str, Any]) -> str:
    return f"id:{row['id']}" if row.get("id") is not None else f"where:{row.get('where')}"


def error_row(error: RowError) -> dict[str, Any]:
    return {"id": error.id, "where": error.where, "field": error.field, "error": error.message}


def verdict_row(verdict: Any, protocol: str | None = None) -> dict[str, Any]:
    """The results row of a verdict (any task's frozen record) or of a `RowError`. `protocol`
    (judge/protocol.py) is recorded in the row. A `--mode compare` verdict is the generate
    verdict's row with the score-only one under `score_only`."""
    if isinstance(verdict, RowError):
        return error_row(verdict)
    if hasattr(verdict, "score_only_protocol"):  # judge.compare.Compared
        row = verdict_row(verdict.generate, "generate")
        other = verdict_row(verdict.score_only, verdict.score_only_protocol)
        other.pop("id", None)
        return {**row, "score_only": other}
    row = asdict(verdict)
    if isinstance(verdict, PointwiseVerdict):
        row["probs"] = None if verdict.probs is None else dict(zip("12345", verdict.probs))
    if protocol is not None:
        row["protocol"] = protocol
    return row


def read_rows(path: Path) -> list[dict[str, Any]]:
    """Complete rows of a results file; a torn last line (a kill mid-write) is truncated away."""
    if not path.exists():
        return []
    rows, good_end = [], 0
    with path.open("rb") as fh:
        for raw in fh:
            if not raw.endswith(b"\n"):
                break
            try:
                rows.append(json.loads(raw))
            except json.JSONDecodeError:
                break
            good_end += len(raw)
    if good_end != path.stat().st_size:
        with path.open("r+b") as fh:
            fh.truncate(good_end)
    return rows


# Error rows of this field are failed model calls (out of memory, a server error): worth
# another try, unlike bad input, which fails the same way every time.
MODEL_ERROR_FIELD = "<model>"


def drop_model_errors(path: Path) -> int:
    """Remove failed-model-call rows from a results file (atomically), so a resumed run judges
    those items again. Returns how many were removed."""
    rows = read_rows(path)
    kept = [r for r in rows if not ("error" in r and r.get("field") == MODEL_ERROR_FIELD)]
    if len(kept) != len(rows):
        tmp = path.with_suffix(path.suffix + ".tmp")
        tmp.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in kept), encoding="utf-8")
        tmp.replace(path)
    return len(rows) - len(kept)


class ResultsWriter:
    """Append rows with a flush (and fsync) per batch; knows which inputs are already done.

    `retry_errors` first removes the rows of failed model calls so that they are judged again.
    """

    def __init__(self, path: str | Path, resume: bool = True, retry_errors: bool = False):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if not resume and self.path.exists():
            self.path.unlink()
        self.retried = drop_model_errors(self.path) if retry_errors and self.path.exists() else 0
        self.done = {row_key(r) for r in read_rows(self.path)}
        self._fh = self.path.open("a", encoding="utf-8")

    def is_done(self, key: str) -> bool:
        return key in self.done

    def write(self, rows: Iterable[dict[str, Any]]) -> None:
        for row in rows:
            key = row_key(row)
            if key in self.done:
                continue
            self._fh.write(json.dumps(row, ensure_ascii=False) + "\n")
            self.done.add(key)
        self._fh.flush()
        os.fsync(self._fh.fileno())

    def close(self) -> None:
        self._fh.close()

    def __enter__(self) -> "ResultsWriter":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def summary_path(out: str | Path) -> Path:
    out = Path(out)
    return out.with_name(out.stem + ".summary.json")


def _git(*args: str) -> str | None:
    here = Path(__file__).resolve().parent
    try:
        result = subprocess.run(["git", "-C", str(here), *args], capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return result.stdout if result.returncode == 0 else None


def _git_state() -> tuple[str | None, bool | None]:
    """(commit, whether the package's source differs from it); (None, None) outside a checkout."""
    head = _git("rev-parse", "HEAD")
    if not head:
        return None, None
    # Only the package's own files: edited tests or docs do not change a result.
    status = _git("status", "--porcelain", "--", str(Path(__file__).resolve().parent))
    return head.strip(), None if status is None else bool(status.strip())


def provenance(**extra: Any) -> dict[str, Any]:
    commit, dirty = _git_state()
    info = {
        "deepfakejudge": __version__,
        "git": commit,
        "git_dirty": dirty,  # True: the code that ran is the commit plus uncommitted changes
        "python": platform.python_version(),
        "platform": platform.platform(),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "argv": sys.argv,
    }
    info.update({k: (asdict(v) if is_dataclass(v) else v) for k, v in extra.items()})
    return info


def write_summary(out: str | Path, summary: dict[str, Any]) -> Path:
    path = summary_path(out)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(summary, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    tmp.replace(path)  # atomic: a kill never leaves a half-written summary
    return path
