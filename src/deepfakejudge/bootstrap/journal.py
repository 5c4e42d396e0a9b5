"""The run's append-only journal: one JSON event per finished model call, fsync'd per step.

`DIR/journal.jsonl` starts with a `run` event holding the settings fingerprint; every rerun adds
another `run` event and must match it (different prompts, models or loop settings would mix two
datasets in one folder). Then one event per call: `gen`, `eval`, `para`, `recheck` or `fail`
(see `state.Unit.apply`). A kill can tear only the last line, which is cut away on reopening
(`results.read_rows`). The state does not depend on the request cache: the journal alone says
what is finished.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Iterable

from ..errors import UsageError
from ..results import read_rows

JOURNAL = "journal.jsonl"


def _differences(old: dict[str, Any], new: dict[str, Any], prefix: str = "") -> list[str]:
    out = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            out.extend(_differences(a, b, f"{prefix}{key}."))
        elif a != b:
            out.append(f"{prefix}{key}: {a!r} -> {b!r}")
    return out


class Journal:
    def __init__(self, out_dir: Path, fingerprint: dict[str, Any], run_info: dict[str, Any]) -> None:
        self.path = out_dir / JOURNAL
        out_dir.mkdir(parents=True, exist_ok=True)
        rows = read_rows(self.path)
        runs = [r for r in rows if r.get("e") == "run"]
        if runs:
            first = runs[0]["fingerprint"]
            diff = _differences(first, fingerprint)
            if diff:
                raise UsageError(
                    f"--out {out_dir}: this folder holds a run started with other settings ("
                    + "; ".join(diff[:6]) + (" …" if len(diff) > 6 else "")
                    + "); rerun with the same settings to resume, or pass another --out"
                )
        self.events = [r for r in rows if r.get("e") != "run"]
        self.runs = len(runs)
        self._fh = self.path.open("a", encoding="utf-8")
        self.append([{"e": "run", "fingerprint": fingerprint, **run_info}])

    def append(self, events: Iterable[dict[str, Any]]) -> None:
        for event in events:
            self._fh.write(json.dumps(event, ensure_ascii=False) + "\n")
            if event.get("e") != "run":
                self.events.append(event)
        self._fh.flush()
        os.fsync(self._fh.fileno())

    def close(self) -> None:
        self._fh.close()

    def __enter__(self) -> "Journal":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
