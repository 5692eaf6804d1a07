"""Soundness of the collision search against exhaustive enumeration, and a mutation test of the verifier.

* on tiny networks the descent's loss bound is <= the bound from exhaustive enumeration (every activation
  polytope solved: the exact eps_f), because the descent's budgets are verified upper bounds on eps_f;
* with the collision verifier deliberately broken (it accepts anything) and the cone program returning a
  point that is NOT a collision, the independent checks of this suite fail; with the verifier intact they
  pass (the verifier is what keeps the search sound).
"""

import numpy as np
import pytest
import torch

import marginkit.bounds.collisions as C
from marginkit.bounds import bound_curves, feature_chain, find_collisions, pair_budgets
from marginkit.models import ModelSpec, build_model, truncate

GRID = [0.1, 0.2, 0.3, 0.45]


@pytest.fixture(scope="module")
def tiny():
    model = build_model(ModelSpec("mlp", (4,), 2, hidden=2, depth=2), seed=5).eval()
    rng = np.random.default_rng(3)
    x = rng.uniform(0, 1, (10, 4))
    y = np.arange(10) % 2
    return model, x, y


def _violations(model, layer, u, v, res, exact) -> list[str]:
    """Checks that do not use the collision verifier: the features are recomputed with the ORIGINAL torch
    model, and no budget may be below the global minimum found by enumeration."""
    f = truncate(model, layer).double().eval()
    with torch.no_grad():
        fu = f(torch.from_numpy(u + res.delta_u))
        fv = f(torch.from_numpy(v + res.delta_v))
    out = []
    if not torch.allclose(fu, fv, atol=1e-5, rtol=1e-5):
        out.append("a returned collision is not one on the original model")
    if np.any(res.budget < exact - 1e-6):
        out.append("a budget is below the exact eps_f")
    return out


@pytest.mark.parametrize("layer, points", [("relu1", 10), pytest.param("relu2", 6, marks=pytest.mark.slow)])
def test_descent_bound_at_or_below_enumeration_bound(tiny, layer, points):
    model, x, y = tiny
    x, y = x[:points], y[:points]
    ch = feature_chain(model, layer, (4,))
    d = pair_budgets(ch, x, y, eps_grid=GRID, method="descent")
    e = pair_budgets(ch, x, y, eps_grid=GRID, method="enumerate")
    assert np.all(d.budget >= e.budget - 1e-6)  # enumeration gives the exact eps_f
    for eps in GRID:  # each conflict graph of the descent is a subgraph of the exact one
        assert set(map(tuple, d.graph(eps).edges)) <= set(map(tuple, e.graph(eps).edges))
    cd, ce = bound_curves(d, GRID, cross_entropy=False), bound_curves(e, GRID, cross_entropy=False)
    assert np.all(cd.zero_one <= ce.zero_one + 1e-9)
    assert ce.zero_one.max() > 0 and ce.zero_one.min() < ce.zero_one.max()  # the grid sees edges appear


@pytest.mark.parametrize("engine", ["per-pair", "batched"])
def test_a_broken_verifier_is_detected(tiny, monkeypatch, engine):
    from marginkit.bounds import batched as BT

    model, x, y = tiny
    ch = feature_chain(model, "relu1", (4,))
    u, v = x[y == 0], x[y == 1]
    exact = find_collisions(ch, u, v, method="enumerate").budget
    assert _violations(model, "relu1", u, v, find_collisions(ch, u, v, return_delta=True, engine=engine), exact) == []

    # the cone program now answers with a point halfway to the pair's start: not a collision
    primal = C._ClarabelProgram.primal
    monkeypatch.setattr(C._ClarabelProgram, "primal", lambda self: tuple(0.5 * b for b in primal(self)))
    solve = BT.solve_polytopes

    def halved(*a, **k):
        sol = solve(*a, **k)
        sol.bu, sol.bv = 0.5 * sol.bu, 0.5 * sol.bv
        return sol

    monkeypatch.setattr(BT, "solve_polytopes", halved)
    guarded = find_collisions(ch, u, v, return_delta=True, engine=engine)
    assert _violations(model, "relu1", u, v, guarded, exact) == []  # the verifier rejects them

    monkeypatch.setattr(C, "verify_collisions", lambda chain, u, *a, **k: np.ones(len(u), dtype=bool))
    broken = find_collisions(ch, u, v, return_delta=True, engine=engine)
    assert _violations(model, "relu1", u, v, broken, exact) != []  # ... and the suite notices when it does not


def test_first_relu_certificate_never_contradicts_the_exact_distance():
    """first_relu_lower_bound claims eps_f > eps; enumeration gives eps_f exactly (one ReLU stage, then a
    full-column-rank linear map, which adds no collision)."""
    from marginkit.bounds import first_relu_lower_bound
    from marginkit.bounds.budgets import injective_tail

    model = build_model(ModelSpec("mlp", (4,), 2, hidden=3, depth=1), seed=2).eval()
    ch = feature_chain(model, "relu1", (4,))
    rng = np.random.default_rng(4)
    u, v = rng.uniform(-1, 1, (30, 4)), rng.uniform(-1, 1, (30, 4))
    exact = find_collisions(ch, u, v, method="enumerate").budget
    eps = exact * rng.uniform(0.3, 1.3, 30)
    cert = first_relu_lower_bound(ch, u, v, eps)
    assert cert.any() and not cert.all()
    assert np.all(exact[cert] > eps[cert])
    lin = build_model(ModelSpec("mlp", (4,), 2, hidden=3, depth=2), seed=2).eval()
    with torch.no_grad():
        lin.fc2.weight.copy_(torch.eye(3) * 2.0)
    assert injective_tail(feature_chain(lin, "fc2", (4,))) is not None
    assert injective_tail(feature_chain(lin, "relu2", (4,))) is None


def test_settling_leaves_every_grid_graph_as_a_full_exact_search_has_it(tiny):
    """Pairs settled without a search (certified lower bound and verified upper bound in one grid interval)
    must not change any conflict graph on the grid: compare with enumeration on every pair."""
    model, x, y = tiny
    ch = feature_chain(model, "relu1", (4,))
    settled = pair_budgets(ch, x, y, eps_grid=GRID, method="enumerate")
    full = pair_budgets(ch, x, y, eps_grid=GRID, method="enumerate", settle=False)
    assert settled.info["settled"] > 0 and settled.info["settled_first_relu"] > 0
    for eps in GRID:
        assert np.array_equal(settled.graph(eps).edges, full.graph(eps).edges)
