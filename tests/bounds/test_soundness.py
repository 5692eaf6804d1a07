"""Soundness of the layer-wise lower bounds, checked against quantities computed independently of the
collision search (the monotonicity from layer to layer holds by construction and is not tested here):

* a layer's bound is <= the robust loss of an actual classifier trained on top of it and attacked:
  exactly for a linear layer + logistic head (the composite is affine, so
  ``marginkit.margins.affine_input_margin`` gives the exact robust 0-1 loss and the worst-case logit gap
  gives the exact robust cross-entropy), with the minimal-norm engine (``marginkit.attacks.input_margin``)
  for ReLU layers + logistic head (box [0, 1] on both sides), and against PGD (cross-entropy);
* a box only weakens the adversary, so the boxed bound is never above the unconstrained one.
"""

from collections import OrderedDict

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from marginkit.bounds import layerwise_bounds
from marginkit.margins import affine_input_margin
from marginkit.models import ModelSpec, build_model, truncate

EPS = [0.05, 0.1, 0.15, 0.25, 0.4]


@pytest.fixture(scope="module")
def problem():
    rng = np.random.default_rng(0)
    n = 22
    x = rng.uniform(0, 1, (n, 5))
    w = rng.normal(size=5)
    score = (x - 0.5) @ w + 0.3 * rng.normal(size=n)
    y = (score > np.median(score)).astype(np.int64)
    x, y = torch.tensor(x, dtype=torch.float32), torch.tensor(y)
    torch.manual_seed(0)
    model = build_model(ModelSpec("mlp", (5,), 2, hidden=4, depth=2), seed=0)
    opt = torch.optim.Adam(model.parameters(), lr=0.03)
    model.train()
    for _ in range(150):
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
    model.eval()
    res = layerwise_bounds(model, x, y, "l2", EPS, neighbours=None)
    boxed = layerwise_bounds(model, x, y, "l2", EPS, neighbours=3, bounds=(0.0, 1.0), cross_entropy=False,
                             layers=["input", "fc1", "relu1"])
    return model, x, y, res.to_frame(), boxed.to_frame()


def _curve(df, layer, loss):
    return df[df["layer"] == layer].sort_values("eps")[loss].to_numpy()


def test_bounds_are_not_trivial_and_a_box_only_lowers_them(problem):
    _, _, _, df, boxed = problem
    assert list(dict.fromkeys(df["layer"])) == ["input", "fc1", "relu1", "fc2", "relu2"]
    # some layer loses robustness at some eps (so the comparisons below are not vacuous)
    assert (_curve(df, "relu2", "zero_one") - _curve(df, "input", "zero_one")).max() > 0.1
    for layer in ("input", "fc1", "relu1"):
        assert np.all(_curve(boxed, layer, "zero_one") <= _curve(df, layer, "zero_one") + 1e-9)


def _logistic_head(features: torch.Tensor, y: torch.Tensor) -> nn.Linear:
    from sklearn.linear_model import LogisticRegression

    clf = LogisticRegression(C=10.0, max_iter=2000).fit(features.numpy(), y.numpy())
    head = nn.Linear(features.shape[1], 2).double()
    with torch.no_grad():  # binary logistic regression as two logits (0, w^T z + b)
        head.weight.copy_(torch.tensor(np.stack([np.zeros_like(clf.coef_[0]), clf.coef_[0]])))
        head.bias.copy_(torch.tensor([0.0, clf.intercept_[0]]))
    return head


