"""Pair searches spread over an executor give the budgets of the single search."""

import numpy as np
import pytest
import torch

from marginkit.bounds import feature_chain, pair_budgets
from marginkit.models import ModelSpec, build_model
from marginkit.parallel import ExecutorConfig


def _case():
    model = build_model(ModelSpec("mlp", (5,), 2, hidden=3, depth=2), seed=3)
    rng = np.random.default_rng(0)
    x = torch.as_tensor(rng.uniform(0, 1, (10, 5)))
    y = torch.as_tensor(np.repeat([0, 1], 5))
    return feature_chain(model, "relu1", (5,)), x, y


# Ray itself is covered by tests/parallel; the Ray variant here (about 8 s) runs with -m slow.
@pytest.mark.parametrize("config", [ExecutorConfig(executor="local"), pytest.param("ray", marks=pytest.mark.slow)])
def test_pair_budgets_over_an_executor_equal_the_single_search(config):
    if config == "ray":
        pytest.importorskip("ray")
        config = ExecutorConfig(workers=2, progress=False)
    chain, x, y = _case()
    one = pair_budgets(chain, x, y, "l2", neighbours=None)
    spread = pair_budgets(chain, x, y, "l2", neighbours=None, executor=config)
    assert one.info["searched"] == spread.info["searched"] > 1
    np.testing.assert_allclose(spread.budget, one.budget, rtol=1e-6, atol=1e-9)
