"""MMA training (Ding et al. 2020): boundary points from the minimal-norm engine, the loss, end-to-end training."""

import pytest
import torch
import torch.nn.functional as F

from marginkit.data import load_dataset
from marginkit.models import ModelSpec, build_model
from marginkit.norms import batch_norm
from marginkit.training import MMATraining, TrainConfig, evaluate_accuracy, get_method, train_model


@pytest.fixture(scope="module")
def toy():
    ds = load_dataset("synthetic", n=300, dim=6, num_classes=3, spread=0.12)
    model = build_model(ModelSpec("mlp", ds.input_shape, ds.num_classes, hidden=16, depth=1), seed=0)
    train_model(model, ds, TrainConfig(epochs=5, lr=1e-2, batch_size=64))
    return ds, model.eval()


def test_registered_and_validated():
    m = get_method("mma", d_max=0.5, norm="linf")
    assert isinstance(m, MMATraining) and m.norm == "linf" and m.d_max == 0.5
    with pytest.raises(ValueError):
        get_method("mma", d_max=0.0)
    with pytest.raises(ValueError):
        get_method("mma", clean_weight=1.5)


@pytest.mark.parametrize("norm", ["l2", "linf"])
def test_search_returns_boundary_points_capped_at_d_max(toy, norm):
    ds, model = toy
    x, y = ds.x_train[:64], ds.y_train[:64]
    with torch.no_grad():
        correct = model(x).argmax(1) == y
    assert 5 < int(correct.sum()) < 64  # both kinds of points are present
    full = MMATraining(norm=norm, d_max=1e6).search(model, x, y)
    assert torch.equal(full.correct.cpu(), correct)
    found = correct & torch.isfinite(full.margin)
    assert int(found.sum()) >= int(correct.sum()) - 1
    delta = full.x_boundary - x
    # Uncapped: the point is the engine's adversarial: at distance d(x) and classified otherwise.
    assert torch.allclose(batch_norm(delta[found], norm).double(), full.margin[found], rtol=1e-4, atol=1e-6)
    with torch.no_grad():
        assert (model(full.x_boundary[found]).argmax(1) != y[found]).all()
    # Misclassified points are trained on as they are.
    assert torch.equal(full.x_boundary[~correct], x[~correct])
    # Capped at the median margin: longer perturbations are shortened to d_max along the same direction.
    d_max = float(full.margin[found].median())
    cap = MMATraining(norm=norm, d_max=d_max).search(model, x, y)
    assert torch.equal(cap.capped, found & (full.margin > d_max))
    lengths = batch_norm(cap.x_boundary - x, norm).double()
    assert torch.allclose(lengths[cap.capped], torch.full_like(lengths[cap.capped], d_max), rtol=1e-4)
    assert (lengths[found] <= d_max * (1 + 1e-4)).all()
    keep = found & ~cap.capped
    assert torch.allclose(cap.x_boundary[keep], full.x_boundary[keep])
    cos = F.cosine_similarity((cap.x_boundary - x)[cap.capped], delta[cap.capped], dim=1)
    assert (cos > 1 - 1e-5).all()


def test_loss_is_ce_at_found_perturbations(toy):
    ds, model = toy
    x, y = ds.x_train[:64], ds.y_train[:64]
    method = MMATraining(norm="l2", d_max=0.3, clean_weight=0.25)
    found = method.search(model, x, y)  # the engine is deterministic: loss() finds the same points
    model.train()
    try:
        loss = method.loss(model, x, y)
        assert model.training
        expect = 0.25 * F.cross_entropy(model(x), y) + 0.75 * F.cross_entropy(model(found.x_boundary), y)
        assert torch.allclose(loss, expect, rtol=1e-5)
        # Not the clean loss: the boundary points raise it (they sit on or near the decision boundary).
        assert loss > F.cross_entropy(model(x), y) + 1e-3
        # The boundary term alone carries weight gradients (delta* is held fixed).
        model.zero_grad()
        MMATraining(norm="l2", d_max=0.3, clean_weight=0.0).loss(model, x, y).backward()
        assert sum(float(p.grad.abs().sum()) for p in model.parameters()) > 0
    finally:
        model.eval()


def test_mma_trains_and_raises_margins():
    ds = load_dataset("synthetic", n=300, dim=6, num_classes=3, spread=0.12)
    spec = ModelSpec("mlp", ds.input_shape, ds.num_classes, hidden=16, depth=1)
    cfg = TrainConfig(epochs=6, lr=1e-2, batch_size=64)
    std = train_model(build_model(spec, seed=1), ds, cfg).model.eval()
    mma = train_model(build_model(spec, seed=1), ds, cfg, get_method("mma", d_max=0.5, steps=5)).model.eval()
    x, y = ds.split("test")
    assert evaluate_accuracy(mma, x, y) > 0.8
    from marginkit.attacks import input_margin

    def median_margin(model):
        r = input_margin(model, x, y, "l2", preset="fast")
        ok = r.upper > 0
        return float(r.upper[ok].median())

    assert median_margin(mma) > median_margin(std)
