"""Text-overlap metrics against the gold rationale: BLEU-3 (sacrebleu) and BERTScore F1.

BLEU-3 is sacrebleu's BLEU with max n-gram order 3 and its defaults otherwise (13a tokenisation,
exponential smoothing), reported on a 0–1 scale as in the paper's table (sacrebleu's 0–100 / 100):
the corpus figure over all explanations, and the mean of sentence-level BLEU with effective order
(a short explanation is not zeroed for lacking 3-grams). Each comes with sacrebleu's signature
(`nrefs:1|case:mixed|eff:no|tok:13a|smooth:exp|version:…`), printed with the table.

BERTScore is bert-score's F1, rescaled with its baseline when one exists for the model and layer
(see `models.bert_scorer`), the raw F1 beside it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from ..errors import MissingExtra
from .models import BertScorer, BertScores


@dataclass(frozen=True)
class Bleu3:
    corpus: float
    sentence_mean: float
    sentences: tuple[float, ...]
    signature: str  # of the corpus figure
    sentence_signature: str = ""  # of the sentence-level figures (eff:yes)


def bleu3(candidates: Sequence[str], references: Sequence[str]) -> Bleu3:
    try:
        from sacrebleu.metrics import BLEU
    except ImportError as exc:
        raise MissingExtra("sacrebleu is not installed; pip install 'deepfakejudge[reason]'") from exc
    if len(candidates) != len(references) or not candidates:
        raise ValueError(f"bleu3: need as many candidates as references (> 0), got {len(candidates)} and {len(references)}")
    corpus = BLEU(max_ngram_order=3)
    sentence = BLEU(max_ngram_order=3, effective_order=True)
    per = tuple(sentence.sentence_score(c, [r]).score / 100 for c, r in zip(candidates, references))
    return Bleu3(
        corpus=corpus.corpus_score(list(candidates), [list(references)]).score / 100,
        sentence_mean=sum(per) / len(per),
        sentences=per,
        signature=str(corpus.get_signature()),
        sentence_signature=str(sentence.get_signature()),
    )


def bertscore(scorer: BertScorer, candidates: Sequence[str], references: Sequence[str]) -> BertScores:
    """Per-pair BERTScore F1, raw and (when the scorer has a baseline) rescaled, with a loaded
    scorer from `models.bert_scorer`."""
    return scorer.score(list(candidates), list(references))


def bertscore_f1(scorer: BertScorer, candidates: Sequence[str], references: Sequence[str]) -> tuple[float, ...]:
    """Per-pair BERTScore F1 as reported: rescaled when the scorer has a baseline, raw otherwise."""
    return bertscore(scorer, candidates, references).headline
