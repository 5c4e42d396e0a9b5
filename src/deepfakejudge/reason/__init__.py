"""DFJ-Reason: how good are a detector's explanations? BLEU-3 and BERTScore against the gold
rationale, the DFJ judge score, and a reference-guided check against the gold annotations
(label, evidence recall, unsupported claims, spatial consistency) that needs no VLM."""

from ..errors import MissingExtra
from .models import (
    BertScorer,
    BertScores,
    BertScoreSetting,
    Unavailable,  # the old name of MissingExtra
    bert_scorer,
    default_minilm_path,
    resolve_baseline,
    sentence_encoder,
)
from .overlap import Bleu3, bertscore, bertscore_f1, bleu3
from .reference import ReferenceCheck, check
from .report import Metric, ReasonConfig, ReasonReport, csv_text, markdown, reason_items, score_reasoning
from .text import explanation, sentences

__all__ = [
    "BertScoreSetting",
    "BertScorer",
    "BertScores",
    "Bleu3",
    "Metric",
    "MissingExtra",
    "ReasonConfig",
    "ReasonReport",
    "ReferenceCheck",
    "Unavailable",
    "bert_scorer",
    "bertscore",
    "bertscore_f1",
    "bleu3",
    "check",
    "csv_text",
    "default_minilm_path",
    "explanation",
    "markdown",
    "reason_items",
    "resolve_baseline",
    "score_reasoning",
    "sentence_encoder",
    "sentences",
]
