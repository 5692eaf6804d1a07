"""AMR and LCR: value and gradient against a literal, loop-based transcription of paper eq. (15)."""

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from marginkit.training import get_method
from marginkit.training.regularizers import (
    AverageMarginRegularizer,
    LipschitzRegularizer,
    feature_margin_term,
    orthogonality_penalty,
)


def _cnn(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(1, 3, 3), nn.ReLU(), nn.Flatten(), nn.Linear(3 * 4 * 4, 5), nn.ReLU(),
                         nn.Linear(5, 4))


def _reference_eq15(model, x, y, lam, tau, beta):
    """Eq. (15) written out sample by sample (batch mean of the data terms), no vectorisation."""
    phi_net = model[:-1]
    head = model[-1]
    total = 0.0
    for i in range(x.shape[0]):
        phi = phi_net(x[i : i + 1]).flatten()
        logits = head(phi)
        ce = -torch.log_softmax(logits, 0)[y[i]]
        term = ce
        if int(logits.argmax()) == int(y[i]):
            w = [head.weight[k] / torch.sqrt((head.weight[k] ** 2).sum()) for k in range(head.weight.shape[0])]
            m = min((w[int(y[i])] - w[k]) @ phi for k in range(len(w)) if k != int(y[i]))
            term = term - lam * torch.clamp(m, 0.0, tau)
        total = total + term
    total = total / x.shape[0]
    orth = 0.0
    for layer in (model[0], model[3], model[5]):
        w = layer.weight.reshape(layer.weight.shape[0], -1)
        orth = orth + ((w @ w.T - torch.eye(w.shape[0])) ** 2).sum()
    return total + beta * orth


@pytest.mark.parametrize("tau", [0.05, 5.0])
def test_amr_value_and_gradient_match_eq15(tau):
    model = _cnn()
    x = torch.rand(12, 1, 6, 6, generator=torch.Generator().manual_seed(3))
    y = torch.randint(0, 4, (12,), generator=torch.Generator().manual_seed(4))
    y[:6] = model(x[:6]).argmax(1)  # make some samples correctly classified
    amr = AverageMarginRegularizer(lam=0.7, tau=tau, beta=0.01)
    ours = amr.loss(model, x, y)
    g_ours = torch.autograd.grad(ours, list(model.parameters()))
    ref = _reference_eq15(model, x, y, 0.7, tau, 0.01)
    g_ref = torch.autograd.grad(ref, list(model.parameters()))
    assert torch.allclose(ours, ref, atol=1e-5)
    for a, b in zip(g_ours, g_ref):
        assert torch.allclose(a, b, atol=1e-5)


def test_amr_rewards_only_correct_points_below_tau():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(4, 3))
    x = torch.randn(30, 4)
    pred = model(x).argmax(1)
    wrong = (pred + 1) % 3
    no_ce = AverageMarginRegularizer(lam=1.0, tau=100.0, beta=0.0)
    # On misclassified points the margin term is zero (the public code penalised exactly these).
    t = no_ce.terms(model, x, wrong)
    assert t["margin"].item() == 0.0
    # On correct points it is the mean truncated margin and it is positive.
    t = no_ce.terms(model, x, pred)
    m = feature_margin_term(x, model[1].weight, pred)
    assert torch.allclose(t["margin"], m.clamp(0, 100).mean())
    assert t["margin"] > 0
    # Above tau the term is flat: zero gradient with respect to the inputs.
    xr = x.clone().requires_grad_(True)
    flat = AverageMarginRegularizer(lam=1.0, tau=1e-6, beta=0.0).terms(model, xr, pred)["margin"]
    (g,) = torch.autograd.grad(flat, xr)
    assert g.abs().max() == 0


def test_feature_margin_uses_normalised_rows():
    w = torch.tensor([[3.0, 0.0], [0.0, 0.5]])
    phi = torch.tensor([[2.0, 1.0]])
    # normalised rows e1, e2: margin for class 0 is 2 - 1 = 1, independent of the row scales
    assert torch.allclose(feature_margin_term(phi, w, torch.tensor([0])), torch.tensor([1.0]))


def test_orthogonality_counts_each_layer_once_and_both_gram_sides_agree():
    model = _cnn()
    explicit = sum(((l.weight.reshape(l.weight.shape[0], -1) @ l.weight.reshape(l.weight.shape[0], -1).T
                     - torch.eye(l.weight.shape[0])) ** 2).sum() for l in (model[0], model[3], model[5]))
    assert torch.allclose(orthogonality_penalty(model), explicit, rtol=1e-5)
    q, _ = torch.linalg.qr(torch.randn(6, 6))
    ortho = nn.Linear(6, 4, bias=False)
    ortho.weight.data = q[:4]
    assert orthogonality_penalty(ortho).item() == pytest.approx(0.0, abs=1e-8)
    tall = nn.Linear(4, 6, bias=False)
    tall.weight.data = q[:, :4]  # orthonormal columns: W W^T - I has 6 - 4 = 2 unit defects
    assert orthogonality_penalty(tall).item() == pytest.approx(2.0, abs=1e-5)


def test_lcr_is_ce_plus_orthogonality():
    model = _cnn()
    x = torch.rand(5, 1, 6, 6)
    y = torch.tensor([0, 1, 2, 3, 0])
    got = LipschitzRegularizer(beta=0.5).loss(model, x, y)
    assert torch.allclose(got, F.cross_entropy(model(x), y) + 0.5 * orthogonality_penalty(model))


def test_registry_and_bad_params():
    assert get_method("amr", lam=0.2).lam == 0.2
    assert get_method("lcr").beta == 1e-3
    with pytest.raises(ValueError):
        get_method("amr", tau=-1.0)
    with pytest.raises(ValueError, match="bad parameters"):
        get_method("amr", gamma=1.0)
