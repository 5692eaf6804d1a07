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


def test_a_sign_row_pinned_by_the_equality_is_certified_with_a_capped_dual():
    # min max(|bu|, |bv|)  s.t.  bu_1 + bv_1 = 2, bu_0 = 0.5 (feature equality);  bu_0 - 0.5 >= 0 is implied by
    # the equality (zero on the whole feasible set), so its multiplier is unbounded: no analytic centre exists.
    # Closed form: bu = (0.5, 0.9375), bv = (0, 1.0625), t = 1.0625 (both sides balanced).
    f = lambda rows: torch.tensor([rows], dtype=torch.float64)  # noqa: E731
    Eu, Ev, e = f([[0.0, 1.0], [1.0, 0.0]]), f([[0.0, -1.0], [0.0, 0.0]]), f([2.0, 0.5])
    Gu, gu = f([[1.0, 0.0], [0.0, 1.0]]), f([-0.5, 5.0])
    Gv, gv = f([[1.0, 0.0]]), f([5.0])
    sol = solve_polytopes(Eu, Ev, e, torch.ones(1, 2, dtype=torch.bool), Gu, gu, Gv, gv)
    assert bool(sol.ok[0])
    np.testing.assert_allclose(sol.bu[0].numpy(), [0.5, 0.9375], atol=1e-9)
    np.testing.assert_allclose(sol.bv[0].numpy(), [0.0, 1.0625], atol=1e-9)
    assert abs(float(sol.t[0]) - 1.0625) <= 1e-9
    z = float(sol.zu[0, 0])
    # a finite positive multiplier (an interior point of the ray, as an interior-point solver reports one);
    # the inactive rows' multipliers are zero
    assert 0 < z < 10 and float(sol.zu[0, 1]) == 0 and float(sol.zv[0, 0]) == 0
    strict = solve_polytopes(Eu, Ev, e, torch.ones(1, 2, dtype=torch.bool), Gu, gu, Gv, gv, strict=True)
    assert not bool(strict.ok[0])  # not unique: the strict mode hands it to Clarabel


def test_analytic_centre_of_a_half_line_is_capped():
    nu = torch.tensor([[0.3, -0.2, 0.0]], dtype=torch.float64)
    n = torch.tensor([[0.0, 1.0, 0.5]], dtype=torch.float64)  # rows 1, 2 grow with alpha: a half-line
    sign = torch.tensor([[True, True, True]])
    alpha, usable = BT._analytic_center(nu, n, sign, torch.tensor([1.0], dtype=torch.float64))
    assert bool(usable[0])
    val = nu + alpha[:, None] * n
    assert (val[0, 1:] > 0).all() and float(val[0, 0]) == 0.3  # feasible, the fixed row untouched
    # the cap: the largest moving multiplier at the feasible end (alpha = 0.2: 0.1) plus the unit
    # (max(1, the fixed rows' 0.3) = 1), so every moving multiplier stays below 1.1
    assert float(val[0, 1:].max()) < 1.1
    # a bounded segment is not capped: its centre is the plain analytic centre (here the midpoint)
    n2 = torch.tensor([[0.0, 1.0, -1.0]], dtype=torch.float64)
    nu2 = torch.tensor([[0.3, 0.0, 1.0]], dtype=torch.float64)
    alpha2, usable2 = BT._analytic_center(nu2, n2, sign, torch.tensor([1.0], dtype=torch.float64))
    assert bool(usable2[0]) and abs(float(alpha2[0]) - 0.5) < 1e-9


def test_dual_centre_of_an_unbounded_face_is_capped():
    # two null directions; row 1 grows along both: the face is unbounded
    nu0 = np.array([0.5, 0.0, 0.2, 0.1])
    N = np.array([[0.0, 0.0], [1.0, 1.0], [1.0, -1.0], [0.0, 1.0]])
    sign = np.array([True, True, True, True])
    centre = BT._dual_center_np(nu0, N, sign, 1.0)
    assert centre is not None
    assert (centre > 0).all() and centre[0] == 0.5 and centre.max() < 10
    assert BT._dual_center_np(np.array([-1.0, 0.0]), np.array([[0.0], [1.0]]), np.array([True, True]), 1.0) is None
