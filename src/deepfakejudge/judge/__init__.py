"""Pointwise and pairwise judges over one backend: two prompt+parser pairs, one model wrapper."""

from ..tasks import MODES
from .pairwise import PairwiseJudge, combine
from .pointwise import PointwiseJudge

__all__ = ["MODES", "PairwiseJudge", "PointwiseJudge", "combine"]
