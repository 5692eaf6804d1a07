"""Robust accuracy from PGD and from minimal-norm margins, against exact affine margins."""

import pytest
import torch
from torch import nn

from marginkit.margins import affine_input_margin
from marginkit.training.evaluation import accuracy_from_margins, pgd_robust_accuracy


def _binary(seed=0, d=10):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Flatten(), nn.Linear(d, 2)).eval()
    x = torch.rand(80, d, generator=torch.Generator().manual_seed(seed + 1))
    y = torch.randint(0, 2, (80,), generator=torch.Generator().manual_seed(seed + 2))
    return model, x, y


def test_accuracy_from_margins():
    m = torch.tensor([0.0, 0.2, 0.5, 1.0, float("inf")])
    c = torch.tensor([False, True, True, True, True])
    assert accuracy_from_margins(m, c, [0.0, 0.3, 1.0, 5.0]) == [0.8, 0.6, 0.2, 0.2]


def test_pgd_and_exact_margins_agree_on_binary_affine():
    model, x, y = _binary()
    exact = affine_input_margin(model, x, y, "l2", bounds=(0.0, 1.0)).margin
    eps = sorted(float(v) for v in exact[torch.isfinite(exact) & (exact > 0)].quantile(torch.tensor([0.2, 0.5, 0.8], dtype=torch.float64)))
    eps = [e * 1.001 for e in eps]  # keep the budgets off the exact margins of individual samples
    res = pgd_robust_accuracy(model, x, y, "l2", eps, steps=60)
    t = res.table
    assert res.settings["margins"] == "exact"
    assert torch.allclose(res.margins, exact)
    # Binary affine: PGD is exact, so both columns agree; and the margin curve equals its definition.
    assert list(t["pgd_robust_accuracy"]) == pytest.approx(list(t["margin_robust_accuracy"]), abs=1.5 / 80)
    correct = model(x).argmax(1) == y
    assert list(t["margin_robust_accuracy"]) == accuracy_from_margins(exact, correct, eps)
    assert (t["robust_accuracy"] <= t["pgd_robust_accuracy"] + 1e-12).all()
    assert t["pgd_robust_accuracy"].is_monotonic_decreasing


def test_robust_accuracy_with_engine_margins_on_relu_net():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 3)).eval()
    x = torch.rand(24, 6, generator=torch.Generator().manual_seed(4))
    y = model(x).argmax(1)
    res = pgd_robust_accuracy(model, x, y, "l2", [0.05, 0.2, 1.0], steps=20)
    t = res.table
    assert res.settings["margins"] == "attack"
    assert (t["robust_accuracy"] <= t[["pgd_robust_accuracy", "margin_robust_accuracy"]].min(axis=1) + 1e-12).all()
    assert t["margin_robust_accuracy"].is_monotonic_decreasing
    assert (t["clean_accuracy"] == 1.0).all()


def test_robust_accuracy_given_margins_and_errors():
    model, x, y = _binary()
    res = pgd_robust_accuracy(model, x, y, "linf", [0.01], steps=5, margins=None)
    assert res.margins is None and res.table["margin_robust_accuracy"].isna().all()
    with pytest.raises(ValueError, match="shape"):
        pgd_robust_accuracy(model, x, y, "l2", [0.1], steps=2, margins=torch.ones(3))
    with pytest.raises(ValueError, match="eps"):
        pgd_robust_accuracy(model, x, y, "l2", [], steps=2)
    with pytest.raises(ValueError, match="class"):
        pgd_robust_accuracy(model, x, y + 5, "l2", [0.1], steps=2)
