"""Lower bounds on the robust loss of classifiers built on a fixed feature extractor.

Implements "Lower Bounds on the Robustness of Fixed Feature Extractors to Test-Time Adversaries":
conflict graphs over training points (Lemma 1), optimal 0-1 / cross-entropy losses over the polytope
{0 <= q <= 1, B q <= 1}, collision finding (closed form for linear layers, Algorithms 1/2 for ReLU
networks, every collision verified) and the layer-wise analysis of section 4. See docs/bounds.md.
"""

from .budgets import all_pairs, first_relu_lower_bound, injective_tail, pair_budgets
from .collisions import (CollisionResult, find_collisions, linear_closed_form, pairwise_input_budgets, row_basis,
                         verify_collisions)
from .extractors import AffineStage, FeatureChain, analysis_layers, feature_chain
from .graph import (BoundCurves, ConflictGraph, PairBudgets, bound_curves, conflict_graph, cross_entropy_bound,
                    zero_one_bound)
from .layerwise import LayerwiseResult, balanced_subset, compare_layerwise, layerwise_bounds
from .presets import PRESETS, BoundsPreset, ModelRecipe, build_extractor, get_preset, run_preset

__all__ = [
    "AffineStage", "BoundCurves", "CollisionResult", "ConflictGraph", "FeatureChain", "LayerwiseResult",
    "PairBudgets", "all_pairs", "balanced_subset", "analysis_layers", "bound_curves", "compare_layerwise", "conflict_graph",
    "cross_entropy_bound", "feature_chain", "find_collisions", "layerwise_bounds", "linear_closed_form",
    "pair_budgets", "pairwise_input_budgets", "row_basis", "verify_collisions", "zero_one_bound",
    "first_relu_lower_bound", "injective_tail", "PRESETS", "BoundsPreset", "ModelRecipe", "build_extractor",
    "get_preset", "run_preset",
]
