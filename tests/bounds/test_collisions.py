"""Collision finding: closed forms, cone programs, the ReLU descent against exhaustive enumeration, and
independent verification of every returned collision on the original PyTorch model."""

from collections import OrderedDict

import numpy as np
import pytest
import torch
from torch import nn

from marginkit.bounds import feature_chain, find_collisions, pair_budgets, row_basis
from marginkit.models import ModelSpec, build_model, truncate


def _two_relus():
    m = nn.Sequential(OrderedDict(fc1=nn.Linear(2, 2), relu1=nn.ReLU(), head=nn.Linear(2, 2)))
    with torch.no_grad():
        m.fc1.weight.copy_(torch.eye(2))
        m.fc1.bias.zero_()
    return m.eval()


def _independent_check(model, layer, u, v, res, norm="l2"):
    """Recompute f(u + du) and f(v + dv) with the ORIGINAL torch model (in float64) and the budgets."""
    f = truncate(model, layer).double().eval()
    with torch.no_grad():
        fu = f(torch.from_numpy(u + res.delta_u))
        fv = f(torch.from_numpy(v + res.delta_v))
    assert torch.allclose(fu, fv, atol=1e-5, rtol=1e-5)
    p = {"l2": 2, "linf": np.inf}[norm]
    budget = np.maximum(np.linalg.norm(res.delta_u, ord=p, axis=1), np.linalg.norm(res.delta_v, ord=p, axis=1))
    assert np.allclose(budget, res.budget, rtol=1e-9, atol=1e-12)
    assert np.all(res.budget <= 0.5 * np.linalg.norm(u - v, ord=p, axis=1) + 1e-9)  # never worse than the midpoint


def test_paper_figure_1_example():
    """Fig. 1: f = (ReLU, ReLU), u = (1, 4), v = (9, -5): eps_f = 5 with u~ = (4, 0), v~ = (4, -5)."""
    ch = feature_chain(_two_relus(), "relu1", (2,))
    u, v = np.array([[1.0, 4.0]]), np.array([[9.0, -5.0]])
    for method in ("descent", "enumerate"):
        r = find_collisions(ch, u, v, method=method, return_delta=True)
        assert r.budget[0] == pytest.approx(5.0, abs=1e-5)
        assert np.allclose(u + r.delta_u, [[4.0, 0.0]], atol=1e-4)
        assert np.allclose(v + r.delta_v, [[4.0, -5.0]], atol=1e-4)
    assert 0.5 * np.linalg.norm(u - v) > 6.0  # the midpoint is clearly worse: the descent moved


@pytest.mark.parametrize("hidden", [3, 9])
def test_linear_closed_form_equals_cone_program(hidden):
    model = build_model(ModelSpec("mlp", (6,), 2, hidden=hidden, depth=1), seed=hidden)
    ch = feature_chain(model, "fc1", (6,))
    rng = np.random.default_rng(1)
    u, v = rng.uniform(0, 1, (5, 6)), rng.uniform(0, 1, (5, 6))
    closed = find_collisions(ch, u, v, method="closed-form", return_delta=True)
    cone = find_collisions(ch, u, v, method="cone", return_delta=True)
    assert np.allclose(closed.budget, cone.budget, rtol=1e-6, atol=1e-7)
    _independent_check(model, "fc1", u, v, closed)
    _independent_check(model, "fc1", u, v, cone)
    # closed form: 1/2 ||V^T (v - u)|| with V the right singular vectors of L (numpy SVD as reference)
    L = model.fc1.weight.detach().double().numpy()
    _, s, vt = np.linalg.svd(L, full_matrices=False)
    ref = 0.5 * np.linalg.norm((v - u) @ vt[s > 1e-9].T, axis=1)
    assert np.allclose(closed.budget, ref, rtol=1e-9)
    if hidden >= 6:  # injective layer: no collision cheaper than the midpoint
        assert np.allclose(closed.budget, 0.5 * np.linalg.norm(u - v, axis=1))
    else:
        assert np.all(closed.budget < 0.5 * np.linalg.norm(u - v, axis=1))


def test_convolution_closed_form_without_dense_matrix_and_batchnorm_folded():
    torch.manual_seed(0)
    conv = nn.Sequential(OrderedDict(conv1=nn.Conv2d(1, 2, 3, padding=0), bn1=nn.BatchNorm2d(2), relu1=nn.ReLU(),
                                     flatten=nn.Flatten(), head=nn.Linear(2 * 4 * 4, 2)))
    with torch.no_grad():
        conv.bn1.running_mean.uniform_(-1, 1)
        conv.bn1.running_var.uniform_(0.5, 2)
    conv.eval()
    ch = feature_chain(conv, "bn1", (1, 6, 6))
    assert len(ch.stages) == 1 and not ch.stages[0].relu  # conv + batch norm merged into one affine stage
    st = ch.stages[0]
    # force the matrix-free path and compare with the dense Gram
    st2 = feature_chain(conv, "bn1", (1, 6, 6)).stages[0]
    st2.out_dim, real = 10**7, st2.out_dim  # pretend it is huge so gram() avoids the dense matrix
    g_free = st2.gram(chunk=7)
    assert st2._dense is None
    st2.out_dim = real
    L, _ = st.dense()
    assert np.allclose(g_free, L.T @ L, atol=1e-10)
    rng = np.random.default_rng(0)
    u, v = rng.uniform(0, 1, (4, 36)), rng.uniform(0, 1, (4, 36))
    r = find_collisions(ch, u, v, return_delta=True)
    assert set(r.status) == {"closed-form"}
    f = truncate(conv, "bn1").double()
    with torch.no_grad():
        a = f(torch.from_numpy(u + r.delta_u).reshape(-1, 1, 6, 6))
        b = f(torch.from_numpy(v + r.delta_v).reshape(-1, 1, 6, 6))
    assert torch.allclose(a, b, atol=1e-8)
    V, _ = row_basis(L.T @ L)
    assert np.allclose(r.budget, 0.5 * np.linalg.norm((v - u) @ V, axis=1))


