"""Paper Theorem 2, numerically: phi + lambda * (H_tau - H_0) keeps the Bayes sign for every eta != 1/2.

Conditional risk C_eta(a) = eta * l(a) + (1 - eta) * l(-a) (Bartlett et al. 2006; the paper's
"phi(1 - alpha)" is a typo for phi(-alpha)). Fisher consistency (eq. 12): the infimum over the wrong
sign, a (2 eta - 1) <= 0, is strictly above the overall infimum.
"""

import numpy as np
import pytest
from scipy.optimize import minimize_scalar

LOSSES = {
    "logistic": lambda a: np.logaddexp(0.0, -a),
    "exponential": lambda a: np.exp(-a),
    "hinge": lambda a: np.maximum(0.0, 1.0 - a),
}


def amr_psi(a, tau):
    """psi = H_tau - H_0 = tau - [a]_0^tau (eq. 10 up to its sign typo: -[t]_0^tau = H_tau - H_0 - tau)."""
    return np.maximum(0.0, tau - a) - np.maximum(0.0, -a)


def consistency_gap(loss, eta, lam, tau, grid=np.linspace(-30, 30, 120001)):
    """inf over the wrong sign minus overall inf of the conditional risk (grid + bounded refinement)."""
    risk = lambda a: eta * loss(a) + (1 - eta) * loss(-a) + lam * (eta * amr_psi(a, tau) + (1 - eta) * amr_psi(-a, tau))
    vals = risk(grid)
    right = grid * (2 * eta - 1) > 0
    best_all = vals.min()
    best_wrong = vals[~right].min()
    # refine both infima with a bounded scalar minimiser around the grid minimisers
    for mask in (right, ~right):
        a0 = grid[mask][vals[mask].argmin()]
        lo, hi = (a0 - 0.01, a0 + 0.01)
        if mask is not right:
            lo, hi = (min(lo, 0.0), min(hi, 0.0)) if eta > 0.5 else (max(lo, 0.0), max(hi, 0.0))
        r = minimize_scalar(risk, bounds=(lo, hi), method="bounded") if hi > lo else None
        if r is not None and r.success:
            if mask is right:
                best_all = min(best_all, r.fun)
            else:
                best_wrong = min(best_wrong, r.fun)
                best_all = min(best_all, r.fun)
    return best_wrong - best_all, grid[vals.argmin()]


@pytest.mark.parametrize("name", sorted(LOSSES))
@pytest.mark.parametrize("lam", [0.0, 0.1, 1.0, 10.0])
@pytest.mark.parametrize("tau", [0.5, 5.0])
def test_regularised_losses_are_fisher_consistent(name, lam, tau):
    for eta in (0.05, 0.3, 0.45, 0.55, 0.7, 0.95):
        gap, argmin = consistency_gap(LOSSES[name], eta, lam, tau)
        assert gap > 1e-6, (name, lam, tau, eta, gap)
        assert np.sign(argmin) == np.sign(2 * eta - 1)  # the risk minimiser has the Bayes sign


def test_the_check_detects_an_inconsistent_loss():
    # The perceptron-like loss max(0, -a) has no negative slope at 0 (violates phi'(0) < 0): its
    # conditional risk is minimised at a = 0 for every eta, so the gap is zero and the check must fail.
    perceptron = lambda a: np.maximum(0.0, -a)
    gap, _ = consistency_gap(perceptron, 0.7, 0.0, 1.0)
    assert gap < 1e-9
