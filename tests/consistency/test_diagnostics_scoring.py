import json

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from marginkit.consistency import (
    PseudoMargin,
    PseudoMarginConfig,
    VulnerabilityScorer,
    compute_score,
    evaluate_consistency,
    head_equidistance,
    local_isometry,
    non_robust_labels,
)
from marginkit.margins import affine_input_margin


def test_equidistance_of_a_simplex_head_and_of_a_skewed_one():
    model = nn.Sequential(nn.Flatten(), nn.Linear(4, 4, bias=False))
    with torch.no_grad():
        model[1].weight.copy_(torch.eye(4) * 3.0)  # ||w_i - w_j||_2 = 3 sqrt(2) for every pair
    eq = head_equidistance(model, "l2")
    assert eq.distances.numel() == 6 and eq.relative_iqr == pytest.approx(0.0, abs=1e-12)
    assert eq.median == pytest.approx(3 * np.sqrt(2))
    with torch.no_grad():
        model[1].weight[0] *= 5
    assert head_equidistance(model, "l2").relative_iqr > 0.5
    with pytest.raises(TypeError, match="linear head"):
        head_equidistance(nn.Sequential(nn.Flatten(), nn.ReLU()), "l2")


def test_local_isometry_of_an_isometric_and_a_scaled_extractor():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(6, 3)).eval()  # h = flatten: an exact isometry
    x = torch.rand(30, 6)
    adv = x + 0.05 * torch.randn(30, 6) * torch.rand(30, 1)
    iso = local_isometry(model, x, adv, "l2")
    assert iso.kendall_tau == pytest.approx(1.0) and iso.kappa_median == pytest.approx(1.0)
    scaled = nn.Sequential(nn.Flatten(), nn.Linear(6, 6, bias=False), nn.Linear(6, 3)).eval()
    with torch.no_grad():
        scaled[1].weight.copy_(2.5 * torch.eye(6))
    assert local_isometry(scaled, x, adv, "linf").kappa_median == pytest.approx(2.5)
    valid = torch.ones(30, dtype=torch.bool)
    valid[:5] = False
    assert local_isometry(model, x, adv, "l2", valid=valid).n == 25
    with pytest.raises(ValueError, match="zero distance"):
        local_isometry(model, x, x.clone(), "l2")


@pytest.fixture
def affine():
    torch.manual_seed(1)
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 3)).double().eval()
    x = torch.rand(300, 12, dtype=torch.float64)
    d = affine_input_margin(model, x, None, "l2", bounds=(0.0, 1.0)).margin.numpy()
    return model, x, d


def test_scorer_calibrates_flags_and_roundtrips(affine, tmp_path):
    model, x, d = affine
    eps = float(np.quantile(d, 0.3))
    sc = VulnerabilityScorer.calibrate(model, x, d, eps, kind="feature", norm="l2", tpr=0.95)
    flagged = sc.flag(x).numpy()
    y = non_robust_labels(d, eps).astype(bool)
    assert flagged[y].mean() >= 0.95 and sc.calibration["calibration_tpr"] >= 0.95
    # for an affine model without an active box the feature margin IS d_in; with the box it stays close
    assert flagged[~y].mean() < 0.2
    path = sc.save(tmp_path / "scorer.pt")
    again = VulnerabilityScorer.load(path, model)
    assert again.threshold == sc.threshold and torch.equal(again.flag(x), sc.flag(x))
    tuned = VulnerabilityScorer.calibrate(model, x, d, eps, tpr=None)
    assert tuned.calibration["rule"] == "algorithm1"
    with pytest.raises(ValueError, match="needs a pseudo_margin"):
        VulnerabilityScorer(model, 0.1, kind="pseudo")
    with pytest.raises(ValueError, match="unknown score"):
        compute_score(model, x, "softmax")


def test_scorer_with_a_pseudo_margin(affine, tmp_path):
    model, x, d = affine
    pm = PseudoMargin.fit_model(model, x, d, PseudoMarginConfig(hidden=(16,), epochs=5))
    sc = VulnerabilityScorer.calibrate(model, x, d, float(np.median(d)), kind="pseudo", pseudo_margin=pm)
    again = VulnerabilityScorer.load(sc.save(tmp_path / "s.pt"), model)
    assert torch.allclose(again.score(x), sc.score(x))


def _table(n=400, seed=0):
    rng = np.random.default_rng(seed)
    d = rng.exponential(1.0, n)
    d[:7] = np.inf  # attacks that found nothing
    d[7:10] = np.nan  # not computed
    lm = np.where(np.isfinite(d), d, 5.0) + rng.normal(0, 0.2, n)
    lm = np.abs(lm)
    label = rng.integers(0, 3, n)
    pred = np.where(rng.random(n) < 0.9, label, (label + 1) % 3)
    return pd.DataFrame({"index": np.arange(n), "label": label, "prediction": pred, "logit_margin": lm,
                         "feature_margin": lm / 2, "input_margin_upper": d, "norm": "l2"})


def test_evaluate_consistency_report_is_complete_and_json_clean():
    df = _table()
    rep = evaluate_consistency(df, 0.5, eps_grid=[0.0, 0.5, 100.0], subset_sizes=(50, 10_000), repeats=3,
                               n_resamples=50, extra_scores={"random": np.random.default_rng(1).random(len(df))})
    assert rep.n == 397 and rep.n_dropped == 3 and rep.n_infinite_margin == 7
    assert set(rep.scores) == {"logit_margin", "feature_margin", "random"}
    lm = rep.scores["logit_margin"]
    assert lm.detection.auroc > rep.scores["random"].detection.auroc
    # eps=0: no positive -> undefined with a message; eps=100: every finite margin is non-robust, and the
    # 7 failed attacks (inf) are the only robust samples, so the task is still defined.
    assert [m.defined for m in lm.sweep] == [False, True, True]
    assert "no positive" in lm.sweep[0].message and lm.sweep[2].n - lm.sweep[2].n_positive == 7
    assert "exceed" in lm.message and [a.quantity for a in lm.algorithm1] == ["robust_accuracy", "vulnerable_fraction"]
    json.dumps(rep.to_dict(), allow_nan=False)
    md = rep.to_markdown()
    assert "Kendall tau" in md and "n/a" in md and "never as margin 0" in md
    row = rep.table1_row()
    assert 0 <= row["robust_accuracy"] <= row["accuracy"] <= 100


def test_evaluate_consistency_refuses_bad_tables():
    df = _table()
    with pytest.raises(ValueError, match="no column 'prediction'"):
        evaluate_consistency(df.drop(columns=["prediction"]), 0.5)
    bad = df.copy()
    bad["input_margin_upper"] = np.nan
    with pytest.raises(ValueError, match="all NaN"):
        evaluate_consistency(bad, 0.5)
    bad = df.copy()
    bad.loc[20, "logit_margin"] = np.nan
    with pytest.raises(ValueError, match="logit_margin"):
        evaluate_consistency(bad, 0.5)
    no_head = df.copy()
    no_head["feature_margin"] = np.nan
    rep = evaluate_consistency(no_head, 0.5, subset_sizes=(), n_resamples=0)
    assert "skipped" in rep.scores["feature_margin"].message