@pytest.mark.parametrize("layer", ["relu1", "fc2", "relu2"])
def test_descent_matches_enumeration_lower_bound_and_verifies(layer):
    model = build_model(ModelSpec("mlp", (5,), 2, hidden=2, depth=2), seed=3)
    ch = feature_chain(model, layer, (5,))
    rng = np.random.default_rng(2)
    u, v = rng.uniform(0, 1, (8, 5)), rng.uniform(0, 1, (8, 5))
    d = find_collisions(ch, u, v, method="descent", return_delta=True)
    e = find_collisions(ch, u, v, method="enumerate", return_delta=True)
    assert np.all(d.budget >= e.budget - 1e-6)  # enumeration is the global minimum
    assert np.mean(np.isclose(d.budget, e.budget, rtol=1e-4, atol=1e-6)) >= 0.5  # descent usually finds it
    _independent_check(model, layer, u, v, d)
    _independent_check(model, layer, u, v, e)


def test_deeper_layers_collide_at_smaller_budgets_and_box_only_raises_budgets():
    model = build_model(ModelSpec("mlp", (6,), 2, hidden=4, depth=2), seed=1)
    rng = np.random.default_rng(0)
    u, v = rng.uniform(0, 1, (5, 6)), rng.uniform(0, 1, (5, 6))
    prev = None
    for layer in ["fc1", "relu1", "fc2", "relu2"]:
        ch = feature_chain(model, layer, (6,))
        free = find_collisions(ch, u, v, method="descent", return_delta=True)
        boxed = find_collisions(ch, u, v, method="descent", bounds=(0.0, 1.0), return_delta=True)
        assert np.all(boxed.budget >= free.budget - 1e-6)  # a box only restricts the adversary
        for pt in (u + boxed.delta_u, v + boxed.delta_v):
            assert pt.min() >= -1e-12 and pt.max() <= 1 + 1e-12
        _independent_check(model, layer, u, v, boxed)
        lin = find_collisions(ch, u, v, "linf", method="descent", return_delta=True)
        _independent_check(model, layer, u, v, lin, norm="linf")
        if prev is not None:  # not a theorem for the local descent, but holds on this seed; the layer-wise
            assert np.all(free.budget <= prev + 0.2)  # analysis enforces it through prior budgets
        prev = free.budget


def test_rejections():
    pool = nn.Sequential(OrderedDict(conv1=nn.Conv2d(1, 2, 3), pool1=nn.MaxPool2d(2), flatten=nn.Flatten(),
                                     head=nn.Linear(2, 2))).eval()
    with pytest.raises(ValueError, match="pool1"):
        feature_chain(pool, "pool1", (1, 4, 4))
    ch = feature_chain(_two_relus(), "relu1", (2,))
    with pytest.raises(ValueError, match="finite"):
        find_collisions(ch, np.array([[np.nan, 0.0]]), np.array([[1.0, 0.0]]))
    with pytest.raises(ValueError, match="shape"):
        find_collisions(ch, np.zeros((2, 2)), np.zeros((3, 2)))
    with pytest.raises(ValueError, match="box"):
        find_collisions(ch, np.array([[2.0, 0.0]]), np.array([[0.0, 0.0]]), bounds=(0.0, 1.0))
    with pytest.raises(ValueError, match="affine"):
        find_collisions(ch, np.zeros((1, 2)), np.ones((1, 2)), method="cone")
    with pytest.raises(ValueError, match="at least two classes"):
        pair_budgets(ch, np.zeros((3, 2)), np.zeros(3, dtype=int))
    with pytest.raises(ValueError, match="NaN"):
        pair_budgets(ch, np.array([[np.nan, 0.0], [0.0, 0.0]]), np.array([0, 1]))


def test_unverified_collisions_are_discarded(monkeypatch):
    """If the cone program's answer does not verify on the network, the midpoint collision is kept."""
    import marginkit.bounds.collisions as C

    ch = feature_chain(_two_relus(), "relu1", (2,))
    u, v = np.array([[1.0, 4.0]]), np.array([[9.0, -5.0]])
    monkeypatch.setattr(C, "verify_collisions", lambda *a, **k: np.zeros(len(a[1]), dtype=bool))
    r = find_collisions(ch, u, v, method="descent", return_delta=True)
    assert r.budget[0] == pytest.approx(0.5 * np.linalg.norm(u - v))
    assert np.allclose(u + r.delta_u, v + r.delta_v)


def test_demo_cnn_first_convolution_is_injective_so_its_bound_equals_the_input_bound():
    """Paper Fig. 11: a first convolution with more outputs than inputs adds no collisions."""
    from marginkit.bounds import layerwise_bounds

    model = build_model(ModelSpec("cnn", (1, 6, 6), 2, channels=(3,), hidden=4), seed=0)
    rng = np.random.default_rng(0)
    x = torch.tensor(rng.uniform(0, 1, (10, 1, 6, 6)), dtype=torch.float32)
    y = torch.arange(10) % 2
    res = layerwise_bounds(model, x, y, "l2", [0.8, 1.2, 1.6], layers=["input", "conv1"]).to_frame()
    a = res[res.layer == "input"].sort_values("eps")
    b = res[res.layer == "conv1"].sort_values("eps")
    assert np.allclose(a["zero_one"].to_numpy(), b["zero_one"].to_numpy())
    assert np.allclose(a["cross_entropy"].to_numpy(), b["cross_entropy"].to_numpy(), atol=1e-6)
    assert a["zero_one"].max() > 0
