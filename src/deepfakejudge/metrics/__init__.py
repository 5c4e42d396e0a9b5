"""Shared statistics: detection metrics, judge agreement, bootstrap confidence intervals.

Pure functions over plain sequences (lists or numpy arrays); no model code, no I/O. Every
multi-figure result is a frozen dataclass with a JSON-safe `to_dict()` (None where undefined).
"""

from deepfakejudge.metrics._common import Result
from deepfakejudge.metrics.agreement import (
    PairwiseAccuracy,
    PointwiseAgreement,
    cohen_kappa,
    krippendorff_alpha,
    pairwise_accuracy,
    pointwise_agreement,
)
from deepfakejudge.metrics.bootstrap import BootstrapCI, bootstrap_ci, bootstrap_cis
from deepfakejudge.metrics.detection import (
    ECE_BINS,
    PARSED_ONLY,
    POLICIES,
    UNPARSABLE_AS_MISS,
    DetectionMetrics,
    ProbabilityMetrics,
    ReliabilityBin,
    detection_breakdown,
    detection_policies,
    detection_report,
    with_policy,
)

__all__ = [
    "ECE_BINS",
    "PARSED_ONLY",
    "POLICIES",
    "UNPARSABLE_AS_MISS",
    "BootstrapCI",
    "DetectionMetrics",
    "PairwiseAccuracy",
    "PointwiseAgreement",
    "ProbabilityMetrics",
    "ReliabilityBin",
    "Result",
    "bootstrap_ci",
    "bootstrap_cis",
    "cohen_kappa",
    "detection_breakdown",
    "detection_policies",
    "detection_report",
    "krippendorff_alpha",
    "pairwise_accuracy",
    "pointwise_agreement",
    "with_policy",
]
