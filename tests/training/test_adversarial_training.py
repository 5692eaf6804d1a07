"""PGD adversarial training and TRADES: losses, mode handling, and that they train end to end."""

import pytest
import torch
import torch.nn.functional as F

from marginkit.attacks.pgd import pgd
from marginkit.data import load_dataset
from marginkit.models import ModelSpec, build_model
from marginkit.training import TrainConfig, evaluate_accuracy, get_method, train_model


@pytest.fixture(scope="module")
def toy():
    ds = load_dataset("synthetic", n=300, dim=6, num_classes=3, spread=0.12)
    return ds, build_model(ModelSpec("mlp", ds.input_shape, ds.num_classes, hidden=16, depth=1), seed=0)


def test_pgd_training_loss_is_ce_at_pgd_points(toy):
    ds, model = toy
    x, y = ds.x_train[:32], ds.y_train[:32]
    method = get_method("pgd", norm="linf", eps=0.1, steps=3)
    model.train()
    torch.manual_seed(5)
    loss = method.loss(model, x, y)
    assert model.training  # restored after the eval-mode attack
    torch.manual_seed(5)
    model.eval()
    x_adv = pgd(model, x, y, "linf", 0.1, steps=3, seed=None, keep_best=False)
    model.train()
    assert torch.allclose(loss, F.cross_entropy(model(x_adv), y))
    assert loss >= F.cross_entropy(model(x), y)
    zero = get_method("pgd", eps=0.0, steps=2).loss(model, x, y)
    assert torch.allclose(zero, F.cross_entropy(model(x), y))


def test_trades_loss(toy):
    ds, model = toy
    x, y = ds.x_train[:32], ds.y_train[:32]
    model.train()
    ce = F.cross_entropy(model(x), y)
    assert torch.allclose(get_method("trades", beta=0.0).loss(model, x, y), ce)
    trades = get_method("trades", norm="l2", eps=0.5, beta=6.0, steps=5)
    assert trades.loss(model, x, y) > ce
    assert model.training
    x_adv = trades.adversarial(model, x)
    assert (x_adv - x).flatten(1).norm(dim=1).max() <= 0.5 + 1e-5


@pytest.mark.parametrize("name,params", [("pgd", {"norm": "l2", "eps": 0.3, "steps": 3}),
                                          ("trades", {"eps": 0.3, "steps": 3}),
                                          ("amr", {"tau": 1.0}), ("lcr", {})])
def test_methods_train_and_are_reproducible(toy, name, params):
    ds, _ = toy
    results = []
    for _ in range(2):
        model = build_model(ModelSpec("mlp", ds.input_shape, ds.num_classes, hidden=16, depth=1), seed=0)
        res = train_model(model, ds, TrainConfig(epochs=4, lr=1e-2, batch_size=32, seed=1), get_method(name, **params))
        results.append(res)
    assert results[0].test_accuracy > 0.6
    assert results[0].history[-1]["loss"] == results[1].history[-1]["loss"]
    assert results[0].settings["method"]["name"] == name


def test_pgd_training_is_more_robust_than_standard():
    ds = load_dataset("synthetic", n=400, dim=8, num_classes=3, spread=0.1)
    spec = ModelSpec("mlp", ds.input_shape, ds.num_classes, hidden=32, depth=1)
    cfg = TrainConfig(epochs=20, lr=1e-2, batch_size=32, seed=0)
    std = train_model(build_model(spec, seed=0), ds, cfg, get_method("standard")).model
    adv = train_model(build_model(spec, seed=0), ds, cfg, get_method("pgd", norm="l2", eps=0.4, steps=5)).model
    x, y = ds.split("test")

    def robust(m):
        return evaluate_accuracy(m, pgd(m, x, y, "l2", 0.4, steps=20), y)

    assert robust(adv) > robust(std)
