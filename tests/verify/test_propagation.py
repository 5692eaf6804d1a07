import math

import numpy as np
import pytest
import torch

from marginkit.margins.gap import specification_matrix
from marginkit.verify import as_relu_network, preactivation_bounds, spec_lower_bounds
from marginkit.verify.propagation import _Input, _l1_exact, _l2_dual
from marginkit.norms import Norm

from ._nets import abs_net, enumerated, tiny_cnn, tiny_demo_cnn, tiny_mlp

NORMS = ("linf", "l2", "l1")
METHODS = ("ibp", "crown", "alpha-crown")


def _sample_ball(x: torch.Tensor, eps: float, norm: str, m: int, seed: int) -> torch.Tensor:
    """m points per sample of B_p(x, eps) ∩ [0, 1]^D, many on the sphere (clipped into the box)."""
    g = torch.Generator().manual_seed(seed)
    d = torch.randn(x.shape[0], m, *x.shape[1:], generator=g, dtype=torch.float64)
    if norm == "l1":
        d = d * (torch.rand(d.shape, generator=g, dtype=torch.float64) < 0.2)
    p = {"linf": math.inf, "l2": 2.0, "l1": 1.0}[norm]
    flat = d.reshape(x.shape[0], m, -1)
    flat = flat / torch.linalg.vector_norm(flat, ord=p, dim=-1, keepdim=True).clamp_min(1e-12)
    scale = torch.where(torch.rand(x.shape[0], m, 1, generator=g) < 0.5, 1.0, torch.rand(x.shape[0], m, 1, generator=g))
    pts = x.double()[:, None] + (eps * scale.double() * flat).reshape(d.shape)
    return pts.clamp(0, 1)


@pytest.mark.parametrize("norm", NORMS)
def test_no_method_certifies_past_the_exact_margin(norm):
    model, x, margin = enumerated(norm)
    net = as_relu_network(model, (2,))
    ref = model(x).argmax(1)
    assert torch.isfinite(margin).all()
    for method in METHODS:
        lb = spec_lower_bounds(net, x, ref, margin * (1 + 1e-6), norm, method=method)
        # a flipping point lies in the ball: some row's bound must be <= its gap there, which is <= 0
        assert (lb.min(1).values <= 1e-9).all(), (method, lb)
        inside = spec_lower_bounds(net, x, ref, margin * 0.5, norm, method=method)
        assert torch.isfinite(inside).all()


@pytest.mark.parametrize("norm", NORMS)
def test_bounds_contain_sampled_outputs_and_are_ordered(norm):
    model = tiny_cnn()
    x = torch.rand(3, 1, 6, 6, generator=torch.Generator().manual_seed(0))
    net = as_relu_network(model, (1, 6, 6))
    eps = {"linf": 0.05, "l2": 0.3, "l1": 1.0}[norm]
    with torch.no_grad():
        ref = model(x).argmax(1)
        pts = _sample_ball(x, eps, norm, 400, seed=1)
        logits = model.double()(pts.reshape(-1, 1, 6, 6)).reshape(3, 400, -1)
        model.float()
    c = specification_matrix(ref, 4, dtype=torch.float64)
    gaps = torch.einsum("nkc,nmc->nmk", c, logits)
    out = {m: spec_lower_bounds(net, x, ref, eps, norm, method=m, alpha_steps=15) for m in METHODS}
    out["alpha-all"] = spec_lower_bounds(net, x, ref, eps, norm, method="alpha-crown", alpha_steps=5, alpha_intermediate=5)
    for m in out:
        assert (gaps >= out[m][:, None] - 1e-9).all(), m
    assert (out["crown"] >= out["ibp"] - 1e-12).all()
    assert (out["alpha-crown"] >= out["crown"] - 1e-12).all()
    assert (out["alpha-all"] >= out["crown"] - 1e-12).all()
    # the backward relaxation beats intervals somewhere on a network with unstable neurons
    assert (out["crown"] > out["ibp"] + 1e-6).any()
    # pre-activations of every ReLU layer stay inside their bounds
    h = pts.reshape(-1, 1, 6, 6)
    for method in ("ibp", "crown"):
        pre = preactivation_bounds(net, x, eps, norm, method=method)
        z = h
        for i, (lo, hi) in enumerate(pre):
            z = net.layers[i].forward(z if i == 0 else torch.relu(z)).reshape(3, 400, -1)
            assert (z >= lo[:, None] - 1e-9).all() and (z <= hi[:, None] + 1e-9).all(), (method, i)
            z = z.reshape(3 * 400, *net.layers[i].out_shape)
    crown, ibp = preactivation_bounds(net, x, eps, norm, method="crown"), preactivation_bounds(net, x, eps, norm, method="ibp")
    for (cl, cu), (il, iu) in zip(crown, ibp):
        assert (cl >= il - 1e-12).all() and (cu <= iu + 1e-12).all()