def test_linear_layer_bound_below_exact_robust_loss_of_a_trained_head(problem):
    model, x, y, df, boxed = problem
    fc1 = truncate(model, "fc1").double()
    with torch.no_grad():
        feats = fc1(x.double())
    head = _logistic_head(feats, y)
    composite = nn.Sequential(OrderedDict(fc1=fc1.fc1, head=head)).double().eval()
    xd = x.double()
    with torch.no_grad():
        logits = composite(xd)
    A = (head.weight @ fc1.fc1.weight.double()).detach()
    gap = (logits.gather(1, y[:, None]) - logits.gather(1, 1 - y[:, None])).squeeze(1)
    wdiff = (A[1] - A[0]).norm()
    free = affine_input_margin(composite, xd, labels=y, norm="l2", bounds=None).margin.numpy()
    in_box = affine_input_margin(composite, xd, labels=y, norm="l2", bounds=(0.0, 1.0)).margin.numpy()
    for k, eps in enumerate(EPS):
        robust01 = np.mean(free <= eps)
        robust_ce = float(F.softplus(-(gap - eps * wdiff)).mean())  # worst case moves the gap by eps ||a_1 - a_0||
        assert _curve(df, "fc1", "zero_one")[k] <= robust01 + 1e-9
        assert _curve(df, "fc1", "cross_entropy")[k] <= robust_ce + 1e-6
        assert _curve(boxed, "fc1", "zero_one")[k] <= np.mean(in_box <= eps) + 1e-9
    # the comparison is not vacuous: the head does lose points at the largest eps
    assert np.mean(free <= EPS[-1]) > 0


def test_relu_layer_bound_below_pgd_robust_loss_of_a_trained_head(problem):
    from marginkit.attacks.pgd import pgd

    model, x, y, df, _ = problem
    feat = truncate(model, "relu1").double().eval()
    with torch.no_grad():
        z = feat(x.double())
    head = _logistic_head(z, y)
    clf = nn.Sequential(OrderedDict(features=feat, head=head)).double().eval()
    xd = x.double()
    for k, eps in enumerate(EPS):
        wrong = torch.zeros(len(x), dtype=torch.bool)
        ce = torch.zeros(len(x), dtype=torch.float64)
        for seed in range(3):
            adv = pgd(clf, xd, y, "l2", eps, steps=60, seed=seed, bounds=None)
            with torch.no_grad():
                out = clf(adv)
            wrong |= out.argmax(1) != y
            ce = torch.maximum(ce, F.cross_entropy(out, y, reduction="none"))
        assert _curve(df, "relu1", "zero_one")[k] <= wrong.double().mean().item() + 1e-9
        assert _curve(df, "relu1", "cross_entropy")[k] <= ce.mean().item() + 1e-6


def test_bad_inputs_are_rejected(problem):
    model, x, y, _, _ = problem
    bad = x.clone()
    bad[0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        layerwise_bounds(model, bad, y, "l2", EPS)
    with pytest.raises(ValueError):
        layerwise_bounds(model, x, y[:-1], "l2", EPS)
    with pytest.raises(ValueError, match="eps_grid"):
        layerwise_bounds(model, x, y, "l2", [-1.0])


def test_relu_layer_bound_below_minimal_norm_robust_loss_of_a_trained_head(problem):
    """Boxed bound <= robust 0-1 loss of (layer + logistic head) measured by the minimal-norm engine: any
    classifier on the layer, this one included, loses at least the bound. The engine's margins are upper
    bounds, so its robust loss can only be too small, never too large: a violation is a real failure of
    the bound (or a very weak attack: on this tiny network relu2 is nearly dead and gradient attacks stall
    there, so the check runs on relu1)."""
    from marginkit.attacks import input_margin

    model, x, y, _, boxed = problem
    layer = "relu1"
    feat = truncate(model, layer).double().eval()
    with torch.no_grad():
        z = feat(x.double())
    head = _logistic_head(z, y)
    clf = nn.Sequential(OrderedDict(features=feat, head=head)).double().eval()
    res = input_margin(clf, x.double(), y, "l2", budget=400)
    upper = res.upper.double().numpy()
    bound = _curve(boxed, layer, "zero_one")
    robust = np.array([np.mean(upper <= eps) for eps in EPS])
    assert np.all(bound <= robust + 1e-9), (bound, robust)
    assert bound.max() > 0 and robust.max() > 0  # not vacuous
