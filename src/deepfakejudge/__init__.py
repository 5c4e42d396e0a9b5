"""deepfakejudge: judge whether a deepfake detector's explanation is right and grounded.

Implements the system of "Pixels Don't Lie (But Your Detector Might)" (DeepfakeJudge, CVPR 2026).
"""

from ._version import __version__
from .data import load_records
from .judge import PairwiseJudge, PointwiseJudge
from .parsing import parse_choice, parse_prediction, parse_score
from .prompts import default_template, load_template
from .records import Artifact, Box, PairwiseVerdict, PointwiseVerdict, RowError, Sample

__all__ = [
    "Artifact",
    "Box",
    "PairwiseJudge",
    "PairwiseVerdict",
    "PointwiseJudge",
    "PointwiseVerdict",
    "RowError",
    "Sample",
    "__version__",
    "default_template",
    "load_records",
    "load_template",
    "parse_choice",
    "parse_prediction",
    "parse_score",
]
