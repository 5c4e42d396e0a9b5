"""Run a judge over a dataset into a resumable results file plus a provenance summary."""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence

from ..data import Dataset
from ..records import Sample
from ..results import ResultsWriter, error_row, provenance, read_rows, verdict_row, write_summary
from .protocol import describe as describe_protocol


class _NoProgress:
    def __enter__(self) -> "_NoProgress":
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def update(self, n: int) -> None:
        return None


@dataclass(frozen=True)
class RunResult:
    out: Path
    summary_path: Path
    summary: dict[str, Any]

    @property
    def errors(self) -> int:
        return int(self.summary["errors"])


def run_judge(
    kind: str,
    batches: Callable[[Sequence[Sample]], Iterator[list[Any]]],
    dataset: Dataset,
    out: str | Path,
    *,
    settings: dict[str, Any],
    backend_info: Callable[[], dict[str, Any]],
    limit: int | None = None,
    overwrite: bool = False,
    retry_errors: bool = False,
    progress: Callable[[int], Any] | None = None,
    counts: Callable[[list[dict[str, Any]]], dict[str, Any]] | None = None,
    protocol: str | None = None,
    compared_protocol: str | None = None,
    engine: Callable[[], dict[str, Any] | None] | None = None,
) -> RunResult:
    """Judge every not-yet-done sample of `dataset` with `batches` and write rows as they come.

    `batches(samples)` yields lists of verdicts/RowErrors aligned with the samples it was given
    (a judge's `iter_batches`, or any task's with the same shape, e.g. `Detector`). Load errors
    of the dataset are written as error rows first. `counts(ok_rows)` adds task-specific figures
    to the summary; without it the pointwise or pairwise figures are used, by `kind`.
    `protocol` (judge/protocol.py) is written in every row and in the summary; a `--mode
    compare` run passes "compare" and the score-only protocol it compares as `compared_protocol`.
    `engine()` (engine/) gives the summary's `engine` block, if any: the Ray engine's replicas
    and what each did.
    """
    out = Path(out)
    started = time.perf_counter()
    with ResultsWriter(out, resume=not overwrite, retry_errors=retry_errors) as writer:
        writer.write(error_row(e) for e in dataset.errors)
        # The first `limit` items of the data, not `limit` more per run: a resumed run ends
        # where an uninterrupted one would.
        selected = dataset.samples if limit is None else dataset.samples[:limit]
        todo = [s for s in selected if not writer.is_done(f"id:{s.id}")]
        with progress(len(todo)) if progress and todo else _NoProgress() as bar:
            for rows in batches(todo) if todo else ():
                writer.write(verdict_row(r, protocol) for r in rows)
                bar.update(len(rows))
    elapsed = time.perf_counter() - started
    rows = read_rows(out)
    summary = {
        "kind": kind,
        "data": str(dataset.path),
        "out": str(out),
        **_counts(kind, rows, counts),
        "this_run": {
            "judged": len(todo),
            "retried_model_errors": writer.retried,
            "seconds": round(elapsed, 3),
            "items_per_second": round(len(todo) / elapsed, 4) if todo and elapsed > 0 else None,
        },
        "protocol": None if protocol is None else summary_protocol(protocol, compared_protocol),
        "settings": settings,
        "backend": backend_info() if todo else None,
        "provenance": provenance(),
    }
    info = engine() if engine is not None and todo else None
    if info is not None:
        summary["engine"] = info
    path = write_summary(out, summary)
    return RunResult(out=out, summary_path=path, summary=summary)


def summary_protocol(name: str, compared: str | None = None) -> dict[str, Any]:
    """The summary's `protocol` entry: the name, whether it is exact, what it means; for a
    compare run, both protocols it compared."""
    if name != "compare":
        return describe_protocol(name)
    if compared is None:
        raise ValueError("a compare run needs the score-only protocol it compares (compared_protocol)")
    return {"name": "compare", "generate": describe_protocol("generate"), "score_only": describe_protocol(compared)}


def _counts(
    kind: str,
    rows: Iterable[dict[str, Any]],
    extra: Callable[[list[dict[str, Any]]], dict[str, Any]] | None = None,
) -> dict[str, Any]:
    rows = list(rows)
    errors = [r for r in rows if "error" in r]
    ok = [r for r in rows if "error" not in r]
    counts: dict[str, Any] = {
        "rows": len(rows),
        "judged": len(ok),
        "errors": len(errors),
        "error_fields": dict(Counter(r.get("field", "?") for r in errors)),
    }
    if extra is not None:
        counts.update(extra(ok))
    else:
        counts.update(judge_counts(kind, ok))
    return counts


def judge_counts(kind: str, ok: list[dict[str, Any]]) -> dict[str, Any]:
    """Pointwise or pairwise summary figures of the rows without an error."""
    counts: dict[str, Any] = {}
    if kind == "pointwise":
        scores = [r["score"] for r in ok if r.get("score") is not None]
        expected = [r["expected_score"] for r in ok if r.get("expected_score") is not None]
        counts.update(
            unparsable=len(ok) - len(scores),
            score_histogram={str(k): scores.count(k) for k in range(1, 6)},
            mean_score=round(sum(scores) / len(scores), 4) if scores else None,
            mean_expected_score=round(sum(expected) / len(expected), 4) if expected else None,
        )
    else:
        choices = [r["choice"] for r in ok if r.get("choice") is not None]
        both = [r for r in ok if r.get("agree") is not None]
        # Both orders answered but disagree, with no probabilities to break the tie: a real
        # answer of the judge (it contradicts itself), not text we failed to read.
        undecided = sum(
            1 for r in ok
            if r.get("choice") is None and r.get("orders") and all(o.get("choice") is not None for o in r["orders"])
        )
        counts.update(
            unparsable=len(ok) - len(choices) - undecided,
            undecided=undecided,
            prefer_a=round(choices.count("A") / len(choices), 4) if choices else None,
            order_agreement=round(sum(r["agree"] for r in both) / len(both), 4) if both else None,
        )
    return counts
