import numpy as np
import pytest
import torch
from torch import nn

from marginkit.consistency import PseudoMargin, PseudoMarginConfig, compare_scores, margin_consistency, representation


def _synthetic(n, seed):
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(n, 6, generator=g)
    d = (z[:, 0].abs() + 0.5 * z[:, 1].abs() + 0.05).double().numpy()  # a margin not linear in z
    return z, d


CFG = PseudoMarginConfig(hidden=(64, 64), epochs=120, batch_size=128, lr=3e-3, patience=30, seed=0)


@pytest.fixture(scope="module")
def fitted():
    z, d = _synthetic(900, 0)
    return PseudoMargin.fit(z, d, CFG)


def test_learns_a_ranking_that_generalises(fitted):
    z, d = _synthetic(400, 1)
    p = fitted.predict(z).numpy()
    tau = margin_consistency(p, d, n_resamples=0).tau
    baseline = z[:, 0].numpy()  # a score that ignores |.| and z_1: weakly consistent
    assert tau > 0.7
    assert tau > margin_consistency(baseline, d, n_resamples=0).tau + 0.3
    table = compare_scores({"baseline": baseline, "pseudo": p}, d, eps=float(np.quantile(d, 0.3)))
    assert table["pseudo"]["auroc"] > table["baseline"]["auroc"]
    assert fitted.info["n_val"] == 180 and fitted.info["epochs_run"] <= CFG.epochs
    assert min(fitted.history["val_mse"]) == pytest.approx(fitted.info["best_val_mse"])


def test_targets_are_monotone_and_failed_attacks_map_to_the_top(fitted):
    d = np.array([0.0, 0.1, 0.5, fitted.cap, 10 * fitted.cap, np.inf])
    t = fitted.target(d)
    assert np.all(np.diff(t) >= 0) and t[0] == 0.0 and t[-1] == 1.0 and t[3] == pytest.approx(1.0)
    back = fitted.predict_margin(torch.zeros(1, 6))
    assert back.item() >= 0


def test_save_load_roundtrip(fitted, tmp_path):
    path = fitted.save(tmp_path / "pm.pt")
    again = PseudoMargin.load(path)
    z, _ = _synthetic(20, 2)
    assert torch.equal(fitted.predict(z), again.predict(z))
    assert again.config == fitted.config
    with pytest.raises(ValueError, match="fitted on 6"):
        again.predict(torch.randn(3, 5))
    (tmp_path / "junk.pt").write_bytes(b"not a file")
    with pytest.raises(ValueError, match="not a readable pseudo-margin"):
        PseudoMargin.load(tmp_path / "junk.pt")


def test_bad_inputs():
    z, d = _synthetic(50, 3)
    with pytest.raises(ValueError, match="NaN"):
        PseudoMargin.fit(z, np.where(np.arange(50) == 3, np.nan, d), CFG)
    with pytest.raises(ValueError, match="input_margin has 49"):
        PseudoMargin.fit(z, d[:49], CFG)
    with pytest.raises(ValueError, match="source must be"):
        PseudoMarginConfig(source="pixels")
    with pytest.raises(ValueError, match="positive finite"):
        PseudoMargin.fit(z, np.full(50, np.inf), CFG)


def test_reads_features_or_logits_of_a_model():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(10, 7), nn.ReLU(), nn.Linear(7, 3)).eval()
    x = torch.rand(40, 10)
    assert representation(model, x, "features").shape == (40, 7)
    assert representation(model, x, "logits").shape == (40, 3)
    d = np.random.default_rng(0).exponential(1.0, 40)
    pm = PseudoMargin.fit_model(model, x, d, PseudoMarginConfig(source="logits", hidden=(8,), epochs=3))
    assert pm.score(model, x).shape == (40,)
