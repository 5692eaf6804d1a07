"""Margin tracking: Theorem 3 lower bound, estimators, the tracker callback, the linear case of section 3."""

import json
import math

import numpy as np
import pytest
import torch
from torch import nn

from marginkit.data import load_dataset
from marginkit.margins import affine_input_margin
from marginkit.models import ModelSpec, build_model
from marginkit.training import TrainConfig, train_model
from marginkit.training.dynamics import (
    MarginTracker,
    estimate_margins,
    hard_margin_svm,
    linear_margin_dynamics,
    lipschitz_margin,
)


def _linear(d=12, c=4, seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(d, c)).eval()


@pytest.mark.parametrize("norm", ["l2", "linf", "l1"])
def test_lipschitz_bound_is_exact_for_affine_models(norm):
    model = _linear()
    x = torch.rand(40, 12, generator=torch.Generator().manual_seed(1))
    exact = affine_input_margin(model, x, None, norm, bounds=None).margin
    got = lipschitz_margin(model, x, None, norm, radius=0.5, samples=3).bound
    assert torch.allclose(got, exact.clamp(max=0.5), atol=1e-5)
    assert (got <= 0.5).all()


def test_lipschitz_bound_below_true_distance_for_a_relu_net():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(2, 16), nn.ReLU(), nn.Linear(16, 3)).eval()
    x = torch.rand(12, 2, generator=torch.Generator().manual_seed(2)) * 2 - 1
    lb = lipschitz_margin(model, x, None, "l2", radius=1.0, samples=4000, seed=0).bound
    # True l2 distance to the decision boundary by scanning circles of growing radius (2-D brute force).
    pred = model(x).argmax(1)
    ang = torch.linspace(0, 2 * math.pi, 2000)
    circle = torch.stack([ang.cos(), ang.sin()], 1)
    true = torch.full((12,), float("inf"))
    with torch.no_grad():
        for r in torch.linspace(1e-3, 1.0, 1000):
            pts = x[:, None, :] + r * circle[None]
            flipped = (model(pts.reshape(-1, 2)).argmax(1).reshape(12, -1) != pred[:, None]).any(1)
            true = torch.where(flipped & torch.isinf(true), r.expand(12), true)
    true = true.clamp(max=1.0).double()
    assert (lb <= true + 2e-3).all()
    assert (lb > 0).all()


def test_lipschitz_misclassified_and_bad_input():
    model = _linear()
    x = torch.rand(10, 12)
    pred = model(x).argmax(1)
    res = lipschitz_margin(model, x, (pred + 1) % 4, "l2", samples=2)
    assert (res.bound == 0).all()
    with pytest.raises(ValueError):
        lipschitz_margin(model, x, None, "l2", radius=0.0)
    with pytest.raises(ValueError, match="NaN"):
        lipschitz_margin(model, x * float("nan"), None, "l2")


def test_estimate_margins_auto_and_mask():
    model = _linear()
    x = torch.rand(30, 12)
    y = model(x).argmax(1)
    y[:5] = (y[:5] + 1) % 4
    m, correct = estimate_margins(model, x, y, "auto", "l2")
    exact = affine_input_margin(model, x, y, "l2", bounds=None).margin
    assert correct.sum() == 25 and (m[:5] == 0).all()
    assert torch.allclose(m[correct], exact[correct])
    relu = nn.Sequential(nn.Linear(12, 8), nn.ReLU(), nn.Linear(8, 4)).eval()
    m2, _ = estimate_margins(relu, x, y, "paper", "l2", samples=4)  # the paper's choice: the Lipschitz bound
    assert torch.isfinite(m2).all()
    with pytest.raises(ValueError, match="estimator"):
        estimate_margins(model, x, y, "certify")


