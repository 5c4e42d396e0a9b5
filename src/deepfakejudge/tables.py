"""Markdown tables and the number formats of the reports (detect, reason, meta-eval)."""

from __future__ import annotations

from collections.abc import Sequence

MISSING = "–"  # a figure that is undefined (no positive class, no probabilities...)


def pct(x: float | None) -> str:
    """A fraction as a percentage with one decimal."""
    return MISSING if x is None else f"{100 * x:.1f}"


def num(x: float | None, digits: int = 3) -> str:
    return MISSING if x is None else f"{x:.{digits}f}"


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[object]], align: str | None = None) -> str:
    """A GitHub markdown table; `align` has one letter per column, "l" or "r" (default: all left)."""
    align = align or "l" * len(headers)
    if len(align) != len(headers) or set(align) - {"l", "r"}:
        raise ValueError(f"align: need one of 'l'/'r' per column ({len(headers)}), got {align!r}")
    rule = "|" + "|".join("---:" if a == "r" else "---" for a in align) + "|"
    lines = ["| " + " | ".join(headers) + " |", rule]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)
