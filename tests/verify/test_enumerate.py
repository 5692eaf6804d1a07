"""Exact margins by enumeration of activation regions: the ground truth of the verify tests."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from marginkit.margins.affine import affine_input_margin
from marginkit.verify.enumerate import MAX_ENUMERATED_NEURONS, enumerate_margin, enumerate_margin_layers

from ._exact_nets import two_relu_net


@pytest.mark.parametrize("norm, expected", [("linf", 0.15), ("l1", 0.2), ("l2", 0.2)])
def test_hand_built_two_relu_network(norm: str, expected: float) -> None:
    res = enumerate_margin(two_relu_net(), torch.tensor([[0.5, 0.5]]), None, norm)
    assert res.margin[0] == pytest.approx(expected, abs=1e-7)
    assert res.target[0] == 1
    with torch.no_grad():
        z = two_relu_net().double()(torch.from_numpy(res.point))
    assert float(z[0, 1] - z[0, 0]) == pytest.approx(0.0, abs=1e-7)  # the minimiser lies on the boundary


@pytest.mark.parametrize("norm", ["linf", "l1", "l2"])
def test_affine_models_match_the_closed_form(norm: str) -> None:
    torch.manual_seed(3)
    model = nn.Sequential(nn.Flatten(), nn.Linear(4, 3))
    x = torch.rand(5, 4)
    expected = affine_input_margin(model, x, None, norm).margin.numpy()
    got = enumerate_margin(model, x, None, norm).margin
    finite = np.isfinite(expected)
    assert finite.any()
    np.testing.assert_allclose(got[finite], expected[finite], rtol=1e-6, atol=1e-8)
    assert np.array_equal(np.isfinite(got), finite)


def test_box_without_any_flip_gives_inf_and_labels_give_zero() -> None:
    net = two_relu_net()
    with torch.no_grad():
        net[2].bias[0] = 5.0  # class 1 can reach at most 0.8 < 5 in the box
    res = enumerate_margin(net, torch.tensor([[0.5, 0.5]]), None, "linf")
    assert math.isinf(res.margin[0]) and res.target[0] == -1
    wrong = enumerate_margin(net, torch.tensor([[0.5, 0.5]]), torch.tensor([1]), "linf")
    assert wrong.margin[0] == 0.0


def test_deeper_network_regions_and_box() -> None:
    rng = np.random.default_rng(5)  # a seed whose three classes all own part of the box
    layers = [(3 * rng.normal(size=(4, 2)), rng.normal(size=4)), (2 * rng.normal(size=(3, 4)), rng.normal(size=3)),
              (2 * rng.normal(size=(3, 3)), rng.normal(size=3))]
    x = rng.uniform(size=(6, 2))
    from marginkit.verify.enumerate import _forward64

    ref = _forward64(layers, x).argmax(1)
    res = enumerate_margin_layers(layers, x, ref, "linf")
    ok = np.isfinite(res.margin)
    assert ok.any()
    # the minimiser lies in the box, at the claimed distance, on a boundary of the reference class
    p = res.point[ok]
    assert np.all((p >= -1e-9) & (p <= 1 + 1e-9))
    np.testing.assert_allclose(np.abs(p - x[ok]).max(1), res.margin[ok], rtol=1e-7, atol=1e-9)
    z = _forward64(layers, p)
    gap = z[np.arange(len(p)), ref[ok]] - z[np.arange(len(p)), res.target[ok]]
    np.testing.assert_allclose(gap, 0.0, atol=1e-6)
    # no random point closer than the margin flips (a sampling check of the minimum)
    for s in np.flatnonzero(ok):
        cand = np.clip(x[s] + rng.uniform(-1, 1, size=(4000, 2)) * res.margin[s] * 0.999, 0, 1)
        assert (_forward64(layers, cand).argmax(1) == ref[s]).all()


def test_too_many_neurons_is_refused() -> None:
    wide = nn.Sequential(nn.Linear(2, MAX_ENUMERATED_NEURONS + 1), nn.ReLU(), nn.Linear(MAX_ENUMERATED_NEURONS + 1, 2))
    with pytest.raises(ValueError, match="tiny networks"):
        enumerate_margin(wide, torch.rand(1, 2), None, "linf")
