"""Meta-evaluation: how well a judge agrees with gold or human scores (joins, figures, tables)."""

from .evaluate import Bootstrap, evaluate_pairwise, evaluate_pointwise, markdown

__all__ = ["Bootstrap", "evaluate_pairwise", "evaluate_pointwise", "markdown"]