def test_known_chord_bounds_on_the_absolute_value_network():
    net = as_relu_network(abs_net(), (2,))
    x = torch.tensor([[0.5, 0.5]])
    ref = torch.tensor([0])
    for norm in NORMS:
        # exact gap bound over the ball: 0.2 - |x_1 - 0.5| >= 0.2 - eps; CROWN attains 0.2 - eps, IBP 0.2 - 2 eps
        crown = spec_lower_bounds(net, x, ref, 0.05, norm, method="crown")
        ibp = spec_lower_bounds(net, x, ref, 0.05, norm, method="ibp")
        assert crown.item() == pytest.approx(0.15, abs=1e-6)
        assert ibp.item() == pytest.approx(0.10, abs=1e-6)


def test_box_aware_concretisation_matches_linear_and_convex_programs():
    scipy_opt = pytest.importorskip("scipy.optimize")
    cvxpy = pytest.importorskip("cvxpy")
    g = torch.Generator().manual_seed(0)
    x = torch.rand(2, 6, generator=g, dtype=torch.float64)
    x[:, :2] = 0.0  # on the box: these coordinates may only grow
    a = torch.randn(2, 3, 6, generator=g, dtype=torch.float64)
    eps = torch.tensor([0.4, 1.5], dtype=torch.float64)
    l1 = _l1_exact(a, _Input(x, eps, Norm.L1, 0.0, 1.0))
    l2 = _l2_dual(a, _Input(x, eps, Norm.L2, 0.0, 1.0))
    for n in range(2):
        for k in range(3):
            av, xv, e = a[n, k].numpy(), x[n].numpy(), float(eps[n])
            # l1: variables (d+, d-) >= 0, x + d+ - d- in the box, sum(d+ + d-) <= eps
            res = scipy_opt.linprog(np.concatenate([av, -av]), A_ub=np.ones((1, 12)), b_ub=[e],
                                    bounds=[(0, 1 - v) for v in xv] + [(0, v) for v in xv], method="highs")
            assert l1[n, k].item() == pytest.approx(av @ xv + res.fun, abs=1e-9)
            d = cvxpy.Variable(6)
            prob = cvxpy.Problem(cvxpy.Minimize(av @ d), [cvxpy.norm(d, 2) <= e, xv + d >= 0, xv + d <= 1])
            prob.solve(solver=cvxpy.CLARABEL)
            exact = av @ xv + prob.value
            assert l2[n, k].item() <= exact + 1e-7  # weak duality: always sound
            assert l2[n, k].item() >= exact - 1e-3 * (1 + abs(exact))  # and close to the optimum


