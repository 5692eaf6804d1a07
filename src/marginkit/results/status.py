"""The one status vocabulary of a per-sample input margin (the ``status`` column of the results table).

=================  =======================================================================================
status             meaning
=================  =======================================================================================
``exact``          lower == upper: closed form (affine models) or a proven optimum (MILP); ``inf`` when
                   no point of the input box changes the decision
``bracketed``      a certified lower bound and a verified upper bound that differ
``upper-only``     a verified flipping perturbation (upper bound), no certified lower bound computed
``lower-only``     a certified lower bound, no flipping perturbation found
``failed``         neither: no flip found within the budget and nothing certified (upper ``inf``)
``misclassified``  the reference is the label and the clean input is already misclassified (margin 0)
``not_computed``   the input margin was not asked for
=================  =======================================================================================

Upper bounds are always norms of points that were re-checked to flip under a plain forward pass;
lower bounds are always certified (bound propagation or a solver's proven bound). A failure is never
reported as a margin of 0 or as the clean input.
"""

from __future__ import annotations

import math

__all__ = ["STATUSES", "EXACT", "BRACKETED", "UPPER_ONLY", "LOWER_ONLY", "FAILED", "MISCLASSIFIED",
           "NOT_COMPUTED", "status_of"]

EXACT = "exact"
BRACKETED = "bracketed"
UPPER_ONLY = "upper-only"
LOWER_ONLY = "lower-only"
FAILED = "failed"
MISCLASSIFIED = "misclassified"
NOT_COMPUTED = "not_computed"
STATUSES = (EXACT, BRACKETED, UPPER_ONLY, LOWER_ONLY, FAILED, MISCLASSIFIED, NOT_COMPUTED)


def status_of(lower: float, upper: float, *, rtol: float = 0.0) -> str:
    """Status of one bracket: ``lower`` certified (NaN when not computed), ``upper`` verified (inf when none).

    ``rtol`` lets a solver's proven optimum, whose bound and incumbent agree to its tolerance, count as exact.
    """
    if lower == math.inf and upper == math.inf:
        return EXACT
    has_lower = not math.isnan(lower) and lower > 0
    has_upper = math.isfinite(upper)
    if has_lower and has_upper:
        return EXACT if upper - lower <= rtol * max(abs(upper), 1e-12) else BRACKETED
    if has_upper:
        return UPPER_ONLY
    if has_lower:
        return LOWER_ONLY
    return FAILED
