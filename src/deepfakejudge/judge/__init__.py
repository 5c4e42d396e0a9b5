"""Pointwise and pairwise judges over one backend: two prompt+parser pairs, one model wrapper."""

from .pairwise import PairwiseJudge, combine
from ..tasks import MODES
from .pointwise import PointwiseJudge

__all__ = ["MODES", "PairwiseJudge", "PointwiseJudge", "combine"]