def test_box_tightens_and_eps_zero_gives_the_clean_gaps():
    model = tiny_mlp(width=6)
    net = as_relu_network(model, (2,))
    x = torch.tensor([[0.0, 0.3], [1.0, 0.0], [0.7, 0.9]])
    ref = model(x).argmax(1)
    for norm in NORMS:
        boxed = spec_lower_bounds(net, x, ref, 0.2, norm, method="crown")
        free = spec_lower_bounds(net, x, ref, 0.2, norm, method="crown", bounds=None)
        assert (boxed >= free - 1e-12).all()
        clean = spec_lower_bounds(net, x, ref, 0.0, norm, method="crown")
        with torch.no_grad():
            z = model.double()(x.double())
            model.float()
        gaps = (specification_matrix(ref, 3, dtype=torch.float64) @ z[:, :, None]).squeeze(-1)
        assert torch.allclose(clean, gaps, atol=1e-9)


def test_chunking_does_not_change_the_bounds_and_dtype_follows():
    model = tiny_cnn(seed=2)
    net = as_relu_network(model, (1, 6, 6))
    x = torch.rand(5, 1, 6, 6, generator=torch.Generator().manual_seed(3))
    ref = torch.tensor([0, 1, 2, 3, 0])
    eps = torch.tensor([0.01, 0.02, 0.03, 0.04, 0.05])
    big = spec_lower_bounds(net, x, ref, eps, "linf", method="crown")
    small = spec_lower_bounds(net, x, ref, eps, "linf", method="crown", max_elements=64)
    assert torch.allclose(big, small, atol=1e-10)
    f32 = spec_lower_bounds(net, x, ref, eps, "linf", method="crown", dtype=torch.float32)
    assert f32.dtype == torch.float32 and f32.device == x.device
    assert torch.allclose(f32.double(), big, atol=1e-4)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_device_follows_the_model():
    model = tiny_mlp().cuda()
    net = as_relu_network(model, (2,))
    x = torch.rand(4, 2)
    lb = spec_lower_bounds(net, x, torch.zeros(4, dtype=torch.long), 0.05, "l2", method="alpha-crown", alpha_steps=5)
    assert lb.device.type == "cuda"
    cpu = spec_lower_bounds(as_relu_network(model.cpu(), (2,)), x, torch.zeros(4, dtype=torch.long), 0.05, "l2", method="crown")
    assert (lb.cpu() >= cpu - 1e-6).all()


def test_bad_arguments_are_named():
    net = as_relu_network(tiny_mlp(), (2,))
    x = torch.rand(2, 2)
    ref = torch.zeros(2, dtype=torch.long)
    with pytest.raises(ValueError, match="unknown bound method"):
        spec_lower_bounds(net, x, ref, 0.1, "l2", method="deeppoly++")
    with pytest.raises(ValueError, match="non-negative"):
        spec_lower_bounds(net, x, ref, -0.1, "l2")
    with pytest.raises(ValueError, match="outside the box"):
        spec_lower_bounds(net, x + 2, ref, 0.1, "l2")
    with pytest.raises(ValueError, match="shape"):
        spec_lower_bounds(net, torch.rand(2, 3), ref, 0.1, "l2")


@pytest.mark.parametrize("norm", NORMS)
def test_forward_mode_is_sound_and_equals_backward_on_the_second_layer(norm):
    model = tiny_cnn(1)
    x = torch.rand(3, 1, 6, 6, generator=torch.Generator().manual_seed(2))
    net = as_relu_network(model, (1, 6, 6))
    eps = {"linf": 0.05, "l2": 0.3, "l1": 1.0}[norm]
    back = preactivation_bounds(net, x, eps, norm, method="crown", intermediate="dense")
    fwd = preactivation_bounds(net, x, eps, norm, method="crown", intermediate="forward", backward_rows=0)
    ibp = preactivation_bounds(net, x, eps, norm, method="ibp")
    # one relaxed ReLU layer below: both modes concretise the same linear function on the unstable neurons
    unstable = (ibp[1][0] < 0) & (ibp[1][1] > 0)
    assert unstable.any()
    for k in (0, 1):
        assert torch.allclose(fwd[1][k][unstable], back[1][k][unstable], atol=1e-9)
    pts = _sample_ball(x, eps, norm, 400, seed=3).reshape(-1, 1, 6, 6)
    z = pts
    for i, (lo, hi) in enumerate(fwd):
        assert (lo >= ibp[i][0] - 1e-12).all() and (hi <= ibp[i][1] + 1e-12).all()
        z = net.layers[i].forward(z if i == 0 else torch.relu(z)).reshape(3, 400, -1)
        assert (z >= lo[:, None] - 1e-9).all() and (z <= hi[:, None] + 1e-9).all(), i
        z = z.reshape(3 * 400, *net.layers[i].out_shape)
    ref = model(x).argmax(1)
    lb = spec_lower_bounds(net, x, ref, eps, norm, method="crown", intermediate="forward")
    with torch.no_grad():
        logits = model.double()(pts).reshape(3, 400, -1)
        model.float()
    gaps = torch.einsum("nkc,nmc->nmk", specification_matrix(ref, 4, dtype=torch.float64), logits)
    assert (gaps >= lb[:, None] - 1e-9).all()
    assert (lb >= spec_lower_bounds(net, x, ref, eps, norm, method="ibp") - 1e-12).all()


