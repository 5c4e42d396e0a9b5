"""`dfj reproduce`: the paper's protocols run with the released judges, our figures beside the
paper's (`paper.py` holds the published numbers; `report.py` computes ours from results files)."""

from .paper import PAPER, RELEASED, SIZES, TABLES, PaperTable, paper_row
from .report import Comparison, Row, render_markdown, to_json

__all__ = ["PAPER", "RELEASED", "SIZES", "TABLES", "Comparison", "PaperTable", "Row", "paper_row",
           "render_markdown", "to_json"]
