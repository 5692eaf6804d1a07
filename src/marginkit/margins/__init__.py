"""Margins: logit and feature margins from one forward pass, exact input margins of affine models."""

from .affine import AffineMargin, affine_input_margin, affine_input_margin_solver, affine_parameters
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
    "AffineMargin",
    "OutputMargins",
    "affine_input_margin",
    "affine_input_margin_solver",
    "affine_parameters",
    "equidistance_summary",
    "feature_margin",
    "head_distances",
    "hyperplane_distances",
    "logit_margin",
    "output_margins",
    "pairwise_gaps",
]
