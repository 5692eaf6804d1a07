"""The batched descent engine (:mod:`marginkit.bounds.batched`) against the per-pair Clarabel engine.

The batched solver accepts a cone program's answer only with a KKT certificate (then it is THE optimum and
its sign duals are the unique ones), so the descent must take the same path: same budgets (to solver
precision), the same number of programs and statuses (up to ties at the stall test); uncertified
programs go to Clarabel.
"""

import numpy as np
import pytest
import torch

import marginkit.bounds.batched as BT
from marginkit.bounds import feature_chain, find_collisions
from marginkit.bounds.batched import program_tensors, solve_polytopes
from marginkit.bounds.collisions import _ClarabelProgram, _Geometry, _initial_patterns
from marginkit.models import ModelSpec, build_model
from marginkit.norms import Norm


def _net(n_in, hidden, depth, seed):
    return build_model(ModelSpec("mlp", (n_in,), 2, hidden=hidden, depth=depth), seed=seed).eval()


@pytest.mark.parametrize("n_in,hidden,depth,layer,seed", [
    (6, 5, 1, "relu1", 0), (6, 5, 2, "relu2", 1), (8, 6, 3, "relu3", 2), (5, 4, 2, "fc2", 3), (3, 6, 2, "relu2", 4)])
def test_batched_descent_takes_the_per_pair_path(n_in, hidden, depth, layer, seed):
    model = _net(n_in, hidden, depth, seed)
    ch = feature_chain(model, layer, (n_in,))
    rng = np.random.default_rng(seed)
    u, v = rng.uniform(0, 1, (40, n_in)), rng.uniform(0, 1, (40, n_in))
    ref = find_collisions(ch, u, v, engine="per-pair", return_delta=True)
    got = find_collisions(ch, u, v, engine="batched", return_delta=True)
    assert got.settings["engine"] == "batched" and ref.settings["engine"] == "per-pair"
    np.testing.assert_allclose(got.budget, ref.budget, atol=1e-6, rtol=1e-6)
    # same path: a pair may stop one program apart where the stall test (eps >= eps_old - 1e-9) sits on its
    # edge; solver noise of 1e-10 decides it either way
    assert np.mean(got.iterations == ref.iterations) >= 0.95
    assert np.mean([a == b for a, b in zip(got.status, ref.status)]) >= 0.95
    assert got.settings["fallback_programs"] < got.programs  # most programs certified without Clarabel
    mid = 0.5 * np.linalg.norm(u - v, axis=1)
    assert np.all(got.budget <= mid + 1e-12) and (got.budget < mid - 1e-6).any()
    with torch.no_grad():
        fu = ch(torch.from_numpy(u + got.delta_u))
        fv = ch(torch.from_numpy(v + got.delta_v))
    assert torch.allclose(fu, fv, atol=1e-5)


def test_certified_programs_equal_clarabels_optimum_and_duals():
    model = _net(7, 6, 2, 7)
    ch = feature_chain(model, "relu2", (7,))
    geo = _Geometry.build(ch, Norm.L2, None)
    rng = np.random.default_rng(7)
    u, v = rng.uniform(0, 1, (30, 7)), rng.uniform(0, 1, (30, 7))
    pats = [_initial_patterns(geo, u[i], v[i]) for i in range(30)]
    relu = [st.relu for st in ch.stages]
    PU = [torch.from_numpy(np.stack([p[0][s] for p in pats])) if relu[s] else None for s in range(len(relu))]
    PV = [torch.from_numpy(np.stack([p[1][s] for p in pats])) if relu[s] else None for s in range(len(relu))]
    mats = [(torch.from_numpy(L), torch.from_numpy(k)) for L, k in geo.mats]
    data = program_tensors(mats, relu, torch.from_numpy(ch.stages[0].dense()[0]), None, torch.from_numpy(u),
                           torch.from_numpy(v), PU, PV)
    sol = solve_polytopes(*data[:8], strict=True)  # strict: unique optimum and duals, comparable entry by entry
    assert sol.ok.sum() >= 20
    prog = _ClarabelProgram(geo)
    for i in np.flatnonzero(sol.ok.numpy()):
        prog.set(u[i], v[i], pats[i][0], pats[i][1])
        assert prog.solve()
        assert abs(prog.value - float(sol.t[i])) <= 1e-7 * max(1.0, prog.value)
        zu = np.concatenate([prog.duals(s)[0] for s in range(len(relu)) if relu[s]])
        zv = np.concatenate([prog.duals(s)[1] for s in range(len(relu)) if relu[s]])
        scale = max(1.0, np.abs(zu).max(), np.abs(zv).max())
        # equal to the interior point's accuracy, and the same ReLUs above the flip threshold
        np.testing.assert_allclose(sol.zu[i].numpy(), zu, atol=1e-3 * scale)
        np.testing.assert_allclose(sol.zv[i].numpy(), zv, atol=1e-3 * scale)
        assert np.array_equal(sol.zu[i].numpy() > 1e-6 * scale, zu > 1e-6 * scale)
        assert np.array_equal(sol.zv[i].numpy() > 1e-6 * scale, zv > 1e-6 * scale)


def test_uncertified_programs_fall_back_to_clarabel(monkeypatch):
    model = _net(6, 5, 2, 1)
    ch = feature_chain(model, "relu2", (6,))
    rng = np.random.default_rng(1)
    u, v = rng.uniform(0, 1, (12, 6)), rng.uniform(0, 1, (12, 6))
    ref = find_collisions(ch, u, v, engine="per-pair")
    solve = BT.solve_polytopes

    def refuse(*a, **k):  # no certificate at all: every program must be solved by Clarabel
        sol = solve(*a, **k)
        sol.ok[:] = False
        sol.bu.fill_(np.nan)
        return sol

    monkeypatch.setattr(BT, "solve_polytopes", refuse)
    got = find_collisions(ch, u, v, engine="batched")
    assert got.settings["fallback_programs"] == got.programs
    np.testing.assert_allclose(got.budget, ref.budget, atol=1e-8)


def test_engine_option_is_checked():
    model = _net(4, 3, 1, 0)
    ch = feature_chain(model, "relu1", (4,))
    u = np.zeros((1, 4))
    with pytest.raises(ValueError, match="engine"):
        find_collisions(ch, u, u + 0.5, engine="gpu")
    with pytest.raises(ValueError, match="batched"):
        find_collisions(ch, u, u + 0.5, engine="batched", bounds=(0.0, 1.0))
