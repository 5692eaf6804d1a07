import numpy as np
import pytest
import torch
from torch import nn

from marginkit.margins import affine_input_margin, affine_input_margin_solver, affine_parameters
from marginkit.models import ModelSpec, build_model
from marginkit.norms import batch_norm

NORMS = ("l1", "l2", "linf")


def _case(seed, n=16, c=4, d=10, scale=1.0):
    """A random affine model and inputs where the [0, 1] box is often active (points near the faces)."""
    g = torch.Generator().manual_seed(seed)
    model = build_model(ModelSpec("linear", (d,), c), seed=seed).double()
    with torch.no_grad():
        model.head.weight.mul_(scale)
    x = torch.rand(n, d, generator=g, dtype=torch.float64)
    x = torch.where(torch.rand(n, d, generator=g, dtype=torch.float64) < 0.4, x.round(), x)  # many pixels at 0 or 1
    return model, x


@pytest.mark.parametrize("norm", NORMS)
@pytest.mark.parametrize("bounds", [None, (0.0, 1.0)])
def test_exact_matches_maintained_solvers(norm, bounds):
    for seed in range(3):
        model, x = _case(seed)
        fast = affine_input_margin(model, x, norm=norm, bounds=bounds)
        ref = affine_input_margin_solver(model, x, norm=norm, bounds=bounds)
        np.testing.assert_allclose(fast.margin.numpy(), ref.margin.numpy(), rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("norm", NORMS)
def test_box_is_active_and_only_increases_the_margin(norm):
    model, x = _case(7, n=40)
    free = affine_input_margin(model, x, norm=norm, bounds=None).margin
    boxed = affine_input_margin(model, x, norm=norm, bounds=(0.0, 1.0)).margin
    assert (boxed >= free - 1e-12).all()
    assert (boxed > free * (1 + 1e-6)).any(), "test data should make the box matter somewhere"


@pytest.mark.parametrize("norm", NORMS)
def test_returned_delta_is_minimal_flips_and_stays_in_box(norm):
    model, x = _case(11, n=30)
    res = affine_input_margin(model, x, norm=norm, bounds=(0.0, 1.0), return_delta=True)
    finite = torch.isfinite(res.margin)
    assert finite.any()
    d = res.delta[finite]
    np.testing.assert_allclose(batch_norm(d, norm).numpy(), res.margin[finite].numpy(), rtol=1e-9, atol=1e-12)
    xa = x[finite] + d
    assert (xa >= -1e-12).all() and (xa <= 1 + 1e-12).all()
    with torch.no_grad():
        clean = model(x[finite]).argmax(1)
        logits = model(xa)
    ref_logit = logits.gather(1, clean[:, None]).squeeze(1)
    tgt_logit = logits.gather(1, res.target[finite][:, None]).squeeze(1)
    np.testing.assert_allclose((tgt_logit - ref_logit).numpy(), 0.0, atol=1e-9)  # lands on the boundary
    assert (res.target[finite] != clean).all()


@pytest.mark.parametrize("norm", NORMS)
def test_no_random_point_inside_the_margin_flips(norm):
    """Brute force: thousands of random box points strictly inside the exact margin keep the decision."""
    model, x = _case(5, n=6)
    res = affine_input_margin(model, x, norm=norm, bounds=(0.0, 1.0))
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        clean = model(x).argmax(1)
        for i in range(x.shape[0]):
            r = float(res.margin[i])
            if not np.isfinite(r):
                continue
            v = torch.randn(4000, x.shape[1], generator=g, dtype=torch.float64)
            if norm == "l1":
                v = v.sign() * torch.distributions.Exponential(1.0).sample(v.shape).double()
            v = v / batch_norm(v, norm)[:, None] * r * 0.999 * torch.rand(4000, 1, generator=g, dtype=torch.float64) ** 0.1
            pts = (x[i] + v).clamp(0, 1)  # clamping can only shrink the perturbation
            assert (model(pts).argmax(1) == clean[i]).all()


def test_unreachable_decision_gives_inf_not_zero():
    # class 0 wins everywhere in the box: logit_0 = 10, logit_1 = x_0 (at most 1)
    model = nn.Sequential(nn.Linear(2, 2)).double().eval()
    with torch.no_grad():
        model[0].weight.copy_(torch.tensor([[0.0, 0.0], [1.0, 0.0]]))
        model[0].bias.copy_(torch.tensor([10.0, 0.0]))
    x = torch.tensor([[0.5, 0.5]], dtype=torch.float64)
    res = affine_input_margin(model, x, norm="l2", bounds=(0.0, 1.0))
    assert torch.isinf(res.margin).all() and (res.target == -1).all()
    assert torch.isfinite(affine_input_margin(model, x, norm="l2", bounds=None).margin).all()


def test_labels_option_gives_zero_for_misclassified_and_matches_prediction_otherwise():
    model, x = _case(3)
    with torch.no_grad():
        pred = model(x).argmax(1)
    wrong = (pred + 1) % 4
    assert (affine_input_margin(model, x, wrong, norm="l2").margin == 0).all()
    torch.testing.assert_close(affine_input_margin(model, x, pred, norm="l2").margin,
                               affine_input_margin(model, x, None, norm="l2").margin)


def test_affine_parameters_recovers_the_map_and_rejects_relu_nets():
    model, x = _case(0)
    a, c = affine_parameters(model, (10,))
    torch.testing.assert_close(a, model.head.weight.detach())
    torch.testing.assert_close(c, model.head.bias.detach())
    relu = build_model(ModelSpec("mlp", (10,), 3, hidden=8, depth=1), seed=0)
    with pytest.raises(ValueError, match="not affine"):
        affine_parameters(relu, (10,))


class _Rows(nn.Module):
    """Wraps a model and counts the rows it is called on (on the class: the float64 copies count too)."""

    rows = 0

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner
        type(self).rows = 0

    def forward(self, x):
        type(self).rows += x.shape[0]
        return self.inner(x)


def test_affine_parameters_in_chunks_equals_one_call(monkeypatch):
    import marginkit.margins.affine as aff

    model, _ = _case(4, d=10)
    whole = affine_parameters(model, (10,))
    monkeypatch.setattr(aff, "_BASIS_BYTES", 8 * 10 * 3)  # three basis rows per forward call
    counted = _Rows(model)
    a, c = affine_parameters(counted, (10,))
    torch.testing.assert_close(a, whole[0], rtol=0, atol=1e-12)
    torch.testing.assert_close(c, whole[1], rtol=0, atol=1e-12)
    assert _Rows.rows == 3 + 1 + 10 + 8  # chord check, f(0), the basis, the final check


class _FoldedAbs(nn.Module):
    """Non-affine through a functional call only (no non-linear module to spot): |x - 1/2| summed."""

    def forward(self, x):
        h = x.flatten(1)
        return torch.stack([(h - 0.5).abs().sum(1), h.sum(1)], 1)


def test_a_network_with_a_large_input_is_rejected_from_three_rows():
    """The chord check rejects a non-affine model before the n + 1 basis passes (and before any n x n
    identity: a 3 x 224 x 224 input would need 180 GB)."""
    from marginkit.margins import is_affine

    counted = _Rows(_FoldedAbs())
    with pytest.raises(ValueError, match="not affine"):
        affine_parameters(counted, (3, 224, 224))
    assert _Rows.rows == 3
    assert not is_affine(counted, (3, 224, 224))


def test_float32_model_works_and_is_computed_in_float64():
    model = build_model(ModelSpec("linear", (1, 4, 4), 3), seed=1)
    x = torch.rand(5, 1, 4, 4, generator=torch.Generator().manual_seed(0))
    res = affine_input_margin(model, x, norm="linf")
    assert res.margin.dtype == torch.float64 and torch.isfinite(res.margin).all()


@pytest.mark.parametrize("norm", NORMS)
def test_class_pruning_gives_the_same_minimum_as_solving_every_class(norm):
    """The exact path solves only classes whose unboxed distance (a lower bound) can beat the best so far."""
    from marginkit.margins.affine import _solve_halfspace, exact_affine_margin
    from marginkit.norms import as_norm

    model, x = _case(8, n=40, c=7, d=12)
    a, c = affine_parameters(model, (12,))
    x = x * 1.2 - 0.1  # some coordinates outside the box: room is clamped at zero there
    ref = (x @ a.T + c).argmax(1)
    lo, hi = (0 - x).clamp_max(0), (1 - x).clamp_min(0)
    margin, target = exact_affine_margin(a, c, x, ref, lo, hi, as_norm(norm))
    z = x @ a.T + c
    every = torch.full((40, 7), float("inf"), dtype=torch.float64)
    for j in range(7):
        val, _ = _solve_halfspace(a[j] - a[ref], z.gather(1, ref[:, None]).squeeze(1) - z[:, j], lo, hi, as_norm(norm))
        every[:, j] = torch.where(ref == j, torch.full_like(val, float("inf")), val)
    torch.testing.assert_close(margin, every.min(1).values, rtol=1e-12, atol=0)
    finite = torch.isfinite(margin)
    assert (every[finite].gather(1, target[finite][:, None]).squeeze(1) == margin[finite]).all()


@pytest.mark.parametrize("norm", ["l2", "linf"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_newton_halfspace_solver_matches_the_sorted_breakpoint_solver(norm, dtype):
    """The Newton sweep of _solve_halfspace against the sort-based exact solution: same norms and points,
    infeasible rows (inf), rows already satisfied (zero step), zero-gradient coordinates, and the fallback
    to sorting when the sweep budget is too small to settle."""
    import marginkit.margins.affine as affine
    from marginkit.norms import as_norm

    g = torch.Generator().manual_seed(3)
    r, n = 64, 200
    w = torch.randn(r, n, generator=g, dtype=torch.float64)
    w[:, :20] = 0.0
    x = torch.rand(r, n, generator=g, dtype=torch.float64)
    x[:, 20:100] = torch.where(torch.rand(r, 80, generator=g, dtype=torch.float64) < 0.5, 0.0, 1.0)  # saturated pixels
    lo, hi = -x, 1 - x
    reach = (w.abs() * torch.where(w > 0, hi, -lo)).sum(1)
    need = reach * torch.rand(r, generator=g, dtype=torch.float64) * 0.9
    need[:4] = reach[:4] * 1.5  # out of reach of the box
    need[4:8] = -1.0  # already satisfied
    args = [t.to(dtype) for t in (w, need, lo, hi)]
    tol = 1e-5 if dtype is torch.float32 else 1e-12
    want_v, want_d = affine._solve_halfspace(*args, as_norm(norm), sort=True)
    got_v, got_d = affine._solve_halfspace(*args, as_norm(norm))
    assert torch.isinf(got_v[:4]).all() and torch.isinf(want_v[:4]).all()
    assert (got_d[4:8] == 0).all()
    torch.testing.assert_close(got_v, want_v, rtol=tol, atol=tol)
    torch.testing.assert_close(got_d, want_d, rtol=tol, atol=tol * float(want_d.abs().max()))
    assert (got_d >= lo.to(dtype) - tol).all() and (got_d <= hi.to(dtype) + tol).all()
    feasible = torch.isfinite(want_v)
    assert ((w.to(dtype) * got_d).sum(1)[feasible] >= need.to(dtype).clamp_min(0)[feasible] * (1 - tol) - tol).all()
    old = affine._NEWTON_ITERS
    try:
        affine._NEWTON_ITERS = 1  # too few sweeps: unsettled rows fall back to the sort
        v1, _ = affine._solve_halfspace(*args, as_norm(norm))
    finally:
        affine._NEWTON_ITERS = old
    torch.testing.assert_close(v1, want_v, rtol=tol, atol=tol)
