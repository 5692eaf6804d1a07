"""PGD against the exact margins of affine models (ground truth) and its contract."""

import pytest
import torch
from torch import nn

from marginkit.attacks.pgd import pgd, random_ball
from marginkit.margins import affine_input_margin
from marginkit.norms import batch_norm


def _linear(d=20, c=3, seed=0):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Flatten(), nn.Linear(d, c)).eval()
    x = torch.rand(64, d, generator=torch.Generator().manual_seed(seed + 1))
    return model, x, model(x).argmax(1).detach()


@pytest.mark.parametrize("norm", ["l2", "linf"])
@pytest.mark.parametrize("bounds", [None, (0.0, 1.0)])
@pytest.mark.parametrize("loss", ["ce", "margin"])
def test_pgd_matches_exact_binary_affine_margin(norm, bounds, loss):
    # Binary affine: the attack objective is monotone in one linear function, so PGD is exact.
    model, x, y = _linear(c=2)
    exact = affine_input_margin(model, x, y, norm, bounds=bounds).margin.float()
    ok = torch.isfinite(exact)
    x, y, exact = x[ok], y[ok], exact[ok]
    below = pgd(model, x, y, norm, 0.95 * exact, steps=30, bounds=bounds, loss=loss)
    assert (model(below).argmax(1) == y).all()  # nothing is misclassified inside the exact margin
    above = pgd(model, x, y, norm, 1.05 * exact, steps=60, bounds=bounds, loss=loss)
    assert (model(above).argmax(1) != y).all()


@pytest.mark.parametrize("norm", ["l2", "linf"])
@pytest.mark.parametrize("loss", ["ce", "margin"])
def test_pgd_multiclass_affine(norm, loss):
    # With 3+ classes the objective is a max of linear pieces (local optima), so only a looser claim holds.
    model, x, y = _linear(c=3)
    exact = affine_input_margin(model, x, y, norm, bounds=(0.0, 1.0)).margin.float()
    ok = torch.isfinite(exact)
    x, y, exact = x[ok], y[ok], exact[ok]
    assert (model(pgd(model, x, y, norm, 0.95 * exact, steps=30, loss=loss)).argmax(1) == y).all()
    above = pgd(model, x, y, norm, 1.5 * exact, steps=60, loss=loss)
    assert (model(above).argmax(1) != y).float().mean() >= 0.95


@pytest.mark.parametrize("norm", ["l1", "l2", "linf"])
def test_pgd_stays_in_ball_and_box(norm):
    model, x, y = _linear()
    eps = torch.linspace(0.0, 0.5, x.shape[0])
    adv = pgd(model, x, y, norm, eps, steps=5)
    assert (batch_norm(adv - x, norm) <= eps + 1e-5).all()
    assert adv.min() >= 0 and adv.max() <= 1
    assert torch.equal(adv[0], x[0])  # eps = 0 returns the input


def test_pgd_is_seeded_and_leaves_parameter_grads_alone():
    model, x, y = _linear()
    a = pgd(model, x, y, "l2", 0.3, steps=3, seed=7)
    b = pgd(model, x, y, "l2", 0.3, steps=3, seed=7)
    assert torch.equal(a, b)
    assert all(p.grad is None for p in model.parameters())


def test_pgd_cnn_runs_and_lowers_accuracy():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 3)).eval()
    x = torch.rand(16, 1, 8, 8)
    y = model(x).argmax(1).detach()
    adv = pgd(model, x, y, "linf", 0.5, steps=10)
    assert adv.shape == x.shape
    assert (model(adv).argmax(1) == y).float().mean() < 1.0


def test_random_ball_is_inside_ball():
    g = torch.Generator().manual_seed(0)
    r = torch.tensor([0.1, 1.0, 3.0])
    for norm in ("l1", "l2", "linf"):
        pts = random_ball((3, 50), r, norm, generator=g)
        assert (batch_norm(pts, norm) <= r + 1e-6).all()


def test_pgd_bad_inputs():
    model, x, y = _linear()
    with pytest.raises(ValueError, match="NaN"):
        pgd(model, x.clone().fill_(float("nan")), y, "l2", 0.1)
    with pytest.raises(ValueError, match="class"):
        pgd(model, x, torch.full_like(y, 7), "l2", 0.1)
    with pytest.raises(ValueError, match="eps"):
        pgd(model, x, y, "l2", torch.ones(3))
    with pytest.raises(ValueError, match="eps"):
        pgd(model, x, y, "l2", -1.0)
    with pytest.raises(ValueError, match="bounds"):
        pgd(model, x + 2, y, "l2", 0.1)
    with pytest.raises(ValueError, match="norm"):
        pgd(model, x, y, "l3", 0.1)
