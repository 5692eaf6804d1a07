import numpy as np
import pytest
import torch
from torch import nn

from marginkit.consistency import (
    DEFAULT_ALPHAS,
    DegenerateMetricError,
    algorithm1,
    algorithm1_repeats,
    estimate_robust_accuracy,
    estimate_vulnerability,
    robust_accuracy,
    threshold_at_tpr,
    tune_threshold,
)
from marginkit.margins import affine_input_margin


def _set(seed=0, n=2000, noise=0.15):
    rng = np.random.default_rng(seed)
    d = rng.exponential(1.0, n)
    s = d * (1 + rng.normal(0, noise, n))
    correct = rng.random(n) < 0.85
    return s, d, correct


def test_threshold_at_tpr_is_the_smallest_threshold_reaching_alpha():
    s, d, _ = _set(1, n=300)
    y = d <= 0.7
    for a in DEFAULT_ALPHAS:
        lam = threshold_at_tpr(s, y, a)
        assert np.mean(s[y] <= lam) >= a
        below = s[y][s[y] < lam]
        if below.size:
            assert np.mean(s[y] <= below.max()) < a
    with pytest.raises(DegenerateMetricError, match="no non-robust"):
        threshold_at_tpr(s, np.zeros_like(y), 0.9)


def test_tuning_reproduces_the_subset_and_exact_with_full_tpr():
    s, d, correct = _set(2, n=500, noise=0.0)  # perfectly consistent score
    t = tune_threshold(s, d, 0.5, correct, alphas=(0.8, 0.9, 1.0))
    assert t.alpha == 1.0 and t.subset_estimate == pytest.approx(robust_accuracy(d, 0.5, correct))
    # the chosen alpha minimises the absolute error over the grid
    errs = [row["abs_error"] for row in t.table]
    assert min(errs) == pytest.approx(abs(t.subset_estimate - t.subset_value))


def test_subset_without_non_robust_samples_flags_nothing():
    s, d, correct = _set(3, n=100)
    t = tune_threshold(s, d, eps=1e-9, correct=correct)
    assert t.threshold == -np.inf and "no non-robust" in t.message
    assert t.subset_estimate == pytest.approx(correct.mean())


def test_algorithm1_estimate_converges_with_subset_size():
    s, d, correct = _set(4)
    eps = float(np.quantile(d, 0.3))
    small = algorithm1_repeats(s, d, eps, 50, correct, repeats=10, seed=0)
    large = algorithm1_repeats(s, d, eps, 1000, correct, repeats=10, seed=0)
    assert small.full_value == pytest.approx(robust_accuracy(d, eps, correct))
    assert large.mean_abs_error < small.mean_abs_error
    assert large.mean_abs_error < 0.03  # a strongly consistent score recovers robust accuracy closely
    # an unrelated score cannot do that
    rnd = np.random.default_rng(9).random(len(s))
    bad = algorithm1_repeats(rnd, d, eps, 1000, correct, repeats=10, seed=0)
    assert bad.mean_abs_error > 2 * large.mean_abs_error


def test_algorithm1_validates_its_inputs():
    s, d, c = _set(5, n=50)
    with pytest.raises(ValueError, match="repeat a sample"):
        algorithm1(s, [1, 1, 2], d[[1, 1, 2]], 0.5, c)
    with pytest.raises(ValueError, match="subset_input_margin has 2"):
        algorithm1(s, [1, 2, 3], d[[1, 2]], 0.5, c)
    with pytest.raises(ValueError, match="lie in"):
        algorithm1(s, [1, 60], d[[1, 2]], 0.5, c)
    with pytest.raises(ValueError, match="subset size"):
        algorithm1_repeats(s, d, 0.5, 51, c)


def test_unlabelled_vulnerable_fraction():
    s, d, _ = _set(6)
    ev = algorithm1_repeats(s, d, 0.4, 500, None, repeats=5, seed=1)
    assert ev.quantity == "vulnerable_fraction"
    assert ev.full_value == pytest.approx(np.mean(d <= 0.4))
    assert ev.mean_abs_error < 0.05


class _Counting:
    """Exact affine input margins that record how many samples they were asked about."""

    def __init__(self):
        self.sizes = []

    def __call__(self, model, x, labels, norm, **kw):
        self.sizes.append(x.shape[0])
        return affine_input_margin(model, x, labels, norm, bounds=(0.0, 1.0))


def test_end_to_end_attacks_only_the_subset():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(20, 4)).double().eval()
    x = torch.rand(600, 20, dtype=torch.float64)
    with torch.no_grad():
        pred = model(x).argmax(1)
    y = torch.where(torch.rand(600) < 0.9, pred, (pred + 1) % 4)
    fn = _Counting()
    eps = 0.05
    res = estimate_robust_accuracy(model, x, y, "linf", eps, n=150, margin_fn=fn, seed=0)
    assert fn.sizes == [150] and res.n_subset == 150 and res.n_total == 600
    exact = affine_input_margin(model, x, None, "linf", bounds=(0.0, 1.0)).margin.numpy()
    truth = robust_accuracy(exact, eps, (pred == y).numpy())
    assert abs(res.estimate - truth) < 0.08
    vul = estimate_vulnerability(model, x, "linf", eps, n=150, margin_fn=fn, seed=0)
    assert abs(vul.estimate - np.mean(exact <= eps)) < 0.08
    with pytest.raises(ValueError, match="needs labels"):
        estimate_robust_accuracy(model, x, None, "linf", eps, margin_fn=fn)


def test_with_the_attack_engine_on_a_small_relu_net():
    from marginkit.attacks import input_margin

    from marginkit.consistency import local_isometry

    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 12), nn.ReLU(), nn.Linear(12, 3)).eval()
    x = torch.rand(60, 16)
    with torch.no_grad():
        y = model(x).argmax(1)
    res = estimate_robust_accuracy(model, x, y, "l2", 0.2, n=12, seed=0)
    assert res.n_subset == 12 and 0.0 <= res.estimate <= 1.0 and res.seconds_subset_margins > 0
    r = input_margin(model, x[:12], None, "l2", return_adv=True)
    ok = torch.isfinite(r.upper)
    iso = local_isometry(model, x[:12], r.adversarial, "l2", valid=ok)
    assert iso.n == int(ok.sum()) and -1.0 <= iso.kendall_tau <= 1.0


def test_repeats_record_the_subset_only_baseline():
    s, d, correct = _set(8)
    ev = algorithm1_repeats(s, d, 0.5, 200, correct, repeats=6, seed=2)
    manual = np.random.default_rng(2)
    vals = []
    for _ in range(6):
        idx = manual.choice(len(s), size=200, replace=False)
        vals.append(robust_accuracy(d[idx], 0.5, correct[idx]))
    assert ev.subset_values == pytest.approx(vals)
    assert ev.subset_mean_abs_error == pytest.approx(np.mean(np.abs(np.array(vals) - ev.full_value)))
