"""DFJ-Detect: run a VLM as a real/fake detector, read other detectors' prediction files, score
them (F1, accuracy, CIs, per source and kind, p_fake ranking and calibration) and compare."""

from .detector import CHOICES, Detector, DetectVerdict, detect_counts
from .predictions import Gold, Prediction, PredictionFile, load_gold, read_predictions, resolve_gold
from .scoring import (
    DetectionScore,
    compare_csv,
    compare_markdown,
    compare_rows,
    score_markdown,
    score_predictions,
)

__all__ = [
    "CHOICES",
    "DetectVerdict",
    "DetectionScore",
    "Detector",
    "Gold",
    "Prediction",
    "PredictionFile",
    "compare_csv",
    "compare_markdown",
    "compare_rows",
    "detect_counts",
    "load_gold",
    "read_predictions",
    "resolve_gold",
    "score_markdown",
    "score_predictions",
]
