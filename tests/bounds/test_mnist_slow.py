"""A miniature of the documented MNIST 3-vs-7 layer-wise run (docs/bounds.md); slow, run with -m slow."""

import numpy as np
import pytest

pytestmark = pytest.mark.slow


def test_mnist_3_vs_7_layerwise_miniature(shared_cache):
    from marginkit.bounds import balanced_subset, layerwise_bounds
    from marginkit.data import load_dataset
    from marginkit.training import demo_model

    model, _ = demo_model("mlp", classes=(3, 7), depth=3, hidden=64, cache_dir=shared_cache)
    ds = load_dataset("mnist5k", classes=(3, 7))
    x, y = ds.split("train")
    idx = balanced_subset(y, 25, seed=0)
    res = layerwise_bounds(model, x[idx], y[idx], "l2", [1.5, 2.0, 2.5], layers=["input", "fc1", "relu1"],
                           neighbours=1).to_frame()
    curves = {k: g.sort_values("eps")["cross_entropy"].to_numpy() for k, g in res.groupby("layer")}
    assert np.all(curves["fc1"] >= curves["input"] - 1e-6)
    assert np.all(curves["relu1"] >= curves["fc1"] - 1e-6)
    assert curves["fc1"][-1] > curves["input"][-1] + 0.1  # the 64-wide first layer loses robustness
