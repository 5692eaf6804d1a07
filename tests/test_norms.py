import math

import cvxpy as cp
import numpy as np
import pytest
import torch

from marginkit.norms import Norm, as_norm, batch_norm, dual, project_ball, steepest_direction


@pytest.mark.parametrize("spelling,expected", [("l2", Norm.L2), (2, Norm.L2), ("inf", Norm.LINF),
                                               (float("inf"), Norm.LINF), ("L1", Norm.L1), (Norm.L1, Norm.L1)])
def test_as_norm_spellings(spelling, expected):
    assert as_norm(spelling) is expected


def test_unknown_norm_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown norm"):
        as_norm("l3")


def test_dual_pairs():
    assert dual("l1") is Norm.LINF and dual("linf") is Norm.L1 and dual("l2") is Norm.L2
    assert Norm.LINF.p == math.inf


def test_batch_norm_matches_numpy():
    g = torch.Generator().manual_seed(0)
    d = torch.randn(4, 3, 5, generator=g, dtype=torch.float64)
    flat = d.reshape(4, -1).numpy()
    for norm, ordv in [("l1", 1), ("l2", 2), ("linf", np.inf)]:
        np.testing.assert_allclose(batch_norm(d, norm).numpy(), np.linalg.norm(flat, ord=ordv, axis=1))


@pytest.mark.parametrize("norm", ["l1", "l2", "linf"])
def test_steepest_direction_attains_dual_norm(norm):
    """<g, d> = ||g||_dual with ||d||_p = 1: the defining property of the steepest direction."""
    g = torch.randn(6, 10, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    d = steepest_direction(g, norm)
    np.testing.assert_allclose(batch_norm(d, norm).numpy(), 1.0)
    np.testing.assert_allclose((g * d).sum(1).numpy(), batch_norm(g, dual(norm)).numpy(), rtol=1e-12)


@pytest.mark.parametrize("norm", ["l1", "l2", "linf"])
def test_project_ball_is_the_euclidean_projection(norm):
    gen = torch.Generator().manual_seed(2)
    v = torch.randn(5, 8, generator=gen, dtype=torch.float64)
    eps = torch.tensor([0.1, 0.5, 1.0, 2.0, 50.0], dtype=torch.float64)
    p = project_ball(v, eps, norm)
    for i in range(5):
        x = cp.Variable(8)
        cons = [cp.norm(x, {"l1": 1, "l2": 2, "linf": "inf"}[norm]) <= float(eps[i])]
        cp.Problem(cp.Minimize(cp.sum_squares(x - v[i].numpy())), cons).solve(
            solver=cp.CLARABEL, tol_gap_abs=1e-10, tol_gap_rel=1e-10, tol_feas=1e-10)
        np.testing.assert_allclose(p[i].numpy(), x.value, atol=1e-6)