@pytest.mark.parametrize("norm", NORMS)
@pytest.mark.parametrize("make", [tiny_cnn, tiny_demo_cnn])
def test_receptive_field_passes_equal_the_dense_passes(norm, make):
    model = make(3)
    shape = (1, 6, 6) if make is tiny_cnn else (1, 8, 8)
    x = torch.rand(4, *shape, generator=torch.Generator().manual_seed(4))
    net = as_relu_network(model, shape)
    ref = model(x).argmax(1)
    eps = {"linf": 0.05, "l2": 0.3, "l1": 1.0}[norm]
    dense = preactivation_bounds(net, x, eps, norm, intermediate="dense")
    sparse = preactivation_bounds(net, x, eps, norm, intermediate="sparse")
    assert any(bool(((lo < 0) & (hi > 0)).any()) for lo, hi in dense[1:])  # something to refine
    for (dl, du), (sl, su) in zip(dense, sparse):
        assert torch.allclose(dl, sl, atol=1e-6, rtol=0) and torch.allclose(du, su, atol=1e-6, rtol=0)
    want = spec_lower_bounds(net, x, ref, eps, norm, method="crown", intermediate="dense")
    for mode in ("sparse", "auto"):
        got = spec_lower_bounds(net, x, ref, eps, norm, method="crown", intermediate=mode)
        assert torch.allclose(got, want, atol=1e-6, rtol=0), mode
    # small chunks give the same receptive-field bounds
    small = preactivation_bounds(net, x, eps, norm, intermediate="sparse", max_elements=256)
    for (al, au), (bl, bu) in zip(sparse, small):
        assert torch.allclose(al, bl, atol=1e-9) and torch.allclose(au, bu, atol=1e-9)


def test_receptive_field_bounds_are_sound_on_a_tiny_cnn():
    model = tiny_demo_cnn(5)
    x = torch.rand(4, 1, 8, 8, generator=torch.Generator().manual_seed(6))
    net = as_relu_network(model, (1, 8, 8))
    ref = model(x).argmax(1)
    for norm, eps in (("linf", 0.04), ("l2", 0.4), ("l1", 1.5)):
        pts = _sample_ball(x, eps, norm, 500, seed=7)
        with torch.no_grad():
            logits = model.double()(pts.reshape(-1, 1, 8, 8)).reshape(4, 500, -1)
            model.float()
        gaps = torch.einsum("nkc,nmc->nmk", specification_matrix(ref, 3, dtype=torch.float64), logits)
        ibp = spec_lower_bounds(net, x, ref, eps, norm, method="ibp")
        for method in ("crown", "alpha-crown"):
            lb = spec_lower_bounds(net, x, ref, eps, norm, method=method, intermediate="sparse", alpha_steps=10)
            assert (gaps >= lb[:, None] - 1e-9).all(), (norm, method)
            assert (lb >= ibp - 1e-12).all()
