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

from .table import INPUT_MARGIN_MODES, is_affine, margin_table  # noqa: E402

__all__ += ["INPUT_MARGIN_MODES", "is_affine", "margin_table"]
