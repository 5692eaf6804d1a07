"""model_consistency: the table evaluation plus the model-dependent steps, on a tiny linear model."""

import numpy as np
import pytest
import torch
from torch import nn

from marginkit.consistency import PseudoMarginConfig, evaluate_consistency, model_consistency
from marginkit.pipeline import margin_table


def _setup(n=80, d=16, c=4, seed=0):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Flatten(), nn.Linear(d, c)).eval()
    x = torch.rand(n, 1, d)
    with torch.no_grad():
        y = model(x).argmax(1)
    y[:8] = (y[:8] + 1) % c  # a few misclassified samples
    return model, x, y


def test_model_consistency_adds_pseudo_margin_equidistance_and_isometry():
    model, x, y = _setup()
    table = margin_table(model, x, y, "l2")
    x_tr = torch.rand(60, 1, 16)
    with torch.no_grad():
        y_tr = model(x_tr).argmax(1)
    m_tr = margin_table(model, x_tr, y_tr, "l2")["input_margin_upper"].to_numpy(copy=True)
    m_tr[:3] = np.nan  # not computed: left out of the fit
    study = model_consistency(model, x, table, 0.1, train=(x_tr, m_tr), pseudo_config=PseudoMarginConfig(epochs=3),
                              isometry=10, subset_sizes=(20,), repeats=2, n_resamples=20)
    rep = study.report
    assert set(rep.scores) == {"logit_margin", "feature_margin", "pseudo-margin"}
    assert rep.extras["pseudo_margin"]["n_train_total"] == 57 and study.pseudo_margin is not None
    assert set(rep.extras["pseudo_margin"]["comparison"]) >= {"logit margin", "pseudo-margin"}
    assert rep.extras["equidistance"]["pairs"] == 6
    # the feature extractor of a linear model is the identity: an exact isometry
    assert abs(rep.extras["isometry"]["kappa_median"] - 1.0) < 1e-6 and study.isometry is not None
    # the table part is evaluate_consistency's
    plain = evaluate_consistency(table, 0.1, subset_sizes=(20,), repeats=2, n_resamples=20)
    assert rep.scores["logit_margin"].consistency.kendall.value == plain.scores["logit_margin"].consistency.kendall.value


def test_model_consistency_checks_its_inputs():
    model, x, y = _setup()
    table = margin_table(model, x, y, "l2")
    with pytest.raises(ValueError, match="aligned"):
        model_consistency(model, x[:10], table, 0.1)
    with pytest.raises(ValueError, match="need the table's inputs"):
        model_consistency(model, None, table, 0.1, isometry=5)
    # without the extra steps only the model's head is read
    rep = model_consistency(model, None, table, 0.1, subset_sizes=(20,), repeats=2, n_resamples=0).report
    assert "pseudo-margin" not in rep.scores and "isometry" not in rep.extras and rep.extras["equidistance"]["pairs"] == 6
