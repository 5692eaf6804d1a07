"""Margin consistency (seed paper: Ngnawe et al., "Detecting Brittle Decisions for Free").

* :mod:`.metrics` -- Kendall tau / Spearman rho with bootstrap CIs, non-robust detection (AUROC, AUPR
  as average precision and as trapezoid area, FPR@95), eps sweeps, the binned view of Fig. 2;
* :mod:`.algorithm1` -- robust accuracy (or vulnerable fraction) of a large set from the input
  margins of a small subset (Algorithm 1);
* :mod:`.pseudo_margin` -- a learned pseudo-margin for weakly consistent models (section 3.3);
* :mod:`.diagnostics` -- head equidistance (appendix B.5) and local isometry (Fig. 6);
* :mod:`.scoring` -- a deployable one-forward-pass vulnerability scorer;
* :mod:`.evaluate` -- the whole evaluation of a per-sample results table (Table 1);
* :mod:`.study` -- that evaluation plus the steps that need the model (pseudo-margin, equidistance,
  local isometry): what ``marginkit consistency`` runs.
"""

from .algorithm1 import (
    DEFAULT_ALPHAS,
    Algorithm1Evaluation,
    Algorithm1Result,
    algorithm1,
    algorithm1_repeats,
    estimate_robust_accuracy,
    estimate_vulnerability,
    subset_estimates,
    threshold_at_tpr,
    tune_threshold,
)
from .bracket import BracketSummary, bracket_markdown, bracket_summary
from .diagnostics import Isometry, head_equidistance, local_isometry
from .evaluate import ConsistencyReport, ScoreReport, compare_scores, evaluate_consistency
from .metrics import (
    PAPER_LINF_EPS,
    BinnedConsistency,
    Consistency,
    Correlation,
    DegenerateMetricError,
    DetectionMetrics,
    binned_consistency,
    detection_metrics,
    eps_sweep,
    finite_rows,
    fpr_at_tpr,
    margin_consistency,
    non_robust_labels,
)
from ..margins.robust import robust_accuracy
from .pseudo_margin import PseudoMargin, PseudoMarginConfig, representation
from .scores import SCORES, compute_score
from .scoring import Assessment, VulnerabilityScorer
from .study import ModelConsistency, model_consistency

__all__ = [
    "BracketSummary",
    "bracket_markdown",
    "bracket_summary",
    "DEFAULT_ALPHAS",
    "PAPER_LINF_EPS",
    "Algorithm1Evaluation",
    "Algorithm1Result",
    "Assessment",
    "BinnedConsistency",
    "Consistency",
    "ConsistencyReport",
    "Correlation",
    "DegenerateMetricError",
    "DetectionMetrics",
    "Isometry",
    "ModelConsistency",
    "PseudoMargin",
    "PseudoMarginConfig",
    "SCORES",
    "ScoreReport",
    "VulnerabilityScorer",
    "algorithm1",
    "algorithm1_repeats",
    "binned_consistency",
    "compare_scores",
    "compute_score",
    "detection_metrics",
    "eps_sweep",
    "estimate_robust_accuracy",
    "estimate_vulnerability",
    "evaluate_consistency",
    "finite_rows",
    "fpr_at_tpr",
    "head_equidistance",
    "local_isometry",
    "margin_consistency",
    "model_consistency",
    "non_robust_labels",
    "representation",
    "subset_estimates",
    "robust_accuracy",
    "threshold_at_tpr",
    "tune_threshold",
]
