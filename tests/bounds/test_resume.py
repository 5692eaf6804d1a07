"""An interrupted layer-wise run resumes from the layers it finished, with identical bounds."""

import os

import numpy as np
import pytest
import torch

import marginkit.bounds.layerwise as layerwise
from marginkit.bounds import layerwise_bounds
from marginkit.models import ModelSpec, build_model

EPS = [0.1, 0.2, 0.4]


def _problem():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(16, 4, generator=g)
    y = (x[:, 0] > 0.5).long()
    return build_model(ModelSpec("mlp", (4,), 2, hidden=3, depth=1), seed=0), x, y


def test_layerwise_run_resumes_from_saved_layers(tmp_path, monkeypatch):
    model, x, y = _problem()
    ckpt = str(tmp_path / "ck")
    straight = layerwise_bounds(model, x, y, "l2", EPS, neighbours=2)

    calls = {"n": 0}
    real = layerwise.pair_budgets

    def crash_on_third_layer(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(layerwise, "pair_budgets", crash_on_third_layer)
    with pytest.raises(KeyboardInterrupt):
        layerwise_bounds(model, x, y, "l2", EPS, neighbours=2, checkpoint_dir=ckpt)
    assert len(os.listdir(ckpt)) == 2  # the two finished layers were saved

    calls["n"] = 0

    def counting(*args, **kwargs):
        calls["n"] += 1
        return real(*args, **kwargs)

    monkeypatch.setattr(layerwise, "pair_budgets", counting)
    resumed = layerwise_bounds(model, x, y, "l2", EPS, neighbours=2, checkpoint_dir=ckpt)
    assert calls["n"] == len(straight.layers) - 2  # only the unfinished layers were searched again
    a, b = straight.to_frame(), resumed.to_frame()
    np.testing.assert_allclose(a["cross_entropy"], b["cross_entropy"], atol=1e-6)
    np.testing.assert_array_equal(a["zero_one"], b["zero_one"])


def test_checkpoints_of_other_settings_are_not_reused(tmp_path):
    model, x, y = _problem()
    ckpt = str(tmp_path / "ck")
    layerwise_bounds(model, x, y, "l2", EPS, neighbours=2, checkpoint_dir=ckpt)
    n = len(os.listdir(ckpt))
    layerwise_bounds(model, x, y, "l2", EPS, neighbours=1, checkpoint_dir=ckpt)
    assert len(os.listdir(ckpt)) == 2 * n
