"""Certified lower bounds and exact input margins for feed-forward ReLU networks.

- :mod:`.network`: a ``nn.Sequential`` classifier read as affine maps with ReLUs between them.
- :mod:`.propagation`: IBP, CROWN and alpha-CROWN bounds over l_p balls intersected with the input box.
- :mod:`.radius`: the certified radius per sample by bisection up to a verified upper bound.
- :mod:`.bab`: branch and bound over ReLU phases (beta-CROWN-style splits) for tighter bounds and radii.
- :func:`certify`: the per-sample bracket [lower, upper] with statuses, for the results table.
- :func:`exact_margin`: exact margins of small networks by mixed-integer programming (:mod:`.exact`);
  :func:`enumerate_margin`: by enumerating activation regions (tiny networks, the test oracle).
"""

from __future__ import annotations

from .bab import BabOptions, BabResult, bab_bounds, bab_radius
from .certify import CertifyResult, certify
from .enumerate import EnumerationResult, enumerate_margin
from .exact import ExactResult, exact_margin
from .network import Affine, ReluNetwork, UnsupportedLayerError, as_relu_network
from .propagation import METHODS, preactivation_bounds, spec_lower_bounds
from .radius import RadiusResult, certified_radius

__all__ = ["Affine", "ReluNetwork", "UnsupportedLayerError", "as_relu_network", "METHODS", "preactivation_bounds",
           "spec_lower_bounds", "RadiusResult", "certified_radius", "CertifyResult", "certify", "ExactResult",
           "exact_margin", "EnumerationResult", "enumerate_margin", "BabOptions", "BabResult", "bab_bounds", "bab_radius"]