def test_estimate_margins_with_the_engine_upper_bound():
    model = _linear(c=3)
    x = torch.rand(16, 12, generator=torch.Generator().manual_seed(3))
    y = model(x).argmax(1)
    up, _ = estimate_margins(model, x, y, "attack", "l2", bounds=(0.0, 1.0))
    exact = affine_input_margin(model, x, y, "l2", bounds=(0.0, 1.0)).margin
    fin = torch.isfinite(up)
    assert fin.float().mean() > 0.9
    assert (up[fin] >= exact[fin] - 1e-4).all()  # an upper bound on the exact margin
    assert torch.allclose(up[fin], exact[fin], rtol=0.05)


def test_tracker_records_every_k_epochs(tmp_path):
    ds = load_dataset("synthetic", n=200, dim=5, num_classes=3)
    model = build_model(ModelSpec("linear", ds.input_shape, ds.num_classes), seed=0)
    tracker = MarginTracker({"train": ds.split("train"), "test": ds.split("test")}, every=2, at=[1],
                            path=tmp_path / "m.json")
    res = train_model(model, ds, TrainConfig(epochs=4, lr=0.05, seed=0), callbacks=[tracker])
    epochs = sorted({r["epoch"] for r in tracker.history})
    assert epochs == [0, 1, 2, 4]
    for r in tracker.history:
        if r["n_correct"]:
            assert r["min_margin"] <= r["avg_margin"] + 1e-12
            assert len(r["margins"]) == r["n_correct"]
    assert "train_avg_margin" in res.history[1] and "train_avg_margin" not in res.history[2]
    saved = json.loads((tmp_path / "m.json").read_text())
    assert len(saved["history"]) == len(tracker.history) and saved["settings"]["estimator"] == "paper"
    assert set(tracker.frame().columns) >= {"epoch", "split", "min_margin", "avg_margin"}


def test_hard_margin_svm_matches_known_solution():
    x = np.array([[2.0, 0.0], [0.0, 2.0], [-1.0, 0.0], [0.0, -1.0]])
    s = np.array([1.0, 1.0, -1.0, -1.0])
    w, b = hard_margin_svm(x, s, bias=True)
    # By symmetry the separator is w = (a, a); the closest points (-1, 0), (0, -1) and (2, 0), (0, 2)
    # are equally far: a*2 + b = 1 and -a + b = -1, so a = 2/3, b = -1/3 and the margin is 1/||w||.
    assert w == pytest.approx([2 / 3, 2 / 3], abs=1e-4) and b == pytest.approx(-1 / 3, abs=1e-4)
    margins = s * (x @ w + b) / np.linalg.norm(w)
    assert margins.min() == pytest.approx(1.0 / np.linalg.norm(w), rel=1e-4)
    with pytest.raises(ValueError, match="separable"):
        hard_margin_svm(np.array([[1.0], [1.0]]), np.array([1.0, -1.0]))


def test_linear_case_min_margin_rises_average_falls():
    res = linear_margin_dynamics(epochs=400, record_at=[1, 10, 50, 100, 200, 400], image_epochs=[10, 400])
    df = res.frame().set_index("epoch")
    # The SVM maximises the minimum margin: no GD iterate can beat it.
    assert (df["train_min_margin"] <= res.svm["train_min_margin"] + 1e-6).all()
    assert df.loc[400, "train_error"] == 0.0
    assert df.loc[400, "train_min_margin"] > df.loc[50, "train_min_margin"] > df.loc[10, "train_min_margin"]
    assert df.loc[400, "train_avg_margin"] < df.loc[10, "train_avg_margin"]
    assert res.svm["train_avg_margin"] < df.loc[400, "train_avg_margin"]
    # Eq. (7): the adversarial examples lie on the decision boundary w^T x = 0.
    assert set(res.adversarial) == {10, 400}
    assert res.adversarial[400].shape == res.examples.shape
    on_boundary = res.adversarial[400].reshape(2, -1).double() @ res.weight
    assert on_boundary.abs().max() < 1e-4
    assert (res.examples.reshape(2, -1).double() @ res.weight).abs().min() > 0.1
