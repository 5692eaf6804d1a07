"""Exact margins by MILP: closed forms on affine models, enumeration on tiny ReLU networks, statuses."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from marginkit.margins.affine import affine_input_margin
from marginkit.margins.gap import is_flipped
from marginkit.verify import milp
from marginkit.verify.enumerate import enumerate_margin
from marginkit.verify.exact import exact_margin

from ._exact_nets import tiny_net, two_relu_net

SOLVERS = milp.available_solvers()
needs_scip = pytest.mark.skipif("scip" not in SOLVERS, reason="pyscipopt is not installed")


def assert_verified(model: nn.Module, x: torch.Tensor, res, norm: str) -> None:
    """Every exact row has a point that flips in float64 at distance upper, and lower <= upper."""
    lower, upper = res.lower.numpy(), res.upper.numpy()
    assert np.all(lower <= upper)
    p = {"l1": 1, "l2": 2, "linf": np.inf}[norm]
    ref = model.double()(x.double()).argmax(1)
    model.float()
    for s, st in enumerate(res.status):
        if st == "exact" and math.isfinite(upper[s]):
            pt = res.point[s:s + 1]
            assert torch.isfinite(pt).all()
            assert bool(is_flipped(model.double()(pt), ref[s:s + 1])[0])
            model.float()
            assert float(np.linalg.norm((pt[0] - x[s].double()).numpy(), p)) == pytest.approx(upper[s], rel=1e-9)


@pytest.mark.parametrize("solver", SOLVERS)
@pytest.mark.parametrize("norm", ["linf", "l1", "l2"])
def test_affine_models_match_the_closed_form(norm: str, solver: str) -> None:
    if norm == "l2" and solver != "scip":
        pytest.skip("HiGHS has no mixed-integer QP")
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(6, 4)).eval()
    x = torch.rand(4, 6)
    expected = affine_input_margin(model, x, None, norm).margin.numpy()
    res = exact_margin(model, x, None, norm, solver=solver)
    assert res.status == ["exact"] * 4
    ok = np.isfinite(expected)
    assert ok.any()
    np.testing.assert_allclose(res.lower.numpy()[ok], expected[ok], rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(res.upper.numpy()[ok], expected[ok], rtol=1e-4, atol=2e-5)
    assert np.array_equal(np.isfinite(res.upper.numpy()), ok)
    assert_verified(model, x, res, norm)


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("norm", ["linf", "l1", "l2"])
def test_milp_equals_enumeration_on_tiny_relu_networks(seed: int, norm: str) -> None:
    model = tiny_net(seed, (2, 4, 4, 3))
    x = torch.rand(3, 2, generator=torch.Generator().manual_seed(seed))
    truth = enumerate_margin(model, x, None, norm).margin
    assert np.isfinite(truth).all()
    for solver in SOLVERS if seed == 0 else SOLVERS[:1]:  # the fallback solver on one seed keeps this fast
        if norm == "l2" and solver != "scip":
            continue
        res = exact_margin(model, x, None, norm, solver=solver)
        assert res.status == ["exact"] * len(x), (solver, res.status, res.messages)
        lower, upper = res.lower.numpy(), res.upper.numpy()
        assert np.all(lower <= truth + 1e-6 * (1 + truth)), (solver, lower, truth)  # sound
        assert np.all(truth <= upper), (solver, upper, truth)  # the point flips, so truth <= its norm
        np.testing.assert_allclose(upper, truth, rtol=1e-4, atol=2e-5)
        assert_verified(model, x, res, norm)


def test_attack_upper_bound_is_the_cutoff() -> None:
    model = tiny_net(1)
    x = torch.rand(3, 3, generator=torch.Generator().manual_seed(1))
    truth = enumerate_margin(model, x, None, "linf").margin
    res = exact_margin(model, x, None, "linf", upper=torch.from_numpy(truth * 1.2))
    assert res.status == ["exact"] * 3
    np.testing.assert_allclose(res.upper.numpy(), truth, rtol=1e-4, atol=2e-5)
    # an upper bound that is already optimal (the caller's point) stays; the solver proves the rest
    tight = exact_margin(model, x, None, "linf", upper=torch.from_numpy(truth))
    assert tight.status == ["exact"] * 3
    np.testing.assert_allclose(tight.lower.numpy(), truth, rtol=1e-5, atol=1e-7)


def test_hand_built_network_and_misclassified_label() -> None:
    net = two_relu_net()
    x = torch.tensor([[0.5, 0.5], [0.5, 0.5]])
    res = exact_margin(net, x, torch.tensor([0, 1]), "linf")
    assert res.status == ["exact", "misclassified"]
    assert res.upper[0].item() == pytest.approx(0.15, rel=1e-4)
    assert res.lower[1].item() == 0.0 and res.upper[1].item() == 0.0


def test_nothing_in_the_box_flips_is_exact_inf() -> None:
    net = two_relu_net()
    with torch.no_grad():
        net[2].bias[0] = 5.0  # class 1 reaches at most 0.8 in the box
    res = exact_margin(net, torch.tensor([[0.5, 0.5]]), None, "l1")
    assert res.status == ["exact"] and math.isinf(res.lower[0].item()) and math.isinf(res.upper[0].item())


def test_time_out_keeps_a_bracket() -> None:
    # a 20-48-48-10 network is far beyond a 0.05 s budget; linf radius 1 covers the box, a valid upper bound
    model = tiny_net(4, (20, 48, 48, 10))
    x = torch.rand(2, 20, generator=torch.Generator().manual_seed(4))
    res = exact_margin(model, x, None, "linf", upper=1.0, time_limit=0.05)
    lower, upper = res.lower.numpy(), res.upper.numpy()
    assert np.all(lower <= upper)
    # out of time: the bracket [proven lower, given upper] (upper-only when the proof is still 0)
    assert set(res.status) <= {"exact", "bracketed", "upper-only"} and "exact" not in res.status
    assert all(m.endswith("[timeout]") for m in res.method)


def test_solver_time_out_with_an_incumbent_is_bracketed(monkeypatch: pytest.MonkeyPatch) -> None:
    model = tiny_net(0)
    x = torch.rand(2, 3, generator=torch.Generator().manual_seed(0))
    truth = enumerate_margin(model, x, None, "linf").margin
    real = milp._solve_scip if SOLVERS[0] == "scip" else milp._solve_highs

    def half_done(prog, gap, cutoff, time_limit):
        status, value, bound, xs = real(prog, gap, cutoff, time_limit)
        return ("timeout", value, 0.5 * bound, xs) if status == "optimal" else (status, value, bound, xs)

    monkeypatch.setattr(milp, f"_solve_{SOLVERS[0]}", half_done)
    res = exact_margin(model, x, None, "linf")
    assert res.status == ["bracketed"] * 2
    assert all(m.endswith("[timeout]") for m in res.method)
    assert np.all(res.lower.numpy() <= truth) and np.all(truth <= res.upper.numpy())
    assert np.all(res.lower.numpy() < res.upper.numpy())


def test_solver_failure_is_a_status_never_a_margin(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(*args, **kwargs):
        raise milp.SolverError("solver crashed")

    monkeypatch.setattr(milp, "_solve_scip", broken)
    monkeypatch.setattr(milp, "_solve_highs", broken)
    model = tiny_net(2)
    x = torch.rand(2, 3, generator=torch.Generator().manual_seed(2))
    res = exact_margin(model, x, None, "linf", upper=torch.tensor([0.3, math.inf], dtype=torch.float64))
    assert res.status == ["upper-only", "failed"]
    assert all(m.endswith("[failed]") for m in res.method)
    assert torch.isnan(res.lower).all() and torch.isnan(res.point).all()
    assert res.upper.tolist() == [0.3, math.inf]
    assert len(res.messages) == 2 and "crashed" in res.messages[0]
    cols = res.columns()
    assert set(cols) == {"input_margin_lower", "input_margin_upper", "status", "method", "seconds"}


def test_bad_input_is_named() -> None:
    model = tiny_net(0)
    x = torch.rand(2, 3)
    with pytest.raises(ValueError, match="upper bounds"):
        exact_margin(model, x, None, "linf", upper=-1.0)
    with pytest.raises(ValueError, match="unknown solver"):
        exact_margin(model, x, None, "linf", solver="gurobi")
    with pytest.raises(ImportError, match="SCIP"):
        exact_margin(model, x, None, "l2", solver="highs")
    with pytest.raises(ValueError, match="time_limit"):
        exact_margin(model, x, None, "linf", time_limit=0)
