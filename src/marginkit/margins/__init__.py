"""Margins: logit and feature margins from one forward pass, exact input margins of affine models."""

from .affine import AffineMargin, affine_input_margin, affine_input_margin_solver, affine_map_or_none, affine_parameters, is_affine
from .estimators import ESTIMATORS, check_estimator, resolve_estimator
from .robust import BracketRobustness, bracket_robustness, robust_accuracy, robust_accuracy_curve
from .output import (
    OutputMargins,
    equidistance_summary,
    feature_margin,
    head_distances,
    hyperplane_distances,
    logit_margin,
    output_margins,
    pairwise_gaps,
)

__all__ = [
    "ESTIMATORS",
    "AffineMargin",
    "OutputMargins",
    "affine_input_margin",
    "affine_input_margin_solver",
    "affine_map_or_none",
    "check_estimator",
    "affine_parameters",
    "equidistance_summary",
    "feature_margin",
    "head_distances",
    "hyperplane_distances",
    "is_affine",
    "logit_margin",
    "output_margins",
    "pairwise_gaps",
    "resolve_estimator",
    "robust_accuracy",
    "BracketRobustness",
    "bracket_robustness",
    "robust_accuracy_curve",
]
