"""The one markdown table writer of the reports."""

import pytest

from deepfakejudge.tables import markdown_table, num, pct


def test_markdown_table_alignment_and_cells():
    assert markdown_table(["a", "b"], [[1, None], ["x", 2.5]], "lr") == (
        "| a | b |\n|---|---:|\n| 1 | None |\n| x | 2.5 |")
    assert markdown_table(["a"], []) == "| a |\n|---|"


@pytest.mark.parametrize("align", ["l", "lrr", "lc"])
def test_markdown_table_rejects_a_wrong_alignment(align):
    with pytest.raises(ValueError, match="align: need one of 'l'/'r' per column"):
        markdown_table(["a", "b"], [], align)


def test_number_formats():
    assert pct(0.12345) == "12.3" and num(0.12345) == "0.123" and num(2, 1) == "2.0"
    assert pct(None) == num(None) == "–"
