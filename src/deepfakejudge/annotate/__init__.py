"""Annotation and review app (`dfj annotate`): dense DFJ-Reason-style annotations (class, boxes
with category and referring expression, gold rationale), human ratings of explanations
(pointwise 1-5, pairwise A/B), review of judge and detector results, inter-annotator agreement,
export to canonical JSONL.

Modules: `db` (schema, engine), `store` (datasets, annotators), `assignment`, `work` (validate and
save one annotation, version check), `agreement`, `exchange` (export/import), `review`,
`taxonomy`, `app` (FastAPI app, security), `api` (JSON routes), `pages` (HTML routes),
`project` (open a project, export it). Needs the `annotate` extra.
"""

from .agreement import Rating, agreement_report, iou, match_boxes
from .taxonomy import DEFAULT_TAXONOMY, Taxonomy, load_taxonomy

__all__ = ["DEFAULT_TAXONOMY", "Rating", "Taxonomy", "agreement_report", "iou", "load_taxonomy", "match_boxes"]
